"""Loading the native library: a missing, stale or foreign library and an
unsupported interpreter each give a message that says what to do."""
import os
import shutil
import subprocess
import sys

import pytest

import interpose
from interpose._core import _native

pytestmark = pytest.mark.timeout(120)

SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _copy_tree(tmp_path, with_library=True):
    """A source-checkout layout (interpose/ beside native/) in tmp_path."""
    shutil.copytree(os.path.join(SOURCE_ROOT, "native"), tmp_path / "native")
    shutil.copytree(
        os.path.dirname(interpose.__file__), tmp_path / "interpose",
        ignore=shutil.ignore_patterns("__pycache__", "*.so"),
    )
    if with_library:
        shutil.copy(_native.LIBRARY_PATH, tmp_path / "interpose" / "libinterpose.so")
    return tmp_path


def _import_in(root, env=None):
    return subprocess.run(
        [sys.executable, "-c", "import interpose"],
        cwd=root, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(root), **(env or {})},
    )


def test_import_with_library_missing_says_how_to_build(tmp_path):
    root = _copy_tree(tmp_path, with_library=False)
    r = _import_in(root)
    assert r.returncode != 0
    assert "libinterpose.so is missing" in r.stderr
    assert "pip install" in r.stderr and "make -C native" in r.stderr


def test_import_with_library_from_older_sources_says_rebuild(tmp_path):
    root = _copy_tree(tmp_path)
    with open(root / "native" / "timer.c", "a") as f:
        f.write("\n/* a change made after the library was built */\n")
    r = _import_in(root)
    assert r.returncode != 0
    assert "was built from older sources" in r.stderr
    assert "pip install -e ." in r.stderr


def test_import_after_rebuild_succeeds(tmp_path):
    root = _copy_tree(tmp_path)
    with open(root / "native" / "timer.c", "a") as f:
        f.write("\n/* a change made after the library was built */\n")
    subprocess.run(["make", "-s", "-C", str(root / "native")], check=True, timeout=120)
    r = _import_in(root)
    assert r.returncode == 0, r.stderr


def test_import_with_garbage_library_says_cannot_load(tmp_path):
    root = _copy_tree(tmp_path)
    (root / "interpose" / "libinterpose.so").write_bytes(b"not an ELF file")
    r = _import_in(root)
    assert r.returncode != 0
    assert "cannot load" in r.stderr


def test_build_id_matches_sources():
    assert _native.source_build_id() in (None, _native.lib.build_id().decode())


def test_unsupported_interpreter_is_refused_with_a_reason(monkeypatch):
    from interpose._core import _compat

    monkeypatch.setattr(sys, "version_info", (3, 16, 0, "final", 0))
    reason = _compat.unsupported_reason()
    assert reason is not None and "supports 3.11 to 3.15" in reason


def test_library_does_not_link_libpython():
    out = subprocess.run(["ldd", _native.LIBRARY_PATH], capture_output=True,
                         text=True, check=True).stdout
    assert "libpython" not in out


def test_invalid_stack_size_environment_is_reported(tmp_path):
    r = subprocess.run(
        [sys.executable, "-c", "import interpose; interpose.spawn(print).join()"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(interpose.__file__)),
             "INTERPOSE_STACK_SIZE": "lots"},
    )
    assert r.returncode != 0
    assert "INTERPOSE_STACK_SIZE" in r.stderr


def test_info_command_reports_library_and_support():
    r = subprocess.run([sys.executable, "-m", "interpose", "info"], capture_output=True,
                       text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(interpose.__file__))})
    assert r.returncode == 0, r.stderr
    assert _native.LIBRARY_PATH in r.stdout
    assert "interpreter supported: yes" in r.stdout


@pytest.mark.slow
def test_demo_runs_without_arguments():
    # The README's main-job command: echo server and clients in one process.
    r = subprocess.run([sys.executable, "-m", "interpose", "demo"],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(interpose.__file__))})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert any(line.startswith("time ") and "Succ Cnt" in line for line in lines)
    assert "errors: 0" in lines
    assert "  coroutines_alive     0" in lines
