"""What a user gets: the wheel and the sdist built from a clean copy of the
checkout, installed (not editable) into fresh venvs and run from a
directory outside the checkout (issue #11).

Acceptable: 20 threads blocked in recv run on as many OS threads under the
installed package as under the package the suite tests (1 plus the
runtime's helpers, at most 3), with `python -m interpose run`, with the
`interpose` script, and in a child started after the lines of
`interpose env`.  Unacceptable: an install on which `run` silently runs
the program without the runtime, a build that needs make, a wheel or sdist
with build outputs in it."""
import os
import sys
import tarfile
import zipfile

import pytest

from support.install import (BLOCKED_THREADS, CHECKOUT, check, copy_checkout,
                             fresh_venv, no_make_path, os_threads, pip_install,
                             run, user_env)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    """(wheel, sdist) built by `python -m build` from a clean copy of the
    checkout: the wheel is built from the unpacked sdist, with -Werror (as
    in CI) and with a PATH on which make fails."""
    tmp = tmp_path_factory.mktemp("dists")
    src = copy_checkout(str(tmp / "src"))
    env = user_env(INTERPOSE_WERROR="1", PATH=no_make_path(str(tmp)))
    check([sys.executable, "-m", "build", "--no-isolation", "--outdir",
           tmp / "dist", src], env=env, cwd=tmp)
    names = sorted(os.listdir(tmp / "dist"))
    wheels = [n for n in names if n.endswith(".whl")]
    sdists = [n for n in names if n.endswith(".tar.gz")]
    assert len(wheels) == 1 and len(sdists) == 1, names
    return tmp / "dist" / wheels[0], tmp / "dist" / sdists[0]


@pytest.fixture(scope="module")
def wheel_venv(dists, tmp_path_factory):
    """The python of a fresh venv with the wheel installed."""
    python = fresh_venv(str(tmp_path_factory.mktemp("wheel") / "venv"))
    pip_install(python, dists[0])
    return python


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    """A working directory outside the checkout, holding the user's script."""
    where = tmp_path_factory.mktemp("user")
    (where / "blocked.py").write_text(BLOCKED_THREADS)
    assert not str(where).startswith(CHECKOUT)
    return where


@pytest.fixture(scope="module")
def reference_threads(outside):
    """The count under the package the suite tests (editable checkout, or
    the wheel CI installed)."""
    proc = run([sys.executable, "-m", "interpose", "run", "blocked.py"],
               cwd=outside, env=user_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    n = os_threads(proc)
    assert n <= 3, proc.stdout
    return n


def installed_package(python, cwd):
    return check([python, "-c", "import interpose; print(interpose.__file__)"],
                 cwd=cwd, env=user_env()).stdout.strip()


# ---- contents --------------------------------------------------------------

def test_wheel_holds_the_runtime_the_boot_hook_and_no_build_outputs(dists):
    with zipfile.ZipFile(dists[0]) as z:
        names = set(z.namelist())
    package = {n for n in names if n.startswith("interpose/")}
    sources = {os.path.relpath(os.path.join(d, n), CHECKOUT)
               for d, _, files in os.walk(os.path.join(CHECKOUT, "interpose"))
               for n in files if n.endswith(".py")}
    assert "interpose/_boot/sitecustomize.py" in sources
    assert package == sources | {"interpose/libinterpose.so"}
    meta = {n.split("/", 1)[1] for n in names - package}
    assert meta == {"METADATA", "WHEEL", "RECORD", "entry_points.txt",
                    "top_level.txt", "licenses/LICENSE"}
    assert os.path.basename(dists[0]).endswith("-py3-none-linux_x86_64.whl") or \
        os.path.basename(dists[0]).endswith("-py3-none-linux_aarch64.whl")


def test_sdist_holds_the_sources_and_no_build_outputs(dists):
    with tarfile.open(dists[1]) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    for needed in ("setup.py", "pyproject.toml", "LICENSE", "README.md",
                   "MANIFEST.in", "native/Makefile", "native/interpose.h",
                   "native/switch_x86_64.S", "native/switch_aarch64.S",
                   "interpose/_boot/sitecustomize.py", "interpose/_core/_native.py",
                   "tests/conftest.py", "tests/support/snippets.py"):
        assert needed in names, needed
    native = {n for n in os.listdir(os.path.join(CHECKOUT, "native"))
              if n.endswith((".c", ".h", ".S"))}
    assert native <= {n.split("/", 1)[1] for n in names if n.startswith("native/")}
    outputs = [n for n in names if n.endswith((".so", ".o", ".stamp", ".pyc"))
               or n.startswith(("build/", "dist/", ".venv", "bench-results/"))
               or "/results/" in n or "__pycache__" in n]
    assert outputs == []


# ---- the installed wheel ---------------------------------------------------

def test_wheel_run_turns_blocked_threads_into_coroutines(wheel_venv, outside,
                                                         reference_threads):
    assert installed_package(wheel_venv, outside).startswith(
        os.path.dirname(os.path.dirname(wheel_venv)))
    proc = run([wheel_venv, "-m", "interpose", "run", "blocked.py"],
               cwd=outside, env=user_env(), timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert os_threads(proc) == reference_threads
    plain = run([wheel_venv, "blocked.py"], cwd=outside, env=user_env(),
                timeout=60)
    assert os_threads(plain) == 21  # the script does measure threads


def test_wheel_console_script_behaves_as_python_m_interpose(wheel_venv, outside,
                                                            reference_threads):
    script = os.path.join(os.path.dirname(wheel_venv), "interpose")
    proc = run([script, "run", "blocked.py"], cwd=outside, env=user_env(),
               timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert os_threads(proc) == reference_threads
    # Including a package that cannot load (a bad INTERPOSE_STACK_SIZE):
    # both report it as the command, not as a failed import.
    bad = {"INTERPOSE_STACK_SIZE": "lots"}
    for argv, extra in ((["--help"], {}), (["run", "--help"], {}),
                        (["run", "--bogus", "x.py"], {}), (["env"], {}),
                        (["run", "blocked.py"], bad), (["info"], bad),
                        (["env"], bad)):
        by_script = run([script, *argv], cwd=outside, env=user_env(**extra))
        by_module = run([wheel_venv, "-m", "interpose", *argv], cwd=outside,
                        env=user_env(**extra))
        assert (by_script.returncode, by_script.stdout, by_script.stderr) == \
            (by_module.returncode, by_module.stdout, by_module.stderr), argv
        assert "Traceback" not in by_script.stderr, argv


def test_wheel_env_child_turns_blocked_threads_into_coroutines(
        wheel_venv, outside, reference_threads):
    shell = f'eval "$("{wheel_venv}" -m interpose env)" && "{wheel_venv}" blocked.py'
    proc = run(["sh", "-c", shell], cwd=outside, env=user_env(), timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert os_threads(proc) == reference_threads


def test_wheel_info_reports_that_boot_works(wheel_venv, outside):
    proc = run([wheel_venv, "-m", "interpose", "info"], cwd=outside,
               env=user_env(), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "boot under run/env: yes" in proc.stdout


def test_wheel_without_boot_hook_run_fails_naming_it(dists, outside,
                                                     tmp_path):
    python = fresh_venv(str(tmp_path / "venv"))
    pip_install(python, dists[0])
    hook = os.path.join(os.path.dirname(installed_package(python, outside)),
                        "_boot", "sitecustomize.py")
    os.remove(hook)
    proc = run([python, "-m", "interpose", "run", "blocked.py"], cwd=outside,
               env=user_env(), timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""  # the program never ran
    assert proc.stderr.splitlines() == [proc.stderr.rstrip("\n")]
    assert "boot hook" in proc.stderr and hook in proc.stderr
    info = run([python, "-m", "interpose", "info"], cwd=outside,
               env=user_env(), timeout=60)
    assert info.returncode == 1
    assert "boot under run/env: no: the boot hook" in info.stdout
    env = run([python, "-m", "interpose", "env"], cwd=outside, env=user_env())
    assert env.returncode == 2 and env.stdout == "" and "boot hook" in env.stderr


# ---- the sdist, installed by pip -------------------------------------------

def test_sdist_install_run_and_env_turn_threads_into_coroutines(
        dists, outside, reference_threads, tmp_path):
    # What `pip install interpose-*.tar.gz` does, in two steps so that the
    # build uses this run's setuptools (no network): pip builds a wheel from
    # the sdist (make failing if it were called, no -Werror, as in a user's
    # install), then installs it into a fresh venv.
    env = user_env(PATH=no_make_path(str(tmp_path)))
    check([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index",
           "--no-build-isolation", "--no-cache-dir", "-q", "-w",
           tmp_path / "wheel", dists[1]], env=env, cwd=tmp_path)
    (built,) = os.listdir(tmp_path / "wheel")
    python = fresh_venv(str(tmp_path / "venv"))
    pip_install(python, tmp_path / "wheel" / built)
    proc = run([python, "-m", "interpose", "run", "blocked.py"], cwd=outside,
               env=user_env(), timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert os_threads(proc) == reference_threads
    shell = f'eval "$("{python}" -m interpose env)" && "{python}" blocked.py'
    child = run(["sh", "-c", shell], cwd=outside, env=user_env(), timeout=60)
    assert child.returncode == 0 and child.stderr == "", child.stderr
    assert os_threads(child) == reference_threads
