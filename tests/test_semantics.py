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
