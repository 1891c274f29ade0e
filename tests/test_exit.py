"""Program exit under the runtime (issue #13 items 3-4): spawned coroutines
parked in a wait never keep the process alive, Ctrl-C ends a program whose
coroutines are all parked, errors raised while the shutdown cancels a
coroutine are reported, and exit waits for non-daemon threads and keeps
the exit status.  Each program runs under plain python and under `python
-m interpose run`; outputs and exit statuses must match."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from support.snippets import run_hooked, run_plain, snippet_env


pytestmark = pytest.mark.slow


# ---- 3. spawned coroutines never keep a process alive ---------------------

PARKED_AT_EXIT = """
    import sys, threading, queue, time
    how, wait = sys.argv[1], sys.argv[2]
    ev, q, lock = threading.Event(), queue.Queue(), threading.Lock()
    lock.acquire()
    def body():
        try:
            print("parked", flush=True)
            {"event": ev.wait, "queue": q.get, "lock": lock.acquire}[wait]()
        finally:
            print("finally", flush=True)  # never: abandoned like a daemon
    if how == "spawn":
        import interpose
        interpose.spawn(body)
    else:
        threading.Thread(target=body, daemon=True).start()
    time.sleep(0.01)
    if len(sys.argv) > 3:
        raise KeyboardInterrupt
    print("main done", flush=True)
"""


@pytest.mark.parametrize("wait", ["event", "queue", "lock"])
@pytest.mark.parametrize("interrupt", [False, True], ids=["exit", "ctrl-c"])
def test_coroutine_parked_in_a_lock_wait_does_not_keep_the_process_alive(
        tmp_path, wait, interrupt):
    # Regression: the exit-time shutdown joined a coroutine parked in a lock
    # wait, which cancellation cannot end, and the process hung for ever.
    # Plain Python's counterpart is a daemon thread: the process exits (130
    # after an uncaught KeyboardInterrupt) and its finally never runs.
    script = tmp_path / "parked.py"
    script.write_text(textwrap.dedent(PARKED_AT_EXIT))
    extra = ["kbd"] if interrupt else []
    plain = subprocess.run(
        [sys.executable, str(script), "thread", wait, *extra],
        capture_output=True, text=True, timeout=30, env=snippet_env())
    for how in ("thread", "spawn"):
        inter = subprocess.run(
            [sys.executable, "-m", "interpose", "run", str(script), how, wait,
             *extra], capture_output=True, text=True, timeout=30, env=snippet_env())
        assert (inter.returncode, inter.stdout) == (plain.returncode,
                                                    plain.stdout), how
        assert inter.stderr.splitlines()[-1:] == plain.stderr.splitlines()[-1:]
    assert plain.returncode == (-signal.SIGINT if interrupt else 0)


CTRL_C_PARKED = """
    import sys, threading, queue, time
    lock = threading.Lock()
    lock.acquire()
    if sys.argv[1] == "spawn":
        import interpose
        interpose.spawn(lock.acquire)
    else:
        threading.Thread(target=lock.acquire, daemon=True).start()
    time.sleep(0.01)
    print("ready", flush=True)
    queue.Queue().get()
"""


@pytest.mark.parametrize("how", ["thread", "spawn"])
def test_sigint_ends_a_program_whose_coroutines_are_parked(tmp_path, how):
    script = tmp_path / "ctrlc.py"
    script.write_text(textwrap.dedent(CTRL_C_PARKED))
    results = []
    for argv in ([sys.executable, str(script), "thread"],
                 [sys.executable, "-m", "interpose", "run", str(script), how]):
        # A runner started in the background passes SIGINT on ignored,
        # and Python then installs no handler: give the child the default.
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=snippet_env(), start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            assert proc.stdout.readline() == "ready\n"
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        results.append((proc.returncode, out, err.splitlines()[-1]))
    assert results[1] == results[0]
    assert results[0] == (-signal.SIGINT, "", "KeyboardInterrupt")


# ---- 4. errors raised while the shutdown cancels a coroutine are reported --

ERROR_DURING_SHUTDOWN = """
    import sys, threading, interpose
    def hook(args):
        print("excepthook:", args.exc_type.__name__, args.exc_value,
              args.thread.name, flush=True)
    threading.excepthook = hook
    def body():
        try:
            interpose.sleep(100)
        finally:
            raise RuntimeError("raised in finally")
    def main():
        interpose.spawn(body, name="victim")
        interpose.sleep(0)
    if sys.argv[1] == "run":
        interpose.run(main)
        print("run returned", flush=True)
    else:
        main()
        print("main returned", flush=True)
"""


@pytest.mark.parametrize("where", ["run", "exit"])
def test_error_raised_while_shutdown_cancels_is_reported(tmp_path, where):
    # Regression: run() and the exit-time shutdown joined the cancelled
    # coroutine and dropped what it raised.  asyncio.run reports the same
    # case ("unhandled exception during asyncio.run() shutdown"); here it
    # goes to threading.excepthook, as any uncaught coroutine error does.
    # The same script without the preload (interpose.spawn needs none)
    # and under interpose run must report it alike.
    script = tmp_path / "shutdown_error.py"
    script.write_text(textwrap.dedent(ERROR_DURING_SHUTDOWN))
    outs = []
    for prefix in ([], ["-m", "interpose", "run"]):
        proc = subprocess.run([sys.executable, *prefix, str(script), where],
                              capture_output=True, text=True, timeout=30,
                              env=snippet_env())
        outs.append((proc.returncode, proc.stdout))
    first = "run returned" if where == "run" else "main returned"
    report = "excepthook: RuntimeError raised in finally victim"
    expected = [first, report] if where == "exit" else [report, first]
    assert outs[0] == outs[1] == (0, "\n".join(expected) + "\n")


def test_error_during_shutdown_reaches_stderr_by_default(tmp_path):
    script = tmp_path / "shutdown_error.py"
    script.write_text(textwrap.dedent(ERROR_DURING_SHUTDOWN).replace(
        "threading.excepthook = hook", ""))
    proc = subprocess.run([sys.executable, str(script), "run"],
                          capture_output=True, text=True, timeout=30,
                          env=snippet_env())
    assert proc.returncode == 0
    assert "Exception in thread victim" in proc.stderr
    assert "RuntimeError: raised in finally" in proc.stderr


def test_run_returns_leaving_a_coroutine_parked_in_a_lock_wait(tmp_path):
    # run() cancels what is left and runs it until nothing can run; a
    # coroutine in a lock wait (not a cancellation point) stays parked
    # rather than hanging run(), and gets the lock once it is released.
    script = tmp_path / "run_lock.py"
    script.write_text(textwrap.dedent("""
        import threading, interpose
        lock = threading.Lock()
        lock.acquire()
        got = []
        def body():
            try:
                lock.acquire()
                got.append("acquired")
            finally:
                got.append("finally")
        def main():
            interpose.spawn(body)
            interpose.sleep(0)
        interpose.run(main)
        print("run returned", got, flush=True)
        lock.release()
        interpose.sleep(0.01)
        print(got, flush=True)
    """))
    proc = subprocess.run(
        [sys.executable, "-m", "interpose", "run", str(script)],
        capture_output=True, text=True, timeout=30, env=snippet_env())
    assert (proc.returncode, proc.stdout) == (
        0, "run returned []\n['acquired', 'finally']\n"), proc.stderr


@pytest.mark.timeout(120)
def test_exit_waits_for_non_daemon_threads_and_keeps_status():
    code = """
        import atexit, sys, threading, time
        atexit.register(lambda: print("atexit", flush=True))
        main_done = threading.Event()
        def late():
            # Ordered after "main done" by the event, not by the sleep (the
            # sleep only keeps the thread running while the exit begins).
            main_done.wait()
            time.sleep(0.1)
            print("non-daemon finished", flush=True)
        def forever():
            try:
                time.sleep(60)
            finally:
                print("daemon cleanup must not run", flush=True)
        threading.Thread(target=late).start()
        threading.Thread(target=forever, daemon=True).start()
        print("main done", flush=True)
        main_done.set()
        sys.exit(3)
    """
    hooked, plain = run_hooked(code), run_plain(code)
    for proc in (hooked, plain):
        assert proc.returncode == 3, proc
        assert proc.stdout.splitlines() == ["main done", "non-daemon finished", "atexit"], proc
    assert hooked.stderr == plain.stderr == ""
