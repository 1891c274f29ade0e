"""The build a user's pip install runs (setup.py, the C compiler alone) and
the developers' build (native/Makefile) compile the same thing; -Werror is
on for development and CI, off for users; the metadata states what
interpose/_core/_compat.py really supports."""
import importlib.util
import os
import re
import shlex
import subprocess
import tomllib

import pytest

from support.install import CHECKOUT

from interpose._core import _compat

NATIVE = os.path.join(CHECKOUT, "native")

pytestmark = pytest.mark.timeout(120)


def load_setup():
    spec = importlib.util.spec_from_file_location(
        "interpose_setup", os.path.join(CHECKOUT, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # setup() runs only as __main__
    return module


def make_line(*args):
    """The compile command `make -n` would run, as tokens."""
    proc = subprocess.run(["make", "-n", "-C", NATIVE, "OUT=/tmp/out.so", *args],
                          capture_output=True, text=True, timeout=60,
                          env=_no_flags_env())
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if " -o /tmp/out.so " in line]
    assert len(lines) == 1, proc.stdout
    return shlex.split(lines[0])


def _no_flags_env():
    return {k: v for k, v in os.environ.items()
            if k not in ("CFLAGS", "LDFLAGS", "CC", "INTERPOSE_WERROR")}


@pytest.fixture
def setup_module(monkeypatch):
    for name in ("CFLAGS", "LDFLAGS", "CC", "INTERPOSE_WERROR"):
        monkeypatch.delenv(name, raising=False)
    return load_setup()


def normalized(tokens):
    """Sources by base name (make runs in native/), flags as a multiset."""
    return sorted(os.path.basename(t) if t.endswith((".c", ".S")) else t
                  for t in tokens)


def test_setup_compiles_exactly_what_the_makefile_compiles(setup_module):
    ours = setup_module.compile_command("/tmp/out.so", cc=["cc"], werror=True)
    assert normalized(ours) == normalized(make_line())


def test_werror_is_on_for_make_and_off_for_a_users_pip_install(setup_module,
                                                              monkeypatch):
    assert "-Werror" in make_line()
    assert "-Werror" not in make_line("WERROR=0")
    assert "-Werror" not in setup_module.compile_command("/tmp/o.so", cc=["cc"])
    monkeypatch.setenv("INTERPOSE_WERROR", "1")
    assert "-Werror" in setup_module.compile_command("/tmp/o.so", cc=["cc"])


def test_setup_build_id_is_the_one_the_runtime_checks(setup_module):
    from interpose._core import _native

    (define,) = [t for t in make_line() if t.startswith("-DIP_BUILD_ID=")]
    assert define == f'-DIP_BUILD_ID="{setup_module.build_id()}"'
    assert _native.source_build_id() in (None, setup_module.build_id())


def test_setup_without_a_compiler_says_what_to_install(setup_module,
                                                       monkeypatch):
    monkeypatch.setenv("CC", "/no/such/cc")
    with pytest.raises(setup_module.NativeBuildError, match="cannot run the C compiler"):
        setup_module.compile_command("/tmp/o.so")
    monkeypatch.delenv("CC")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(setup_module.NativeBuildError, match="needs a C compiler"):
        setup_module.compile_command("/tmp/o.so")


def test_metadata_states_the_supported_pythons_and_the_license():
    with open(os.path.join(CHECKOUT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    (low_major, low), (high_major, high) = _compat.SUPPORTED_RANGE
    assert low_major == high_major == 3
    assert project["requires-python"] == f">=3.{low},<3.{high + 1}"
    versions = {c.rsplit(" :: ", 1)[1] for c in project["classifiers"]
                if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)}
    assert versions == {f"3.{m}" for m in range(low, high + 1)}
    assert "Programming Language :: Python :: Implementation :: CPython" in \
        project["classifiers"]
    assert "Operating System :: POSIX :: Linux" in project["classifiers"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    with open(os.path.join(CHECKOUT, "LICENSE")) as f:
        assert f.readline().strip() == "MIT License"
    assert project["scripts"] == {"interpose": "interpose.__main__:main"}
