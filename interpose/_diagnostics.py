"""Start-up of the diagnostics in a booted process, from the environment:
the control socket and deadlock watcher (_watch.py) and the dump signal.

INTERPOSE_CONTROL=0        no control socket (`interpose ps` cannot reach it)
INTERPOSE_DEADLOCK=MODE    report (default): print the deadlock report once
                           and keep waiting; exit: print it and exit with
                           status 70; off: do not watch
INTERPOSE_DEADLOCK_LOG=P  also append each deadlock report to the file P
INTERPOSE_DUMP_SIGNAL=SIG  on SIG (a name such as SIGQUIT or USR2, or a
                           number) write the dump to stderr; off by default,
                           as the program may use every signal itself
"""
import os
import signal
import sys

from . import _deadlock
from . import _dump
from . import _watch

DEADLOCK_MODES = ("report", "exit", "off")


def deadlock_setting_problem(value):
    if value not in DEADLOCK_MODES:
        return (f"the deadlock mode must be one of {', '.join(DEADLOCK_MODES)},"
                f" not {value!r}")
    return None


def parse_signal(value):
    """The signal number value names (SIGQUIT, QUIT, 3), or raise ValueError."""
    text = str(value).strip().upper()
    if text.isdigit():
        signum = int(text)
    else:
        name = text if text.startswith("SIG") else "SIG" + text
        signum = getattr(signal.Signals, name, None)
        if signum is None:
            raise ValueError(f"no signal called {value!r}")
    if signum not in signal.valid_signals() or signum in (signal.SIGKILL, signal.SIGSTOP):
        raise ValueError(f"signal {value!r} cannot be caught")
    return int(signum)


def _dump_handler(signum, frame):
    """Writes the dump to stderr; runs in the main coroutine."""
    _watch._write_stderr(_dump.dump_text(
        title=f"interpose dump on {signal.Signals(signum).name}"))


def install_dump_signal(value):
    signum = parse_signal(value)
    signal.signal(signum, _dump_handler)
    _deadlock.own_handlers.add(_dump_handler)


def boot():
    mode = os.environ.get("INTERPOSE_DEADLOCK", "report")
    problem = deadlock_setting_problem(mode)
    if problem:
        sys.stderr.write(f"interpose: INTERPOSE_DEADLOCK: {problem}; reporting.\n")
        mode = "report"
    control = os.environ.get("INTERPOSE_CONTROL", "1") != "0"
    _watch.start(control=control, deadlock=mode)
    dump_signal = os.environ.get("INTERPOSE_DUMP_SIGNAL")
    if dump_signal:
        try:
            install_dump_signal(dump_signal)
        except ValueError as e:
            sys.stderr.write(f"interpose: INTERPOSE_DUMP_SIGNAL: {e}; no dump signal.\n")
