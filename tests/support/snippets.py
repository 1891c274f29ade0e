"""Snippets in fresh interpreters: run plainly, hooked under `python -m
interpose run`, or both and compared (the differential tests of DESIGN §6).

Every snippet imports the same interpose package as the test process (ROOT
is put first on its PYTHONPATH), so the suite tests the checkout or an
installed wheel alike (scripts/test-installed)."""
import os
import subprocess
import sys
import textwrap

import interpose

# The directory holding the interpose package under test (a source checkout,
# site-packages, or the ASan tree of scripts/asan-tests): snippets import the
# same package as the test process.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(interpose.__file__)))


def run_snippet(code, *, timeout=60, env=None, python=sys.executable,
                python_args=()):
    """Run code in a fresh interpreter (with interpreter options python_args,
    e.g. ["-X", "faulthandler"]); return CompletedProcess (text)."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = ROOT + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    return subprocess.run(
        [python, *python_args, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=timeout, env=full_env,
    )


# ---- hooked / unhooked snippets (the differential tests of DESIGN §6) ------

# Prepended to every snippet run by run_hooked / run_plain.  The same code
# runs under `python -m interpose run` (HOOKED: go() spawns a coroutine with
# hooks on) and under plain python (go() starts an OS thread, the libc
# baseline), so both runs can print comparable results.
HOOK_PRELUDE = r'''
import errno, os, sys, threading, time
HOOKED = os.environ.get("INTERPOSE_AUTOSTART") == "1"
if HOOKED:
    import interpose


def errname(exc):
    """The errno name an exception carries ('EAGAIN'), else its type name."""
    code = getattr(exc, "errno", None)
    return errno.errorcode.get(code, type(exc).__name__) if code else type(exc).__name__


def attempt(fn, *args):
    """repr(fn(*args)), or the OSError's type and errno name."""
    try:
        return repr(fn(*args))
    except OSError as e:
        return type(e).__name__ + " " + errname(e)


class _ThreadTask:
    """An OS thread with a coroutine's done()/join() (join returns the
    result or raises the exception)."""

    def __init__(self, fn, args):
        self._result = self._exc = None
        self.thread = threading.Thread(target=self._run, args=(fn, args), daemon=True)
        self.thread.start()

    def _run(self, fn, args):
        try:
            self._result = fn(*args)
        except BaseException as e:
            self._exc = e

    def done(self):
        return not self.thread.is_alive()

    def join(self, timeout=None):
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise TimeoutError("thread did not finish")
        if self._exc is not None:
            raise self._exc
        return self._result


def go(fn, *args):
    """fn(*args) concurrently: a coroutine under the preload, else a thread."""
    return interpose.spawn(fn, *args) if HOOKED else _ThreadTask(fn, args)


def _thread_blocked(tid):
    """Whether an OS thread sleeps in the kernel on something else than a
    futex (the GIL): from /proc, so no ordering by sleeps."""
    try:
        with open(f"/proc/self/task/{tid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        with open(f"/proc/self/task/{tid}/wchan") as f:
            wchan = f.read()
    except OSError:
        return True  # already gone
    return state in ("S", "D") and "futex" not in wchan


def settle(*tasks):
    """Return once every task is parked (hooked) or asleep in the kernel
    (plain), or done: the tasks have run up to their blocking call."""
    if HOOKED:
        for _ in range(10000):
            before = interpose.statistics().parks
            interpose.sleep(0)
            interpose.sleep(0)
            if all(t.done() for t in tasks) or interpose.statistics().parks == before + 2:
                return
        raise AssertionError("coroutines never settled")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if all(t.done() or _thread_blocked(t.thread.native_id) for t in tasks):
            return
        time.sleep(0.001)
    raise AssertionError("threads never blocked")


def wait_until(predicate, timeout=20):
    """Sleep (cooperatively under the preload) until predicate() is true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition never became true")
        time.sleep(0.001)


class Ticker:
    """Counts ticks in its own coroutine (OS thread without the preload),
    sleeping `period` seconds between ticks: proof that others run."""

    def __init__(self, period=0.002):
        self.period = period
        self.ticks = 0
        self._stop = False
        self._task = go(self._run)

    def _run(self):
        while not self._stop:
            time.sleep(self.period)
            self.ticks += 1

    def wait_ticks(self, n=3):
        """Return after n more ticks (the caller sleeps meanwhile)."""
        goal = self.ticks + n
        wait_until(lambda: self.ticks >= goal)

    def stop(self):
        self._stop = True
        self._task.join()
        return self.ticks


def kernel_nonblocking(fd):
    """O_NONBLOCK as the kernel has it (/proc fdinfo: no fcntl hook sees it)."""
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("flags:"):
                return bool(int(line.split()[1], 8) & os.O_NONBLOCK)
    raise AssertionError("no flags in fdinfo")
'''


def snippet_env(env=None):
    """The environment of a snippet: the test runner's, without its
    interpose settings or preload, with ROOT on PYTHONPATH, plus env."""
    full_env = dict(os.environ)
    # Never inherit interpose's preload from the test runner; the sanitizer
    # runtimes that scripts/asan-tests preloads must stay.
    sanitizers = [p for p in full_env.pop("LD_PRELOAD", "").split(":")
                  if os.path.basename(p).startswith(("libasan", "libubsan"))]
    for name in ("INTERPOSE_AUTOSTART", "INTERPOSE_MAIN_HOOKS"):
        full_env.pop(name, None)
    full_env["PYTHONPATH"] = ROOT + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    preload = [p for p in full_env.get("LD_PRELOAD", "").split(":") if p]
    if sanitizers + preload:
        full_env["LD_PRELOAD"] = ":".join(sanitizers + preload)
    return full_env


def _snippet_argv(code, hooked, prelude):
    body = textwrap.dedent(code)
    if prelude:
        body = HOOK_PRELUDE + "\n" + body
    if hooked:
        return [sys.executable, "-m", "interpose", "run", "-c", body]
    return [sys.executable, "-c", body]


def run_hooked(code, *, timeout=60, env=None, pass_fds=(), prelude=True):
    """Run code (after HOOK_PRELUDE) under `python -m interpose run -c`;
    return CompletedProcess (text)."""
    return subprocess.run(
        _snippet_argv(code, True, prelude), capture_output=True, text=True,
        timeout=timeout, env=snippet_env(env), pass_fds=pass_fds,
    )


def run_plain(code, *, timeout=60, env=None, pass_fds=(), prelude=True):
    """The same snippet under plain python: no preload, no hooks (the libc
    baseline)."""
    return subprocess.run(
        _snippet_argv(code, False, prelude), capture_output=True, text=True,
        timeout=timeout, env=snippet_env(env), pass_fds=pass_fds,
    )


def run_both(code, **kwargs):
    """(hooked, plain) CompletedProcess of the same snippet."""
    return run_hooked(code, **kwargs), run_plain(code, **kwargs)


def popen_snippet(code, *, hooked=True, env=None, pass_fds=(), prelude=True):
    """Start the snippet (hooked or plain) without waiting: a Popen with
    text stdout/stderr pipes, for tests that talk to the child."""
    return subprocess.Popen(
        _snippet_argv(code, hooked, prelude), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=snippet_env(env), pass_fds=pass_fds,
    )


def check_ok(proc, label=""):
    """Assert a snippet exited 0 without writing to stderr; return its
    stdout lines."""
    detail = f"{label} exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 0, detail
    assert proc.stderr == "", detail
    return proc.stdout.splitlines()


def assert_same(code, **kwargs):
    """Run the snippet hooked and plain; both must succeed and print the
    same lines.  Returns the (hooked) lines."""
    hooked, plain = run_both(code, **kwargs)
    hooked_lines = check_ok(hooked, "hooked")
    plain_lines = check_ok(plain, "plain")
    assert hooked_lines == plain_lines, (
        f"hooked and plain differ\nhooked:\n{hooked.stdout}\nplain:\n{plain.stdout}"
    )
    return hooked_lines


# ---- programs as a user writes them: a script, no prelude -------------------

def run_script_both(tmp_path, code, *, timeout=60):
    """(plain, hooked) CompletedProcess of the same code written to a script
    in tmp_path, run as `python SCRIPT` and `python -m interpose run SCRIPT`
    (no HOOK_PRELUDE: the program as a user writes it)."""
    script = tmp_path / "snippet.py"
    script.write_text(textwrap.dedent(code))
    results = []
    for prefix in ([], ["-m", "interpose", "run"]):
        results.append(subprocess.run(
            [sys.executable, *prefix, str(script)], capture_output=True,
            text=True, timeout=timeout, env=snippet_env(), cwd=tmp_path))
    return results


def assert_script_same(tmp_path, code, *, timeout=60):
    """run_script_both; both must exit alike and print the same stdout.
    Returns (plain, hooked)."""
    plain, inter = run_script_both(tmp_path, code, timeout=timeout)
    assert (inter.returncode, inter.stdout) == (plain.returncode, plain.stdout)
    return plain, inter
