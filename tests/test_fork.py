"""fork() under the runtime: a child may still use coroutines after a Popen,
and CPython's warning about forking a multi-threaded process appears
exactly as in plain Python (interpose's own helper threads are not the
program's), and a fork from a thread, multiprocessing and subprocess
work.  Each snippet runs as a script under plain python and under
`python -m interpose run`; outputs and exit statuses must match.
"""
import textwrap

import pytest

from support.snippets import assert_same, assert_script_same, check_ok, run_hooked


pytestmark = pytest.mark.slow


def test_fork_child_may_still_use_coroutines_after_popen(tmp_path):
    assert_script_same(tmp_path, """
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
    plain, inter = assert_script_same(tmp_path, FORK_WARNINGS)
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


@pytest.mark.timeout(120)
def test_fork_from_a_thread_and_multiprocessing_and_subprocess():
    assert_same("""
        import multiprocessing, os, subprocess, sys, threading, time, warnings
        # 3.12+ warns when a process with several OS threads forks (plain
        # python here; under interpose the process has one).
        warnings.simplefilter("ignore", DeprecationWarning)
        ticks = []
        stop = threading.Event()
        def ticker():
            while not stop.is_set():
                ticks.append(1); time.sleep(0.002)
        threading.Thread(target=ticker).start()

        def forker():
            pid = os.fork()
            if pid == 0:
                me = threading.current_thread()
                results = []
                ts = [threading.Thread(target=results.append, args=(i,)) for i in range(3)]
                for t in ts: t.start()
                for t in ts: t.join()
                print("child", me.name, threading.active_count(), sorted(results), flush=True)
                os._exit(7)
            _, status = os.waitpid(pid, 0)
            print("parent saw", os.waitstatus_to_exitcode(status), flush=True)
        t = threading.Thread(target=forker, name="forker"); t.start(); t.join()

        def square(x):
            return x * x
        def pooled():
            ctx = multiprocessing.get_context("fork")
            with ctx.Pool(2) as pool:
                print("pool", pool.map(square, range(5)), flush=True)
            out = subprocess.run([sys.executable, "-c", "print('sub')"],
                                 capture_output=True, text=True).stdout
            print("subprocess", out.strip(), flush=True)
        t = threading.Thread(target=pooled); t.start(); t.join()
        # A tick within a bound, not within a fixed 20 ms: an OS thread
        # under load may not run that soon.
        n = len(ticks)
        deadline = time.monotonic() + 20
        while len(ticks) <= n and time.monotonic() < deadline:
            time.sleep(0.001)
        print("parent still ticking", len(ticks) > n)
        stop.set()
    """)
