"""Diagnostics against real programs: interpose.dump(), `interpose ps PID`
from another process, the deadlock report (and no false report), the dump
signal and the statistics.

Every program runs under `python -m interpose run` in a session of its own
and is killed as a group at the end of its test; only 127.0.0.1 is used.
Nothing is ordered with sleeps: a test waits for a program's "ready" line,
for its dump to show a state, or for its deadlock watcher to report that it
has examined a stuck scheduler (the control socket's "watch" request).
"""
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import _snippet_env, check_ok, run_hooked
from processes import ProcessGroup, interpose_run

from interpose import _compat, _watch

# Lock names are known on every version; the holder of a plain Lock (so a
# cycle of Locks) only on 3.11 and 3.12 (interpose/_compat.py).
OWNERS = _compat.LOCK_OWNERS_KNOWN
WAITER = "lock 'waiter'"

WAIT = 30  # seconds: a bound for states to appear, never a measurement


@pytest.fixture
def procs(tmp_path):
    group = ProcessGroup(env=_snippet_env(None), cwd=str(tmp_path))
    try:
        yield group
    finally:
        group.kill_all()


def _start(procs, tmp_path, code, env=None, stdin=subprocess.DEVNULL):
    path = tmp_path / "program.py"
    path.write_text(textwrap.dedent(code))
    full_env = _snippet_env(env)
    return procs.start(interpose_run(path), env=full_env, stdin=stdin)


def _ready(proc):
    line = proc.stdout.readline()
    assert line.startswith("ready"), (line, proc.poll())
    return line.split()[1:]


def _ps(pid, *args):
    return subprocess.run(
        [sys.executable, "-m", "interpose", "ps", *args, str(pid)],
        capture_output=True, text=True, timeout=WAIT, env=_snippet_env(None))


def _until(predicate, what):
    """Poll predicate (which asks the program, not the clock) until true."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _examined(pid):
    """How many stuck schedulers the program's watcher has examined."""
    text = _watch.request(pid, b"watch")
    return int(re.search(r"examined (\d+)", text).group(1))


# ---- interpose.dump() --------------------------------------------------------

def test_dump_shows_each_coroutine_with_its_wait_reason_and_stack():
    out = check_ok(run_hooked("""
        import io, os, socket, threading, time, queue
        import interpose
        a, b = socket.socketpair()
        r, w = os.pipe()
        ev = threading.Event()
        q = queue.Queue()
        def receiver(): a.recv(10)
        def piper(): os.read(r, 1)
        def sleeper(): time.sleep(30)
        def getter(): q.get()
        def waiter(): ev.wait()
        ts = [threading.Thread(target=f, name=f.__name__, daemon=True)
              for f in (receiver, piper, sleeper, getter, waiter)]
        for t in ts: t.start()
        c = interpose.spawn(interpose.sleep, 20, name="spawned")
        with interpose.deadline(50):
            d = interpose.spawn(c.join, name="joiner")
            interpose.sleep(0)  # every runnable coroutine runs until it parks
            buf = io.StringIO()
            interpose.dump(buf)
        print(buf.getvalue())
    """))
    text = "\n".join(out)
    assert "coroutine 1 'main' (main) running" in text
    assert re.search(r"'receiver' parked: recv fd \d+ from unix:\(unnamed\)", text)
    assert re.search(r"'piper' parked: read fd \d+ \(pipe:\[\d+\]\)", text)
    assert re.search(r"'sleeper' parked: sleep\n  .*times out in (29\.\d+|30\.000) s", text)
    assert f"'getter' parked: {WAITER} (semaphore" in text
    assert f"'waiter' parked: {WAITER} (semaphore" in text
    assert "'spawned' parked: sleep" in text
    assert re.search(r"'joiner' parked: join coroutine \d+ 'spawned'", text)
    # Stacks are the program's, without interpose's own frames.
    assert re.search(r'File "<string>", line \d+, in receiver\n', text), text
    assert "interpose/_sched.py" not in text and "_dump.py" not in text


def test_statistics_report_cpu_time_turns_and_latency():
    out = check_ok(run_hooked("""
        import time, interpose
        def spin():
            t = time.thread_time()
            while time.thread_time() - t < 0.02: pass
            interpose.sleep(0)
        c = interpose.spawn(spin, name="spinner")
        c.join()
        s = interpose.statistics()
        mine = {x.name: x for x in s.coroutines}
        # A turn is counted when it ends (main's current one is not yet).
        print(mine["main"].cpu_time >= 0, s.run_queue_latency_p50 > 0,
              s.run_queue_latency_p50 <= s.run_queue_latency_p99
              <= s.run_queue_latency_max, s.longest_turn >= 0.02)
        print(sorted(mine))
    """))
    assert out == ["True True True True", "['main']"]


def test_statistics_of_a_live_coroutine():
    out = check_ok(run_hooked("""
        import time, interpose
        def spin():
            t = time.thread_time()
            while time.thread_time() - t < 0.02: pass
            interpose.sleep(10)
        c = interpose.spawn(spin, name="spinner")
        interpose.sleep(0)
        s = {x.name: x for x in interpose.statistics().coroutines}["spinner"]
        print(s.cpu_time >= 0.02, s.longest_turn >= 0.02, s.turns)
        c.cancel()
    """))
    assert out == ["True True 1"]


# ---- interpose ps ------------------------------------------------------------

HTTP_CONNECTIONS = 200


@pytest.mark.timeout(120)
def test_ps_shows_200_parked_http_connections_from_outside(procs, tmp_path):
    server = _start(procs, tmp_path, """
        import sys
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(204); self.end_headers()
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        print("ready", httpd.server_address[1], flush=True)
        httpd.serve_forever()
    """)
    port = int(_ready(server)[0])
    clients = []
    try:
        for _ in range(HTTP_CONNECTIONS):
            # Half a request line: each handler thread parks in recv.
            c = socket.create_connection(("127.0.0.1", port))
            c.sendall(b"GET / HT")
            clients.append(c)
        ports = {c.getsockname()[1] for c in clients}

        def parked():
            text = _ps(server.pid).stdout
            seen = set(map(int, re.findall(
                r"parked: recv fd \d+ from 127\.0\.0\.1:(\d+)", text)))
            return text if seen >= ports else None

        text = _until(parked, f"{HTTP_CONNECTIONS} connections parked in recv")
        blocks = text.split("\ncoroutine ")
        for p in ports:
            block = next(b for b in blocks if f"from 127.0.0.1:{p}\n" in b)
            assert "in handle_one_request" in block and "readline" in block, block
        assert re.search(r"parked: poll: accept fd \d+ on 127\.0\.0\.1:%d" % port, text)
        assert "in serve_forever" in text
        stats = _ps(server.pid, "--stats")
        assert stats.returncode == 0 and f"{HTTP_CONNECTIONS} spawned coroutine(s) alive" in stats.stdout, stats
    finally:
        for c in clients:
            c.close()


def test_ps_rejects_bad_input_with_one_line():
    bad = _ps("x")
    assert bad.returncode == 2 and bad.stderr == "interpose: ps needs a process id, not 'x'\n"
    gone = _ps(os.getpid())  # this test process does not run under interpose
    assert gone.returncode == 1 and gone.stderr.count("\n") == 1
    assert "has no interpose control socket" in gone.stderr


def test_ps_is_refused_when_the_control_socket_is_off(procs, tmp_path):
    proc = _start(procs, tmp_path, """
        import sys
        print("ready", flush=True)
        sys.stdin.read()
    """, env={"INTERPOSE_CONTROL": "0"}, stdin=subprocess.PIPE)
    _ready(proc)
    assert _ps(proc.pid).returncode == 1
    proc.stdin.close()
    assert proc.wait(WAIT) == 0


# ---- the deadlock report -----------------------------------------------------

LOCK_ORDER = """
    import threading
    a = threading.Lock(); b = threading.Lock()
    got_a = threading.Event(); got_b = threading.Event()
    def first():
        with a:
            got_a.set(); got_b.wait()
            with b: pass
    def second():
        with b:
            got_b.set(); got_a.wait()
            with a: pass
    ts = [threading.Thread(target=first, name="first"),
          threading.Thread(target=second, name="second")]
    for t in ts: t.start()
    for t in ts: t.join()
"""


def test_lock_order_deadlock_is_reported_with_its_cycle_and_exits():
    proc = run_hooked(LOCK_ORDER, env={"INTERPOSE_DEADLOCK": "exit"}, timeout=WAIT)
    assert proc.returncode == 70, proc
    err = proc.stderr
    assert err.count("interpose: deadlock: all 3 coroutine(s)") == 1, err
    assert OWNERS == ("lock cycle:" in err)
    assert not OWNERS or re.search(r"lock cycle:\n"
                     r"  coroutine \d+ 'first' waits for lock 'b' .* in first\(\),"
                     r" held by coroutine \d+ 'second'\n"
                     r"  coroutine \d+ 'second' waits for lock 'a' .* in second\(\),"
                     r" held by coroutine \d+ 'first'\n", err), err
    assert "in first\n" in err and "in second\n" in err
    assert err.endswith("interpose: exiting with status 70 (INTERPOSE_DEADLOCK=exit).\n")


def test_deadlock_report_keeps_waiting_and_ctrl_c_still_works(procs, tmp_path):
    # Daemon threads: after KeyboardInterrupt Python would wait for
    # non-daemon ones at exit, deadlocked or not.
    code = textwrap.dedent(LOCK_ORDER).replace('name="first"', 'name="first", daemon=True')
    code = code.replace('name="second"', 'name="second", daemon=True')
    proc = _start(procs, tmp_path, 'print("ready", flush=True)\n' + code)
    _ready(proc)
    err = []
    line = _until(lambda: proc.stderr.readline(), "the deadlock report")
    err.append(line)
    assert line.startswith("interpose: deadlock:"), line
    while not err[-1].startswith("interpose: waiting on"):
        err.append(proc.stderr.readline())
    assert proc.poll() is None  # still waiting, as Python would
    proc.send_signal(signal.SIGINT)
    assert proc.wait(WAIT) in (-signal.SIGINT, 130)
    rest = proc.stderr.read()
    assert "KeyboardInterrupt" in rest and "interpose: deadlock" not in rest


def test_queue_without_producer_is_a_deadlock():
    proc = run_hooked("""
        import queue, threading
        q = queue.Queue()
        t = threading.Thread(target=q.get, name="consumer")
        t.start()
        t.join()
    """, env={"INTERPOSE_DEADLOCK": "exit"}, timeout=WAIT)
    assert proc.returncode == 70, proc
    assert re.search(r"'consumer' parked: %s .* in wait\(\)" % WAITER, proc.stderr)
    assert "q.get" not in proc.stderr or "in get" in proc.stderr
    assert "in get\n" in proc.stderr  # queue.Queue.get on its stack
    assert not OWNERS or re.search(r"'main' \(main\) parked: join thread 'consumer': lock"
                     r" 'self._tstate_lock' .* held by coroutine \d+ 'consumer'",
                     proc.stderr), proc.stderr


def test_deadlock_watcher_can_be_turned_off():
    proc = run_hooked("""
        import threading, _thread, sys
        lock = threading.Lock(); lock.acquire()
        ok = lock.acquire(timeout=1)
        print(ok)
    """, env={"INTERPOSE_DEADLOCK": "off"})
    assert check_ok(proc) == ["False"]


# No false report: each program parks every coroutine on something that
# another process, a signal, another OS thread or a timer ends.

def test_no_report_while_waiting_on_a_pipe_from_a_child(procs, tmp_path):
    proc = _start(procs, tmp_path, """
        import subprocess, sys, threading
        child = subprocess.Popen([sys.executable, "-c",
                                  "import sys; print(sys.stdin.readline().strip())"],
                                 stdout=subprocess.PIPE, text=True)
        done = threading.Event()
        def read():
            print("got", child.stdout.readline().strip(), flush=True)
            done.set()
        threading.Thread(target=read).start()
        print("ready", flush=True)
        done.wait()
        child.wait()
    """, env={"INTERPOSE_DEADLOCK": "exit"}, stdin=subprocess.PIPE)
    _ready(proc)
    dump = _until(lambda: (lambda t: t if "read fd" in t else None)(_ps(proc.pid).stdout),
                  "the reader parked on the pipe")
    assert ", stuck ===" not in dump  # an fd wait: never stuck
    proc.stdin.write("hello\n")
    proc.stdin.close()
    assert proc.wait(WAIT) == 0
    assert proc.stdout.read() == "got hello\n"
    assert proc.stderr.read() == ""


def test_no_report_while_waiting_for_a_signal(procs, tmp_path):
    proc = _start(procs, tmp_path, """
        import signal, threading
        ev = threading.Event()
        signal.signal(signal.SIGUSR1, lambda *a: ev.set())
        print("ready", flush=True)
        ev.wait()
        print("signalled")
    """, env={"INTERPOSE_DEADLOCK": "exit"})
    _ready(proc)
    _until(lambda: _examined(proc.pid) >= 1, "the watcher to examine the wait")
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(WAIT) == 0
    assert proc.stdout.read() == "signalled\n"
    assert proc.stderr.read() == ""


def test_no_report_while_another_os_thread_can_wake(procs, tmp_path):
    proc = _start(procs, tmp_path, """
        import sys, threading
        ev = threading.Event()
        def worker():
            sys.stdin.readline()
            ev.set()
        threading.Thread(target=worker).start()
        print("ready", flush=True)
        ev.wait()
        print("woken")
    """, env={"INTERPOSE_DEADLOCK": "exit", "INTERPOSE_THREADS": "native"},
        stdin=subprocess.PIPE)
    _ready(proc)
    _until(lambda: _examined(proc.pid) >= 1, "the watcher to examine the wait")
    proc.stdin.write("go\n")
    proc.stdin.close()
    assert proc.wait(WAIT) == 0
    assert proc.stdout.read() == "woken\n"
    assert proc.stderr.read() == ""


def test_no_report_while_a_coroutine_sleeps(procs, tmp_path):
    proc = _start(procs, tmp_path, """
        import sys, threading, time
        ev = threading.Event()
        def sleeper():
            time.sleep(1)
            ev.set()
        threading.Thread(target=sleeper, name="sleeper").start()
        print("ready", flush=True)
        ev.wait()
        sys.stdin.readline()
        print("slept")
    """, env={"INTERPOSE_DEADLOCK": "exit"}, stdin=subprocess.PIPE)
    _ready(proc)
    dump = _ps(proc.pid).stdout
    assert "'sleeper' parked: sleep" in dump and ", stuck ===" not in dump, dump
    proc.stdin.write("\n")
    proc.stdin.close()
    assert proc.wait(WAIT) == 0
    assert proc.stdout.read() == "slept\n"
    assert proc.stderr.read() == ""


# ---- the dump signal -------------------------------------------------------

def test_dump_signal_writes_every_coroutine_to_stderr(procs, tmp_path):
    proc = _start(procs, tmp_path, """
        import sys, threading
        threading.Thread(target=sys.stdin.readline, name="reader").start()
        print("ready", flush=True)
    """, env={"INTERPOSE_DUMP_SIGNAL": "SIGQUIT"}, stdin=subprocess.PIPE)
    _ready(proc)
    _until(lambda: "'reader' parked" in _ps(proc.pid).stdout, "the reader parked")
    proc.send_signal(signal.SIGQUIT)
    first = _until(lambda: proc.stderr.readline(), "the dump")
    assert first.startswith("interpose dump on SIGQUIT: pid %d" % proc.pid), first
    proc.stdin.write("\n")
    proc.stdin.close()
    assert proc.wait(WAIT) == 0
    rest = proc.stderr.read()
    assert re.search(r"'reader' parked: read fd 0 \(pipe:\[\d+\]\)", rest), rest


def test_bad_diagnostics_settings_get_one_line():
    proc = run_hooked("print('ok')", env={"INTERPOSE_DEADLOCK": "maybe",
                                          "INTERPOSE_DUMP_SIGNAL": "SIGNOPE"})
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == (
        "interpose: INTERPOSE_DEADLOCK='maybe' is not one of 'report', 'exit',"
        " 'off'; INTERPOSE_DUMP_SIGNAL='SIGNOPE' is not a signal that can be"
        " caught (e.g. SIGQUIT)\n"), proc.stderr


def test_deadlock_log_gets_each_report(tmp_path):
    log = tmp_path / "deadlocks.log"
    proc = run_hooked("""
        import threading
        threading.Lock().acquire(); l = threading.Lock(); l.acquire(); l.acquire()
    """, env={"INTERPOSE_DEADLOCK": "exit", "INTERPOSE_DEADLOCK_LOG": str(log)},
        timeout=WAIT)
    assert proc.returncode == 70
    text = log.read_text()
    assert text.startswith("=== -c\ninterpose: deadlock: all 1 coroutine(s)"), text
    assert text.count("interpose: deadlock:") == 1


def test_faulthandler_shows_every_coroutine():
    proc = run_hooked("""
        import faulthandler, sys, threading
        def parked_in_a_coroutine():
            threading.Event().wait()
        # start() returns once the thread runs; it parks before main resumes
        threading.Thread(target=parked_in_a_coroutine, daemon=True).start()
        faulthandler.dump_traceback(sys.stdout, all_threads=True)
    """)
    assert proc.returncode == 0, proc
    assert "in parked_in_a_coroutine" in proc.stdout, proc.stdout


def test_dump_after_a_thread_exited_with_a_coroutine_alive():
    # Regression: the exited thread's scheduler stays (its coroutine is
    # alive) and its root's thread state is gone; the dump must not read it.
    out = check_ok(run_hooked("""
        import io, threading, interpose
        ev = interpose.Event()
        def body():
            interpose.spawn(ev.wait, name="orphan")
            interpose.sleep(0)
        t = threading.Thread(target=body); t.start(); t.join()
        buf = io.StringIO()
        interpose.dump(buf)
        text = buf.getvalue()
        print("'orphan' parked" in text, text.count("scheduler on OS"))
        ev.set()
    """, env={"INTERPOSE_THREADS": "native"}))
    assert out == ["True 2"]


def test_run_options_for_the_diagnostics():
    argv = [sys.executable, "-m", "interpose", "run"]
    env = _snippet_env(None)
    bad = subprocess.run([*argv, "--deadlock", "maybe", "-c", "pass"],
                         capture_output=True, text=True, env=env, timeout=WAIT)
    assert bad.returncode == 2 and bad.stderr == (
        "interpose: --deadlock='maybe' is not one of 'report', 'exit', 'off'\n")
    bad = subprocess.run([*argv, "--dump-signal", "SIGKILL", "-c", "pass"],
                         capture_output=True, text=True, env=env, timeout=WAIT)
    assert bad.returncode == 2
    assert bad.stderr == ("interpose: --dump-signal='SIGKILL' is not a signal"
                          " that can be caught (e.g. SIGQUIT)\n")
    dead = subprocess.run([*argv, "--deadlock=exit", "-c",
                           "import threading; threading.Event().wait()"],
                          capture_output=True, text=True, env=env, timeout=WAIT)
    assert dead.returncode == 70 and "interpose: deadlock: all 1 coroutine(s)" in dead.stderr
    dumped = subprocess.run([*argv, "--dump-signal", "USR1", "-c",
                             "import os, signal; os.kill(os.getpid(), signal.SIGUSR1)"],
                            capture_output=True, text=True, env=env, timeout=WAIT)
    assert dumped.returncode == 0 and dumped.stderr.startswith("interpose dump on SIGUSR1")


def test_run_stats_prints_latency_and_busiest_coroutines():
    proc = subprocess.run(
        [sys.executable, "-m", "interpose", "run", "--stats", "-c",
         "import threading; t = threading.Thread(target=sum, args=([1],), name='adder');"
         " t.start(); t.join()"],
        capture_output=True, text=True, env=_snippet_env(None), timeout=WAIT)
    assert proc.returncode == 0, proc
    assert re.search(r"^interpose statistics \(pid \d+\):\n"
                     r"scheduler on OS main thread \d+ \(MainThread\): 0 spawned"
                     r" coroutine\(s\) alive, \d+ switches\n"
                     r"  created 1, parks \d+, timeouts 0, epoll waits \d+\n"
                     r"  longest turn [\d.]+ ms; run-queue latency p50 <= [\d.]+ ms,",
                     proc.stderr), proc.stderr


def test_deadlock_across_two_os_threads_with_native_threads():
    proc = run_hooked("""
        import threading
        ev = threading.Event()
        t = threading.Thread(target=ev.wait, name="waiter")
        t.start()
        t.join()
    """, env={"INTERPOSE_DEADLOCK": "exit", "INTERPOSE_THREADS": "native"},
        timeout=WAIT)
    assert proc.returncode == 70, proc
    err = proc.stderr
    assert "interpose: deadlock: all 2 coroutine(s) of OS thread(s)" in err
    assert re.search(r"=== scheduler on OS thread \d+ \(waiter\): 1 coroutine\(s\),"
                     r" \d+ switches, stuck ===\n\ncoroutine \d+ 'waiter' \(main\)"
                     r" parked: %s" % WAITER, err), err
    assert re.search(r"'main' \(main\) parked: join thread 'waiter'", err), err
