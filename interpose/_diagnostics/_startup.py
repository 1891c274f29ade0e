"""Start-up of the diagnostics in a booted process, from the settings
(checked by _settings before the boot): the control socket and deadlock
watcher (_watch.py) and the dump signal.

INTERPOSE_CONTROL=0        no control socket (`interpose ps` cannot reach it)
INTERPOSE_DEADLOCK=MODE    report (default): print the deadlock report once
                           and keep waiting; exit: print it and exit with
                           status 70; off: do not watch
INTERPOSE_DEADLOCK_LOG=P   also append each deadlock report to the file P
INTERPOSE_DUMP_SIGNAL=SIG  on SIG (a name such as SIGQUIT or USR2, or a
                           number) write the dump to stderr; off by default,
                           as the program may use every signal itself
"""
import signal

from . import _deadlock
from . import _dump
from .._core import _settings
from . import _watch


def _dump_handler(signum, frame):
    """Writes the dump to stderr; runs in the main coroutine."""
    _watch._write_stderr(_dump.dump_text(
        title=f"interpose dump on {signal.Signals(signum).name}"))


def install_dump_signal(signum):
    signal.signal(signum, _dump_handler)
    _deadlock.own_handlers.add(_dump_handler)


def boot():
    mode = _settings.get("INTERPOSE_DEADLOCK") or "report"
    control = _settings.get("INTERPOSE_CONTROL") != "0"
    _watch.start(control=control, deadlock=mode)
    signum = _settings.get("INTERPOSE_DUMP_SIGNAL")
    if signum is not None:
        install_dump_signal(signum)
