"""Subprocesses under the runtime: subprocess.run() does not stall the other
coroutines, a child leaves a coroutine parked on a shared socket alone, and
Popen keeps the child's exec errors (issue #13 item 1).
"""
import pytest

from support.snippets import assert_same, assert_script_same


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_subprocess_run_does_not_stall_other_coroutines():
    out = assert_same("""
        import hashlib, subprocess
        t = Ticker()

        def run():
            t0 = t.ticks
            p = subprocess.run([sys.executable, "-c", "import time; time.sleep(0.5); print(1)"],
                               capture_output=True)
            return p.returncode, p.stdout, p.stderr, t.ticks - t0

        rc, stdout, stderr, ticks = go(run).join()
        print(rc, stdout, stderr, "ticks during subprocess.run > 0:", ticks > 0)

        # Input and output larger than a pipe's buffer, both ways at once.
        data = os.urandom(1 << 20)
        code = "import sys; d = sys.stdin.buffer.read(); sys.stdout.buffer.write(d + d)"
        p = go(lambda: subprocess.run([sys.executable, "-c", code], input=data,
                                      capture_output=True)).join()
        print(p.returncode, p.stdout == data + data, p.stderr)
        t.stop()
    """)
    assert out == ["0 b'1\\n' b'' ticks during subprocess.run > 0: True",
                   "0 True b''"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_subprocess_leaves_a_parked_recv_alone():
    # The child inherits the parent's fds and closes them: that must not
    # unregister or wake the parent's waiters.
    out = assert_same("""
        import fcntl, socket, subprocess
        a, b = socket.socketpair()
        r = go(a.recv, 100)
        settle(r)
        p = subprocess.run([sys.executable, "-c", "print(1)"], capture_output=True)
        print("child:", p.stdout, "waiter still parked:", not r.done())
        print("view:", os.get_blocking(a.fileno()),
              bool(fcntl.fcntl(a.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK))
        b.send(b"after the child")
        print(r.join())
        a.close(); b.close()
    """)
    assert out == ["child: b'1\\n' waiter still parked: True", "view: True False",
                   "b'after the child'"]


# ---- Popen keeps the child's exec errors (issue #13 item 1) ----------------

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


@pytest.mark.slow
def test_popen_exec_errors_raise_as_in_plain_python(tmp_path):
    # Regression: the child's error-pipe write went through a hook whose
    # epoll set close_fds had closed, so Popen returned a child exiting 255.
    plain, _ = assert_script_same(tmp_path, POPEN_ERRORS)
    assert plain.stdout.count("FileNotFoundError") == 5
