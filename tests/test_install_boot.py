"""When the runtime cannot boot, the user is told in one line, never with a
traceback (issue #11 item 3, issue #13 item 7).

Acceptable: `interpose run` and `interpose env` refuse a bad INTERPOSE_*
value or a broken install with one line and status 2 before any program
runs; a process started under `interpose env` that cannot boot prints one
line saying why and that the runtime is off, then behaves exactly as plain
Python (compared with the same snippet run plain).  Unacceptable: a
traceback, "Error in sitecustomize", a program run by `interpose run`
without the runtime."""
import os
import shutil
import subprocess
import sys

import pytest

import interpose
from interpose import _autostart
from interpose._core import _native, _settings

from support.install import BLOCKED_THREADS, CHECKOUT, os_threads, user_env

pytestmark = pytest.mark.timeout(120)

# Where the package under test lives (checkout, site-packages or the ASan
# tree): put on PYTHONPATH so children import the same package.
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(interpose.__file__)))

BAD_SETTINGS = [
    ("INTERPOSE_STACK_SIZE", "lots"),
    ("INTERPOSE_STACK_SIZE", "1K"),
    ("INTERPOSE_THREADS", "green"),
    ("INTERPOSE_MONITOR", "soon"),
    ("INTERPOSE_MONITOR", "-1"),
    ("INTERPOSE_MONITOR", "inf"),
    ("INTERPOSE_MAIN_HOOKS", "yes"),
    ("INTERPOSE_STATS", "true"),
]


def env_with(**extra):
    return user_env(PYTHONPATH=PACKAGE_ROOT, **extra)


def run(argv, env, **kwargs):
    return subprocess.run([str(a) for a in argv], capture_output=True,
                          text=True, timeout=60, env=env, **kwargs)


def assert_one_line(stderr, *parts):
    assert len(stderr.splitlines()) == 1 and stderr.endswith("\n"), stderr
    assert "Traceback" not in stderr and "sitecustomize" not in stderr, stderr
    for part in parts:
        assert part in stderr, stderr


def preload_env(**extra):
    """What `interpose env` puts in a shell, over a user's environment."""
    return _autostart.environment(base=env_with(**extra))


@pytest.mark.parametrize("name,value", BAD_SETTINGS)
def test_run_refuses_a_bad_setting_in_one_line(name, value):
    proc = run([sys.executable, "-m", "interpose", "run", "-c", "print('ran')"],
               env_with(**{name: value}))
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr.startswith(f"interpose: {name}={value!r}")
    assert_one_line(proc.stderr)


@pytest.mark.parametrize("option,value", [("--stack-size", "lots"),
                                          ("--stack-size", "100"),
                                          ("--monitor", "soon"),
                                          ("--monitor", "0")])
def test_run_refuses_a_bad_option_value_in_one_line(option, value):
    proc = run([sys.executable, "-m", "interpose", "run", option, value, "-c",
                "print('ran')"], env_with())
    assert (proc.returncode, proc.stdout) == (2, "")
    assert_one_line(proc.stderr, f"interpose: {option}={value!r}")


@pytest.mark.parametrize("name,value", BAD_SETTINGS)
@pytest.mark.parametrize("command", ["env", "demo"])
def test_env_and_demo_refuse_a_bad_setting_in_one_line(command, name, value):
    proc = run([sys.executable, "-m", "interpose", command],
               env_with(**{name: value}))
    assert (proc.returncode, proc.stdout) == (2, "")
    assert_one_line(proc.stderr, f"interpose: {name}={value!r}")


@pytest.mark.parametrize("name,value", BAD_SETTINGS)
def test_env_process_with_a_bad_setting_runs_as_plain_python(name, value,
                                                             tmp_path):
    script = tmp_path / "blocked.py"
    script.write_text(BLOCKED_THREADS)
    plain = run([sys.executable, script], env_with())
    under_env = run([sys.executable, script], preload_env(**{name: value}))
    assert under_env.returncode == plain.returncode == 0
    assert os_threads(under_env) == os_threads(plain) == 21
    assert under_env.stdout == plain.stdout
    assert_one_line(under_env.stderr, f"interpose: {name}={value!r}",
                    "the runtime is off in this process")


def without_library(env):
    """env with interpose's library dropped from LD_PRELOAD (a sanitizer
    runtime of scripts/asan-tests stays)."""
    rest = [p for p in env["LD_PRELOAD"].split(":") if p != _native.LIBRARY_PATH]
    env["LD_PRELOAD"] = ":".join(rest)
    return env


def test_env_process_without_the_preload_says_the_runtime_is_off():
    env = without_library(preload_env())
    proc = run([sys.executable, "-c", "import threading; print(threading.Thread)"],
               env)
    plain = run([sys.executable, "-c", "import threading; print(threading.Thread)"],
                env_with())
    assert proc.returncode == 0 and proc.stdout == plain.stdout
    assert_one_line(proc.stderr, "is not preloaded",
                    "the runtime is off in this process")


def test_run_child_that_cannot_boot_exits_before_the_program():
    # The environment `interpose run` gives its process, with the preload
    # lost on the way: that process must not run the program.
    env = without_library(preload_env(INTERPOSE_BOOT_REQUIRED="1"))
    proc = run([sys.executable, "-c", "print('ran')"], env)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert_one_line(proc.stderr, "interpose run: the runtime did not boot",
                    "is not preloaded")


def test_run_boots_its_process_but_not_as_required_for_its_children():
    code = ("import os, subprocess, sys; from interpose import _autostart;"
            " print(_autostart.booted(), os.environ.get('INTERPOSE_BOOT_REQUIRED'), flush=True);"
            " subprocess.run([sys.executable, '-c', 'import os;"
            " print(os.environ.get(\"INTERPOSE_BOOT_REQUIRED\"))'], check=True)")
    proc = run([sys.executable, "-m", "interpose", "run", "-c", code], env_with())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["True None", "None"]


def test_run_under_isolated_python_is_refused():
    proc = run([sys.executable, "-I", "-m", "interpose", "run", "-c",
                "print('ran')"], env_with(), cwd=PACKAGE_ROOT)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert_one_line(proc.stderr, "python -I ignores")


def test_library_path_that_ld_preload_cannot_carry_is_refused(monkeypatch):
    monkeypatch.setattr(_native, "LIBRARY_PATH", "/opt/my venv/libinterpose.so")
    assert "LD_PRELOAD cannot carry" in _autostart.boot_problem()


def test_command_line_with_library_missing_is_one_line(tmp_path):
    shutil.copytree(os.path.dirname(interpose.__file__), tmp_path / "interpose",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.stamp"))
    env = user_env(PYTHONPATH=str(tmp_path))
    for argv in (["run", "-c", "print('ran')"], ["env"], ["demo"]):
        proc = run([sys.executable, "-m", "interpose", *argv], env,
                   cwd=tmp_path)
        assert (proc.returncode, proc.stdout) == (2, ""), argv
        assert_one_line(proc.stderr, "libinterpose.so is missing")
    info = run([sys.executable, "-m", "interpose", "info"], env, cwd=tmp_path)
    assert info.returncode == 1 and info.stderr == ""
    assert "runtime: not usable: the native library" in info.stdout
    assert "boot under run/env: no" in info.stdout


def test_import_with_bad_stack_size_raises_setting_error():
    proc = run([sys.executable, "-c", "import interpose"],
               env_with(INTERPOSE_STACK_SIZE="lots"))
    assert proc.returncode == 1
    assert "SettingError: interpose: INTERPOSE_STACK_SIZE='lots'" in proc.stderr


def test_settings_accept_the_documented_values():
    good = {"INTERPOSE_AUTOSTART": "1", "INTERPOSE_MAIN_HOOKS": "0",
            "INTERPOSE_STATS": "1", "INTERPOSE_THREADS": "native",
            "INTERPOSE_STACK_SIZE": "256K", "INTERPOSE_MONITOR": "0.05",
            "INTERPOSE_BOOT_REQUIRED": "1", "INTERPOSE_SOMETHING_NEWER": "x"}
    assert _settings.problems(good) == []
    assert _settings.get("INTERPOSE_STACK_SIZE", good) == 256 * 1024
    assert _settings.get("INTERPOSE_MONITOR", good) == 0.05
    assert _settings.problems({}) == []


def test_checkout_is_found_for_tests_that_need_it():
    assert os.path.isfile(os.path.join(CHECKOUT, "native", "interpose.h"))


def test_other_module_importing_interpose_gets_the_exception(tmp_path):
    # Only interpose's own command line turns a failed package import into
    # one line; `python -m otherpkg` that imports interpose can catch it.
    pkg = tmp_path / "otherpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(
        "try:\n    import interpose\n"
        "except ValueError as e:\n    print('caught', type(e).__name__)\n")
    proc = run([sys.executable, "-m", "otherpkg"],
               user_env(INTERPOSE_STACK_SIZE="lots",
                        PYTHONPATH=f"{tmp_path}{os.pathsep}{PACKAGE_ROOT}"),
               cwd=tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "caught SettingError\n", "")
