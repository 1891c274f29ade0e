"""Coroutine dumps against real programs: interpose.dump() shows each
coroutine with its wait reason and stack, the dump signal writes every
coroutine to stderr, faulthandler shows every coroutine, and a dump after
a thread exited with a coroutine alive still works.

Every program runs under `python -m interpose run` in a session of its own
and is killed as a group at the end of its test (support/programs.py).
"""
import re
import signal
import subprocess

from support.snippets import check_ok, run_hooked
from support.programs import (WAIT, WAITER, interpose_ps, poll_until, read_ready,
                              start_program)


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
    assert "interpose/_core/_sched.py" not in text and "_dump.py" not in text


# ---- the dump signal -------------------------------------------------------

def test_dump_signal_writes_every_coroutine_to_stderr(procs, tmp_path):
    proc = start_program(procs, tmp_path, """
        import sys, threading
        threading.Thread(target=sys.stdin.readline, name="reader").start()
        print("ready", flush=True)
    """, env={"INTERPOSE_DUMP_SIGNAL": "SIGQUIT"}, stdin=subprocess.PIPE)
    read_ready(proc)
    poll_until(lambda: "'reader' parked" in interpose_ps(proc.pid).stdout, "the reader parked")
    proc.send_signal(signal.SIGQUIT)
    first = poll_until(lambda: proc.stderr.readline(), "the dump")
    assert first.startswith("interpose dump on SIGQUIT: pid %d" % proc.pid), first
    proc.stdin.write("\n")
    proc.stdin.close()
    assert proc.wait(WAIT) == 0
    rest = proc.stderr.read()
    assert re.search(r"'reader' parked: read fd 0 \(pipe:\[\d+\]\)", rest), rest


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
