"""Helpers of the install tests: the checkout under test, a clean copy of it,
distributions built from that copy, fresh venvs, and the environment of a
user's shell (no PYTHONPATH, no interpose settings, no preload).

The checkout is the directory above tests/: the tests need its sources even
when the suite runs against an installed wheel (.ci/run does that)."""
import os
import shutil
import subprocess
import sys
import textwrap

# tests/support/install.py -> the checkout, three levels up.
CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Build outputs never copied (an unpacked sdist has no .git to list files).
_OUTPUTS = shutil.ignore_patterns(
    ".git", ".venv*", "venv", "build", "dist", "*.egg-info", "__pycache__",
    "*.so", "*.o", "*.stamp", "*.pyc", ".pytest_cache", "results")

# The before-stop check of the project, as a user would write it: 20
# threads blocked in recv.  Under the runtime they are coroutines of the
# main thread; without it, 20 more OS threads.
BLOCKED_THREADS = textwrap.dedent("""\
    import os, socket, threading, time
    pairs = [socket.socketpair() for _ in range(20)]
    ts = [threading.Thread(target=a.recv, args=(1,)) for a, b in pairs]
    for t in ts: t.start()
    time.sleep(0.3)
    # The program's OS threads: not interpose's diagnostics thread.
    names = [open(f"/proc/self/task/{t}/comm").read().strip()
             for t in os.listdir("/proc/self/task")]
    print("os_threads", sum(n != "interpose-diag" for n in names), flush=True)
    for a, b in pairs: b.send(b"x")
    for t in ts: t.join()
    """)


def run(cmd, *, timeout=240, **kwargs):
    return subprocess.run([str(c) for c in cmd], capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def check(cmd, **kwargs):
    proc = run(cmd, **kwargs)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout}\n{proc.stderr}"
    return proc


def user_env(**extra):
    """A user's environment: nothing of the test run's PYTHONPATH, interpose
    settings or preload, except the sanitizer runtimes scripts/asan-tests
    preloads (they must stay first in every process)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("INTERPOSE_") and k not in ("PYTHONPATH",
                                                           "LD_PRELOAD")}
    sanitizers = [p for p in os.environ.get("LD_PRELOAD", "").split(":")
                  if os.path.basename(p).startswith(("libasan", "libubsan"))]
    if sanitizers:
        env["LD_PRELOAD"] = ":".join(sanitizers)
    env.update(extra)
    return env


def copy_checkout(dest):
    """The checkout's files without build outputs: the tracked files of a
    git checkout, or the tree of an unpacked sdist."""
    if os.path.exists(os.path.join(CHECKOUT, ".git")):  # a dir, or a worktree's file
        files = check(["git", "-C", CHECKOUT, "ls-files", "-co",
                       "--exclude-standard"]).stdout.splitlines()
        for name in files:
            src = os.path.join(CHECKOUT, name)
            if not os.path.isfile(src):
                continue  # deleted in the work tree
            os.makedirs(os.path.dirname(os.path.join(dest, name)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, name))
    else:
        shutil.copytree(CHECKOUT, dest, ignore=_OUTPUTS, dirs_exist_ok=True)
    return dest


def no_make_path(tmp):
    """A PATH whose first `make` fails loudly: proof a build never runs it."""
    shim = os.path.join(tmp, "no-make")
    os.makedirs(shim, exist_ok=True)
    with open(os.path.join(shim, "make"), "w") as f:
        f.write("#!/bin/sh\necho 'make was run, but the build must not need it' >&2\n"
                "exit 97\n")
    os.chmod(os.path.join(shim, "make"), 0o755)
    return shim + os.pathsep + os.environ.get("PATH", "")


def fresh_venv(path):
    """A venv of this interpreter without pip (pip installs into it with
    --python), so no network and no seconds spent on ensurepip."""
    check([sys.executable, "-m", "venv", "--without-pip", path])
    return os.path.join(path, "bin", "python")


def pip_install(python, *args, env=None):
    """pip of the test run, installing into the venv of python."""
    return check([sys.executable, "-m", "pip", "--python", python, "install",
                  "--no-deps", "--no-index", "--no-cache-dir",
                  "--disable-pip-version-check", "-q", *args],
                 env=env or user_env())


def os_threads(proc):
    """The OS-thread count BLOCKED_THREADS printed."""
    for line in proc.stdout.splitlines():
        if line.startswith("os_threads "):
            return int(line.split()[1])
    raise AssertionError(f"no thread count\nstdout:\n{proc.stdout}\n"
                         f"stderr:\n{proc.stderr}")
