"""The diagnostics' settings: bad INTERPOSE_* diagnostics settings get one
clear line, and `interpose run`'s diagnostics options set them.
"""
import subprocess
import sys

from support.snippets import snippet_env, run_hooked
from support.programs import WAIT


def test_bad_diagnostics_settings_get_one_line():
    proc = run_hooked("print('ok')", env={"INTERPOSE_DEADLOCK": "maybe",
                                          "INTERPOSE_DUMP_SIGNAL": "SIGNOPE"})
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == (
        "interpose: INTERPOSE_DEADLOCK='maybe' is not one of 'report', 'exit',"
        " 'off'; INTERPOSE_DUMP_SIGNAL='SIGNOPE' is not a signal that can be"
        " caught (e.g. SIGQUIT)\n"), proc.stderr


def test_run_options_for_the_diagnostics():
    argv = [sys.executable, "-m", "interpose", "run"]
    env = snippet_env(None)
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
