"""Differential tests for plain Python's semantics (issue #13, items 1-5):
each snippet runs as a script under plain python and under
`python -m interpose run`, and the outputs and exit statuses must match."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from support.snippets import ROOT, check_ok, run_hooked

pytestmark = pytest.mark.slow


def _env():
    """The test's environment (under scripts/asan-tests it preloads the
    sanitizer runtimes, which the sanitized library needs), with the
    package under test first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_both(tmp_path, code, *, timeout=60):
    """(plain, interposed) CompletedProcess of the same script."""
    script = tmp_path / "snippet.py"
    script.write_text(textwrap.dedent(code))
    results = []
    for prefix in ([], ["-m", "interpose", "run"]):
        results.append(subprocess.run(
            [sys.executable, *prefix, str(script)], capture_output=True,
            text=True, timeout=timeout, env=_env(), cwd=tmp_path))
    return results


def assert_same(tmp_path, code, *, timeout=60):
    plain, inter = run_both(tmp_path, code, timeout=timeout)
    assert (inter.returncode, inter.stdout) == (plain.returncode, plain.stdout)
    return plain, inter


# ---- 1. subprocess keeps the child's exec errors ------------------------

POPEN_ERRORS = """
    import subprocess, threading
    def popen(**kw):
        try:
            p = subprocess.Popen(**kw)
            print("exit", p.wait())
        except Exception as e:
            print(type(e).__name__, e.errno if isinstance(e, OSError) else "",
                  getattr(e, "filename", None), str(e))
    popen(args=["/no/such/program"])
    popen(args=["/no/such/program"], close_fds=False)
    popen(args=["/no/such/program"], preexec_fn=lambda: None)
    popen(args=["/etc/passwd"])
    popen(args=["true"], cwd="/no/such/dir")
    popen(args=["true"], preexec_fn=lambda: 1 / 0)
    popen(args=["true"])
    t = threading.Thread(target=popen, kwargs={"args": ["/no/such/t"]})
    t.start()
    t.join()
"""


def test_popen_exec_errors_raise_as_in_plain_python(tmp_path):
    # Regression: the child's error-pipe write went through a hook whose
    # epoll set close_fds had closed, so Popen returned a child exiting 255.
    plain, _ = assert_same(tmp_path, POPEN_ERRORS)
    assert plain.stdout.count("FileNotFoundError") == 5


def test_fork_child_may_still_use_coroutines_after_popen(tmp_path):
    assert_same(tmp_path, """
        import os, subprocess, threading, time
        pid = os.fork()
        if pid == 0:
            try:
                subprocess.Popen(["/no/such/program"])
            except FileNotFoundError as e:
                print("child", e.filename, flush=True)
            out = []
            ts = [threading.Thread(target=lambda i=i: (time.sleep(0.01),
                                                       out.append(i)))
                  for i in range(3)]
            for t in ts: t.start()
            for t in ts: t.join()
            print("child threads", sorted(out), flush=True)
            os._exit(0)
        print("parent", os.waitpid(pid, 0)[1])
    """)


# ---- 2. a call the kernel refuses at once fails at once ------------------

REFUSED_AT_ONCE = """
    import errno, os, select, socket, time
    def t(name, fn):
        try:
            r = fn()
            print(name, "->", repr(r))
        except OSError as e:
            print(name, "->", type(e).__name__, errno.errorcode.get(e.errno))
        except Exception as e:
            print(name, "->", type(e).__name__, e)
    r, w = os.pipe()
    t("write to a pipe's read end", lambda: os.write(r, b"x"))
    t("read from a pipe's write end", lambda: os.read(w, 1))
    t("readv from a pipe's write end", lambda: os.readv(w, [bytearray(3)]))
    t("writev to a pipe's read end", lambda: os.writev(r, [b"ab"]))
    t("read of 0 bytes from an empty pipe", lambda: os.read(r, 0))
    t("write of 0 bytes", lambda: os.write(w, b""))
    e = os.eventfd(0)
    t("eventfd read of 4 bytes", lambda: os.read(e, 4))
    t("eventfd write of 4 bytes", lambda: os.write(e, b"1234"))
    t("eventfd write of 2**64-1", lambda: os.write(e, b"\\xff" * 8))
    d = os.open("/", os.O_RDONLY)
    t("read from a directory", lambda: os.read(d, 10))
    p = os.open("/etc", os.O_PATH)
    t("read from an O_PATH fd", lambda: os.read(p, 10))
    s = socket.socket()
    t("recv on an unconnected socket", lambda: s.recv(1))
    t("send on an unconnected socket", lambda: s.send(b"x"))
    t("accept on a socket not listening", lambda: s.accept())
    l = socket.socket()
    l.bind(("127.0.0.1", 0))
    l.listen()
    t("recv on a listening socket", lambda: l.recv(1))
    port = l.getsockname()[1]
    l.close()
    t("connect to a closed port",
      lambda: socket.create_connection(("127.0.0.1", port)))
    a, b = socket.socketpair()
    b.close()
    t("send to a closed peer", lambda: a.send(b"x"))
    t("recv from a closed peer", lambda: a.recv(1))
    a2, b2 = socket.socketpair()
    a2.shutdown(socket.SHUT_RD)
    t("recv after SHUT_RD", lambda: a2.recv(1))
    a2.shutdown(socket.SHUT_WR)
    t("send after SHUT_WR", lambda: a2.send(b"x"))
    c = socket.socket()
    c.close()
    t("recv on a closed socket object", lambda: c.recv(1))
    r2, w2 = os.pipe()
    os.close(r2)
    t("write with no reader", lambda: os.write(w2, b"x"))
    r3, w3 = os.pipe()
    os.close(w3)
    t("read with no writer", lambda: os.read(r3, 1))
    t("read from a closed fd", lambda: os.read(w3, 1))
    t("write to a closed fd", lambda: os.write(w3, b"x"))
    t("select on a closed fd", lambda: select.select([w3], [], [], None))
    pl = select.poll()
    pl.register(w3)
    t("poll on a closed fd", lambda: [ev for _, ev in pl.poll()])
    t("waitpid of a process not our child", lambda: os.waitpid(1, 0))
    t("waitpid of ourselves", lambda: os.waitpid(os.getpid(), 0))
    t("waitpid of any child, with none", lambda: os.waitpid(-1, 0))
    t("waitpid with bad options", lambda: os.waitpid(1, 0x7fffffff))
    t("sleep(-1)", lambda: time.sleep(-1))
    l2 = socket.socket()
    l2.bind(("127.0.0.1", 0))
    l2.listen()
    c2 = socket.create_connection(l2.getsockname())
    t("connect twice", lambda: c2.connect(l2.getsockname()))
    # Calls C code makes on fds no hook created (a raw socket(2) is such a
    # "foreign" socket, blocking in the kernel) and on fds of another kind.
    import ctypes, platform
    libc = ctypes.CDLL(None, use_errno=True)
    def c_call(fn, *args):
        r = fn(*args)
        return r if r >= 0 else errno.errorcode[ctypes.get_errno()]
    buf = ctypes.create_string_buffer(8)
    r4, w4 = os.pipe()
    t("recv on a pipe", lambda: c_call(libc.recv, r4, buf, 1, 0))
    t("send on a pipe", lambda: c_call(libc.send, w4, buf, 1, 0))
    t("accept on a pipe", lambda: c_call(libc.accept, r4, None, None))
    sys_socket = {"x86_64": 41, "aarch64": 198}[platform.machine()]
    udp = libc.syscall(sys_socket, socket.AF_INET, socket.SOCK_DGRAM, 0)
    t("accept on a foreign UDP socket", lambda: c_call(libc.accept, udp, None, None))
    tcp = libc.syscall(sys_socket, socket.AF_INET, socket.SOCK_STREAM, 0)
    t("accept on a foreign TCP socket not listening",
      lambda: c_call(libc.accept, tcp, None, None))
"""


def test_calls_refused_by_the_kernel_fail_at_once(tmp_path):
    # Regression: os.write on a pipe's read end (test_signal
    # test_wakeup_write_error) and os.waitpid of a process that is not our
    # child waited forever.  Acceptable: the same line per call as plain
    # Python.  Unacceptable: a hang (the timeout), another errno.
    plain, _ = assert_same(tmp_path, REFUSED_AT_ONCE, timeout=30)
    assert "EBADF" in plain.stdout and "ECHILD" in plain.stdout


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
        capture_output=True, text=True, timeout=30, env=_env())
    for how in ("thread", "spawn"):
        inter = subprocess.run(
            [sys.executable, "-m", "interpose", "run", str(script), how, wait,
             *extra], capture_output=True, text=True, timeout=30, env=_env())
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
            env=_env(), start_new_session=True,
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
                              env=_env())
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
                          env=_env())
    assert proc.returncode == 0
    assert "Exception in thread victim" in proc.stderr
    assert "RuntimeError: raised in finally" in proc.stderr


# ---- 5. timeouts at the edges -------------------------------------------

TWIN_TIMEOUTS = """
    import math, sys
    if sys.argv[1] == "interpose":
        import interpose as sync, interpose as queue_mod
        from interpose import Queue
        import queue
    else:
        import threading as sync, queue
        from queue import Queue
    nan, inf = math.nan, math.inf
    def t(name, fn):
        try:
            print(name, "->", repr(fn()))
        except Exception as e:
            print(name, "->", type(e).__name__, e)
    def full_queue():
        q = Queue(1)
        q.put(0)
        return q
    for v in (nan, inf, -inf, 1e300, -2.0, 0, 0.001):
        t(f"Event.wait({v}) unset", lambda: sync.Event().wait(v))
        e = sync.Event()
        e.set()
        t(f"Event.wait({v}) set", lambda: e.wait(v))
        t(f"Lock.acquire(timeout={v})", lambda: sync.Lock().acquire(timeout=v))
        held = sync.Lock()
        held.acquire()
        if not (isinstance(v, float) and math.isnan(v)):
            t(f"held Lock.acquire(timeout={v})",
              lambda: held.acquire(timeout=v) if v <= 1 else "skip")
        t(f"RLock.acquire(timeout={v})", lambda: sync.RLock().acquire(timeout=v))
        c = sync.Condition()
        with c:
            t(f"Condition.wait({v})", lambda: c.wait(v))
            t(f"Condition.wait_for(true, {v})", lambda: c.wait_for(lambda: 1, v))
        t(f"Semaphore(1).acquire(timeout={v})",
          lambda: sync.Semaphore(1).acquire(timeout=v))
        t(f"Queue.get(timeout={v}) with an item",
          lambda: (lambda q: (q.put(1), q.get(timeout=v))[1])(Queue()))
        t(f"Queue.put(timeout={v}) with room",
          lambda: Queue().put(1, timeout=v))
        if not (isinstance(v, float) and math.isnan(v)):
            t(f"Semaphore(0).acquire(timeout={v})",
              lambda: sync.Semaphore(0).acquire(timeout=v))
            t(f"Queue.get(timeout={v}) empty",
              lambda: Queue().get(timeout=v))
            t(f"Queue.put(timeout={v}) full",
              lambda: full_queue().put(1, timeout=v))
"""


def test_twin_primitives_treat_edge_timeouts_as_threading_does(tmp_path):
    # interpose's Event/Lock/RLock/Condition/Semaphore/Queue against
    # threading's and queue's, for NaN, infinities, huge and negative
    # timeouts.  Left out: NaN where CPython's primitive spins for ever
    # (Semaphore(0), an empty or full Queue): interpose does not wait there
    # (docs/semantics.md).
    script = tmp_path / "twins.py"
    script.write_text(textwrap.dedent(TWIN_TIMEOUTS))
    plain = subprocess.run([sys.executable, str(script), "threading"],
                           capture_output=True, text=True, timeout=30,
                           env=_env())
    inter = subprocess.run(
        [sys.executable, "-m", "interpose", "run", str(script), "interpose"],
        capture_output=True, text=True, timeout=30, env=_env())
    assert plain.returncode == 0, plain.stderr
    assert inter.stdout == plain.stdout
    assert "OverflowError" in plain.stdout and "Invalid value NaN" in plain.stdout


def test_nan_timeouts_of_joins_and_sleeps_match_threading_and_time(tmp_path):
    assert_same(tmp_path, """
        import math, threading, time
        def t(name, fn):
            try:
                print(name, "->", repr(fn()))
            except Exception as e:
                print(name, "->", type(e).__name__, e)
        th = threading.Thread(target=time.sleep, args=(0.01,))
        th.start()
        t("Thread.join(nan)", lambda: th.join(math.nan))
        th.join()
        t("time.sleep(nan)", lambda: time.sleep(math.nan))
        t("Thread.join(inf) of a finished thread", lambda: th.join(math.inf))
    """)


INFINITE_TIMEOUTS = """
    import math, socket, interpose
    inf, nan = math.inf, math.nan
    def t(name, fn):
        try:
            print(name, "->", repr(fn()))
        except Exception as e:
            print(name, "->", type(e).__name__, e)
    a, b = socket.socketpair()
    def main():
        c = interpose.spawn(interpose.sleep, inf)
        interpose.sleep(0)
        c.cancel()
        t("sleep(inf), cancelled", c.join)
        c = interpose.spawn(lambda: interpose.wait_readable(a, timeout=inf))
        interpose.sleep(0)
        b.send(b"x")
        t("wait_readable(timeout=inf)", lambda: c.join(timeout=inf))
        c = interpose.spawn(lambda: interpose.wait_writable(a, timeout=1e300))
        t("wait_writable(timeout=1e300)", lambda: c.join(timeout=1e300))
        def under_infinite_deadline():
            with interpose.deadline(inf) as d:
                interpose.sleep(0.001)
                return d.deadline_ns
        t("deadline(inf)", lambda: interpose.spawn(under_infinite_deadline).join())
        def nested():
            with interpose.deadline(0.001):
                with interpose.deadline(inf):
                    interpose.sleep(inf)
        t("deadline(inf) inside deadline(0.001)",
          lambda: interpose.spawn(nested).join())
        c = interpose.spawn(interpose.Event().wait)
        interpose.sleep(0)
        try:
            c.join(timeout=0.001)
        except TimeoutError:
            print("join(timeout=0.001) of a parked one -> TimeoutError")
        t("join(timeout=nan)", lambda: c.join(timeout=nan))
        t("sleep(nan)", lambda: interpose.sleep(nan))
        t("wait_readable(timeout=nan)", lambda: interpose.wait_readable(b, nan))
        t("deadline(nan)", lambda: interpose.deadline(nan))
    interpose.run(main)
"""


def test_infinite_timeouts_mean_forever_and_stay_cancellable(tmp_path):
    script = tmp_path / "infinite.py"
    script.write_text(textwrap.dedent(INFINITE_TIMEOUTS))
    proc = subprocess.run(
        [sys.executable, "-m", "interpose", "run", str(script)],
        capture_output=True, text=True, timeout=30, env=_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "sleep(inf), cancelled -> Cancelled [Errno 125] the coroutine was"
        " cancelled",
        "wait_readable(timeout=inf) -> True",
        "wait_writable(timeout=1e300) -> True",
        "deadline(inf) -> None",
        "deadline(inf) inside deadline(0.001) -> TimeoutError [Errno 110]"
        " interpose: the deadline has passed",
        "join(timeout=0.001) of a parked one -> TimeoutError",
        "join(timeout=nan) -> ValueError Invalid value NaN (not a number)",
        "sleep(nan) -> ValueError Invalid value NaN (not a number)",
        "wait_readable(timeout=nan) -> ValueError Invalid value NaN (not a"
        " number)",
        "deadline(nan) -> ValueError deadline() needs a number of seconds,"
        " not NaN",
    ]


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
        capture_output=True, text=True, timeout=30, env=_env())
    assert (proc.returncode, proc.stdout) == (
        0, "run returned []\n['acquired', 'finally']\n"), proc.stderr


# ---- interpose's own threads are not the program's -----------------------

FORK_WARNINGS = """
    import os, threading, warnings
    def fork():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pid = os.fork()
            if pid == 0:
                os._exit(0)
        os.waitpid(pid, 0)
        return [type(w.message).__name__ for w in caught]
    print("single-threaded:", fork())
"""


def test_fork_warns_exactly_as_plain_python(tmp_path):
    # 3.12+ warns at os.fork() in a multi-threaded process.  interpose's
    # helper threads (the preemption monitor and the diagnostics thread,
    # both running from start-up under `interpose run`) are stopped around
    # the fork, so a single-threaded program forks as quietly as it does
    # under plain Python.
    plain, inter = assert_same(tmp_path, FORK_WARNINGS)
    assert plain.stdout == "single-threaded: []\n"


def test_fork_with_converted_threads_does_not_warn():
    # A program's threads are coroutines of its one OS thread under
    # `interpose run`: the process forks single-threaded, with none of the
    # deadlock risks the warning is about, so it does not warn (plain
    # Python, with a real second thread, does on 3.12+).
    lines = check_ok(run_hooked(textwrap.dedent(FORK_WARNINGS) + textwrap.dedent("""
        gate = threading.Event()
        t = threading.Thread(target=gate.wait)
        t.start()
        print("with a thread running:", fork())
        gate.set()
        t.join()
    """)))
    assert lines == ["single-threaded: []", "with a thread running: []"]
