"""Signals: Ctrl-C and Python signal handlers reach the main coroutine even
while every coroutine is parked in the hub's epoll_wait (DESIGN §8).

Each test runs a child interpreter that prints "ready <pid>" once it is
about to park; the test then waits until the child really sleeps in
epoll_wait (from /proc) before signalling it, so no test orders with sleeps.
The differential tests at the end run one snippet hooked and plain (OS
threads): Ctrl-C reaches the main thread wherever it waits, an uncaught one
exits as SIGINT, and handlers and the wakeup fd work as in plain Python.
"""
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from support.snippets import ROOT, assert_same, run_hooked, run_plain

READY_TIMEOUT = 30  # seconds; generous for a loaded machine


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _default_sigint():
    # A shell starts background jobs with SIGINT ignored, and Python keeps an
    # ignored SIGINT ignored: restore the default so the child installs its
    # KeyboardInterrupt handler however the test run was started.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(code):
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=_env(),
        start_new_session=True, preexec_fn=_default_sigint,
    )


def _start_in_bash(code):
    """The child under `bash -c 'python ...; echo status=$?'`."""
    script = '"$0" -c "$1"; echo status=$?'
    return subprocess.Popen(
        ["bash", "-c", script, sys.executable, textwrap.dedent(code)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=_env(),
        start_new_session=True, preexec_fn=_default_sigint,
    )


def _kill(proc):
    """Kill the child's whole session (bash and its python too)."""
    if proc.poll() is None:  # still our child: its pid is its session id
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()


def _read_ready(proc):
    """Wait for the child's "ready <pid>" line; return the pid."""
    ready, _, _ = select.select([proc.stdout], [], [], READY_TIMEOUT)
    assert ready, "the child never reported ready"
    line = proc.stdout.readline()
    if not line.startswith("ready "):
        err = proc.stderr.read() if proc.poll() is not None else ""
        raise AssertionError(f"expected 'ready <pid>', got {line!r}; {err[-1500:]}")
    return int(line.split()[1])


def _wait_parked_in_epoll(pid):
    """Wait until the child's only thread sleeps in epoll_wait."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/wchan") as f:
                wchan = f.read()
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            raise AssertionError("the child exited before parking") from None
        if "epoll" in wchan and state == "S":
            return
        if wchan == "0" and state == "S":  # wchan hidden by the kernel
            return
        time.sleep(0.001)  # polling /proc, not ordering the child
    raise AssertionError("the child never parked in epoll_wait")


def _signal_and_finish(proc, signum):
    """Send signum once the child is parked, then collect its output; the
    child's process group is killed whatever happens."""
    try:
        _signal_when_parked(proc, signum)
        return proc.communicate(timeout=30)
    finally:
        _kill(proc)


def _signal_when_parked(proc, signum):
    pid = _read_ready(proc)
    _wait_parked_in_epoll(pid)
    os.kill(pid, signum)
    return pid


# A program that set its own wakeup fd first keeps it; interpose then relies
# on epoll_wait failing with EINTR alone.
_OWN_WAKEUP_FD = """
import signal, socket
_r, _w = socket.socketpair()
_r.setblocking(False)
signal.set_wakeup_fd(_r.fileno())
"""


@pytest.mark.parametrize("prelude", ["", _OWN_WAKEUP_FD], ids=["ours", "own_wakeup_fd"])
@pytest.mark.timeout(60)
def test_sigint_while_every_coroutine_parked_raises_keyboardinterrupt_from_run(prelude):
    proc = _start(
        prelude
        + textwrap.dedent(
            """
            import os, sys, interpose

            gate = interpose.Event()

            def on_event():
                gate.wait()

            def on_sleep():
                interpose.sleep(100)

            def main():
                coros = [interpose.spawn(on_event) for _ in range(3)]
                coros += [interpose.spawn(on_sleep) for _ in range(3)]
                interpose.sleep(0)  # every one has parked after this
                print("ready", os.getpid(), flush=True)
                coros[0].join()

            try:
                interpose.run(main)
            except KeyboardInterrupt:
                print("caught", interpose.statistics().coroutines_alive, flush=True)
                sys.exit(0)
            print("run returned", flush=True)
            sys.exit(3)
            """
        )
    )
    out, err = _signal_and_finish(proc, signal.SIGINT)
    assert proc.returncode == 0, (out, err)
    assert out.strip() == "caught 0", (out, err)  # run() also cancelled the rest
    assert err == ""


_UNCAUGHT_SIGINT = """
    import os, interpose

    def parked():
        interpose.sleep(100)

    def main():
        coros = [interpose.spawn(parked) for _ in range(3)]
        interpose.sleep(0)
        print("ready", os.getpid(), flush=True)
        coros[0].join()

    interpose.run(main)
    print("run returned", flush=True)
"""


@pytest.mark.timeout(60)
def test_sigint_uncaught_kills_process_with_sigint():
    proc = _start(_UNCAUGHT_SIGINT)
    out, err = _signal_and_finish(proc, signal.SIGINT)
    assert proc.returncode == -signal.SIGINT, (proc.returncode, out, err)
    assert "run returned" not in out
    assert "KeyboardInterrupt" in err


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.timeout(60)
def test_sigint_uncaught_gives_shell_exit_status_130():
    proc = _start_in_bash(_UNCAUGHT_SIGINT)
    out, err = _signal_and_finish(proc, signal.SIGINT)  # the python child, not bash
    assert proc.returncode == 0, (out, err)
    assert out.strip().splitlines()[-1] == "status=130", (out, err)


@pytest.mark.timeout(60)
def test_sigint_while_main_sleeps_outside_run_raises_keyboardinterrupt():
    proc = _start(
        """
        import os, sys, interpose

        def parked():
            interpose.sleep(100)

        other = interpose.spawn(parked)
        print("ready", os.getpid(), flush=True)
        try:
            interpose.sleep(100)
        except KeyboardInterrupt:
            print("caught", other.done(), flush=True)
            sys.exit(0)
        print("sleep returned", flush=True)
        sys.exit(3)
        """
    )
    out, err = _signal_and_finish(proc, signal.SIGINT)
    assert proc.returncode == 0, (out, err)
    # The other coroutine was untouched; the atexit shutdown cancelled it.
    assert out.strip() == "caught False", (out, err)
    assert err == ""


@pytest.mark.timeout(60)
def test_sigint_while_spawned_coroutine_busy_raises_keyboardinterrupt_in_caller():
    # On 3.11 and 3.12 CPython runs the pending handler in whichever
    # coroutine on the main thread runs Python next: here a coroutine
    # spinning in a loop.  Interpose hands the signal to the main coroutine,
    # on every version, so the busy coroutine must reach a wait before the
    # main coroutine takes it (documented; the blocking monitor names such
    # a coroutine).
    proc = _start(
        """
        import os, sys, interpose

        def busy():
            print("ready", os.getpid(), flush=True)
            n = 0
            while True:
                n += 1
                if n % 100_000 == 0:
                    interpose.sleep(0)

        def main():
            parked = interpose.spawn(interpose.sleep, 100)
            spinner = interpose.spawn(busy, name="busy")
            spinner.join()

        try:
            interpose.run(main)
        except KeyboardInterrupt:
            print("caught", interpose.statistics().coroutines_alive, flush=True)
            sys.exit(0)
        sys.exit(3)
        """
    )
    try:
        pid = _read_ready(proc)  # after this line the child never waits
        os.kill(pid, signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        _kill(proc)
    assert proc.returncode == 0, (out, err)
    assert out.strip() == "caught 0", (out, err)
    assert err == ""


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_custom_signal_handler_runs_in_main_coroutine_and_waits_continue():
    # The SIGUSR1 handler must run in the main coroutine while everything is
    # parked; afterwards the interrupted sleep keeps sleeping its full length
    # and the other coroutines stay parked until their own wake-ups.
    proc = _start(
        """
        import json, os, signal, time, interpose

        calls = []

        def handler(signum, frame):
            calls.append({
                "signum": signum,
                "in_main": interpose.current() is main_coroutine,
                "at": time.monotonic(),
            })

        gate = interpose.Event()

        def on_event():
            gate.wait()
            return "event"

        def on_sleep():
            interpose.sleep(100)

        def main():
            coros = [interpose.spawn(on_event) for _ in range(3)]
            sleeper = interpose.spawn(on_sleep)
            interpose.sleep(0)
            print("ready", os.getpid(), flush=True)
            sleeps = []
            while not calls:
                start = time.monotonic()
                interpose.sleep(0.5)
                sleeps.append((start, time.monotonic()))
            parked_after = [not c.done() for c in coros] + [not sleeper.done()]
            gate.set()
            results = [c.join() for c in coros]
            sleeper.cancel()
            return {
                "calls": calls, "sleeps": sleeps, "parked_after": parked_after,
                "results": results,
            }

        signal.signal(signal.SIGUSR1, handler)
        main_coroutine = interpose.current()
        report = interpose.run(main)
        report["alive"] = interpose.statistics().coroutines_alive
        print(json.dumps(report), flush=True)
        """
    )
    out, err = _signal_and_finish(proc, signal.SIGUSR1)
    assert proc.returncode == 0, (out, err)
    assert err == ""
    report = json.loads(out)
    (call,) = report["calls"]
    assert call["signum"] == signal.SIGUSR1
    assert call["in_main"]
    start, end = next(s for s in report["sleeps"] if s[0] <= call["at"] <= s[1])
    assert end - start >= 0.5  # the handler did not cut the sleep short
    assert report["parked_after"] == [True] * 4
    assert report["results"] == ["event"] * 3
    assert report["alive"] == 0


@pytest.mark.timeout(60)
def test_signal_handler_exception_raises_from_main_coroutine_wait():
    proc = _start(
        """
        import os, signal, sys, interpose

        class Stop(Exception):
            pass

        def handler(signum, frame):
            raise Stop(interpose.current() is main_coroutine)

        def parked():
            interpose.sleep(100)

        def main():
            coros = [interpose.spawn(parked) for _ in range(3)]
            interpose.sleep(0)
            print("ready", os.getpid(), flush=True)
            coros[0].join()

        signal.signal(signal.SIGUSR1, handler)
        main_coroutine = interpose.current()
        try:
            interpose.run(main)
        except Stop as e:
            print("stopped", e.args[0], interpose.statistics().coroutines_alive,
                  flush=True)
            sys.exit(0)
        sys.exit(3)
        """
    )
    out, err = _signal_and_finish(proc, signal.SIGUSR1)
    assert proc.returncode == 0, (out, err)
    assert out.strip() == "stopped True 0", (out, err)
    assert err == ""


# ---- differential: the same snippet hooked and plain (OS threads) ----------

def _signal_snippet(wait):
    return f"""
        import os, queue, signal, threading, time
        waiting = threading.Event()
        def killer():
            # Not before the main thread is inside the try (a fixed delay
            # alone raced a slow start under load); the sleep lets it block.
            waiting.wait()
            time.sleep(0.1)
            os.kill(os.getpid(), signal.SIGINT)
        threading.Thread(target=killer, daemon=True).start()
        busy = threading.Thread(target=time.sleep, args=(30,), daemon=True)
        busy.start()
        try:
            waiting.set()
            {wait}
        except KeyboardInterrupt:
            print("KeyboardInterrupt in", threading.current_thread().name)
    """


@pytest.mark.timeout(120)
@pytest.mark.parametrize("wait", [
    "busy.join()",
    "threading.Event().wait()",
    "queue.Queue().get()",
    "(lk := threading.Lock()).acquire() and lk.acquire()",
    "threading.Semaphore(0).acquire()",
])
def test_ctrl_c_interrupts_the_main_thread_wherever_it_waits(wait):
    assert assert_same(_signal_snippet(wait)) == ["KeyboardInterrupt in MainThread"]


@pytest.mark.timeout(120)
def test_uncaught_ctrl_c_exits_130():
    code = """
        import os, signal, threading, time
        threading.Thread(target=lambda: (time.sleep(0.1), os.kill(os.getpid(), signal.SIGINT)),
                         daemon=True).start()
        threading.Event().wait()
    """
    for proc in (run_hooked(code), run_plain(code)):
        # Death by SIGINT, as plain python re-raises it: the shell shows 130.
        assert proc.returncode == -signal.SIGINT, proc
        assert proc.stderr.rstrip().endswith("KeyboardInterrupt"), proc


@pytest.mark.timeout(120)
def test_signal_handlers_run_in_the_main_thread_and_wakeup_fd_works():
    assert_same("""
        import os, signal, socket, threading, time
        got = []
        def handler(signum, frame):
            got.append((signal.Signals(signum).name, threading.current_thread().name))
        print(signal.signal(signal.SIGUSR1, handler) is signal.SIG_DFL,
              signal.getsignal(signal.SIGUSR1) is handler)
        r, w = socket.socketpair()
        r.setblocking(False); w.setblocking(False)
        print("previous wakeup fd", signal.set_wakeup_fd(w.fileno()))
        def spin():
            t0 = time.monotonic()
            os.kill(os.getpid(), signal.SIGUSR1)
            while time.monotonic() - t0 < 0.1:
                pass
        t = threading.Thread(target=spin); t.start(); t.join()
        time.sleep(0.02)
        print(got)
        r.settimeout(5)
        print("wakeup bytes", list(r.recv(16)))
        print(signal.set_wakeup_fd(-1) == w.fileno())
    """)
