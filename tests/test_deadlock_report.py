"""The deadlock report against real programs: a lock-order cycle, a queue
without a producer and a deadlock across two OS threads are reported (and
the report can be logged, or turned off, and Ctrl-C still works); no
report while a wake can still come (a pipe from a child, a signal, another
OS thread, a sleep).

Every program runs under `python -m interpose run` in a session of its own
and is killed as a group at the end of its test; only 127.0.0.1 is used.
Nothing is ordered with sleeps: a test waits for a program's "ready" line,
for its dump to show a state, or for its deadlock watcher to report that it
has examined a stuck scheduler (the control socket's "watch" request).
"""
import re
import signal
import subprocess
import textwrap

from support.snippets import check_ok, run_hooked
from support.programs import (lock_order_program, OWNERS, WAIT, WAITER, assert_exits_cleanly, interpose_ps,
                              poll_until, read_ready, start_program, watcher_examined)


LOCK_ORDER = lock_order_program("Lock")


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
    proc = start_program(procs, tmp_path, 'print("ready", flush=True)\n' + code)
    read_ready(proc)
    err = []
    line = poll_until(lambda: proc.stderr.readline(), "the deadlock report")
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
    proc = start_program(procs, tmp_path, """
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
    read_ready(proc)
    dump = poll_until(
        lambda: (lambda t: t if "read fd" in t else None)(interpose_ps(proc.pid).stdout),
        "the reader parked on the pipe")
    assert ", stuck ===" not in dump  # an fd wait: never stuck
    proc.stdin.write("hello\n")
    proc.stdin.close()
    assert_exits_cleanly(proc, "got hello\n")


def test_no_report_while_waiting_for_a_signal(procs, tmp_path):
    proc = start_program(procs, tmp_path, """
        import signal, threading
        ev = threading.Event()
        signal.signal(signal.SIGUSR1, lambda *a: ev.set())
        print("ready", flush=True)
        ev.wait()
        print("signalled")
    """, env={"INTERPOSE_DEADLOCK": "exit"})
    read_ready(proc)
    poll_until(lambda: watcher_examined(proc.pid) >= 1, "the watcher to examine the wait")
    proc.send_signal(signal.SIGUSR1)
    assert_exits_cleanly(proc, "signalled\n")


def test_no_report_while_another_os_thread_can_wake(procs, tmp_path):
    proc = start_program(procs, tmp_path, """
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
    read_ready(proc)
    poll_until(lambda: watcher_examined(proc.pid) >= 1, "the watcher to examine the wait")
    proc.stdin.write("go\n")
    proc.stdin.close()
    assert_exits_cleanly(proc, "woken\n")


def test_no_report_while_a_coroutine_sleeps(procs, tmp_path):
    proc = start_program(procs, tmp_path, """
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
    read_ready(proc)
    dump = interpose_ps(proc.pid).stdout
    assert "'sleeper' parked: sleep" in dump and ", stuck ===" not in dump, dump
    proc.stdin.write("\n")
    proc.stdin.close()
    assert_exits_cleanly(proc, "slept\n")


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
