"""The blocking monitor (INTERPOSE_MONITOR, docs/diagnostics.md): a coroutine
that runs too long without reaching a hooked call is reported with its
stack, and bad monitor and threads settings get one clear line.  The
monitor's memory safety while threads come and go is in
test_monitor_lifetime.py.
"""
import subprocess
import sys

import pytest

from support.snippets import check_ok, run_hooked


pytestmark = pytest.mark.timeout(120)


def test_blocking_monitor_reports_the_coroutine_and_its_stack():
    code = """
        import threading, time
        def spin_for_a_while():
            t0 = time.monotonic()
            while time.monotonic() - t0 < 0.4:
                pass
        t = threading.Thread(target=spin_for_a_while, name="spinner")
        t.start(); t.join()
        print("done")
    """
    quiet = run_hooked(code)
    assert check_ok(quiet) == ["done"]
    loud = run_hooked(code, env={"INTERPOSE_MONITOR": "0.1"})
    assert loud.returncode == 0 and loud.stdout == "done\n", loud
    assert "'spinner'" in loud.stderr and "without reaching a hooked call" in loud.stderr
    assert "in spin_for_a_while" in loud.stderr
    assert loud.stderr.count("interpose: ") == 1  # once per incident


def test_monitor_and_threads_settings_are_checked():
    proc = subprocess.run(
        [sys.executable, "-m", "interpose", "run", "--monitor", "soon", "-c", "pass"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "positive number of seconds" in proc.stderr
    # `interpose run` refuses a bad setting before the program runs
    # (issue #13 item 7): one line, no traceback.
    bad = run_hooked("print('ran')", env={"INTERPOSE_THREADS": "green"})
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("interpose: INTERPOSE_THREADS='green'")
    assert len(bad.stderr.splitlines()) == 1
