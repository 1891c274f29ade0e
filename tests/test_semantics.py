"""Differential tests for plain Python's semantics (issue #13, items 1-5):
each snippet runs as a script under plain python and under
`python -m interpose run`, and the outputs and exit statuses must match."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("LD_PRELOAD", None)
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
"""


def test_calls_refused_by_the_kernel_fail_at_once(tmp_path):
    # Regression: os.write on a pipe's read end (test_signal
    # test_wakeup_write_error) and os.waitpid of a process that is not our
    # child waited forever.  Acceptable: the same line per call as plain
    # Python.  Unacceptable: a hang (the timeout), another errno.
    plain, _ = assert_same(tmp_path, REFUSED_AT_ONCE, timeout=30)
    assert "EBADF" in plain.stdout and "ECHILD" in plain.stdout
