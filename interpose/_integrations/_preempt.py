"""Time slicing: which coroutines the native monitor may preempt at a
bytecode boundary, and the monitor's lifetime (see native/preempt.c and
docs/time-slicing.md).

Threads that interpose turns into coroutines keep the threads' contract of
taking turns, so under `interpose run` they, and every thread's main
coroutine, are preemptible.  Coroutines made with interpose.spawn keep
pure cooperative semantics unless they opt in (spawn(..., preemptible=True))
or the process does (INTERPOSE_PREEMPT=all); INTERPOSE_PREEMPT=off turns
time slicing off altogether.

Registered with the core (_core/_hooks.py) as this module is imported: the
spawn default, starting the monitor before the first coroutine becomes
preemptible, stopping it at exit and around fork().
"""
import os
import sys

from . import _forkwarn
from .._core import _hooks
from .._core import _native
from .._core._time import seconds_to_us

_lib = _native.lib
_real_setswitchinterval = sys.setswitchinterval

# The INTERPOSE_PREEMPT setting (threads, all, off; _settings checks it)
# this process booted with, or None outside `interpose run`.
mode = None
_started = False


def spawn_default():
    """Whether interpose.spawn makes preemptible coroutines by default."""
    return mode == "all"


def threads_preemptible():
    """Whether coroutines standing for threads are preemptible."""
    return mode in ("threads", "all")


def _interval_us():
    return max(1, seconds_to_us(sys.getswitchinterval()))


def setswitchinterval(interval):
    """sys.setswitchinterval, also telling the monitor."""
    _real_setswitchinterval(interval)
    _lib.preempt_set_interval(_interval_us())


setswitchinterval.__doc__ = _real_setswitchinterval.__doc__


def start():
    """Start the monitor thread (once per process; again in a forked
    child)."""
    global _started
    if _started:
        return
    _forkwarn.install()
    _lib.preempt_set_interval(_interval_us())
    r = _lib.preempt_start()
    if r < 0:
        raise OSError(-r, f"interpose: cannot start the preemption monitor:"
                          f" {os.strerror(-r)}")
    sys.setswitchinterval = setswitchinterval
    _started = True


def _stop_at_exit():
    # Before finalization deletes the monitor's thread state; after the
    # wait for non-daemon threads, which still take turns.
    if _started:
        _lib.preempt_stop()


# The monitor is stopped around fork(), so that the process forks with one
# OS thread, as a program whose threads are all coroutines expects (3.12+
# warns about forking a multi-threaded process), and so that the monitor
# holds no lock the child would inherit.  Both sides then start a new one.
def _before_fork():
    if _started:
        _lib.preempt_stop()


def _after_fork():
    global _started
    if _started:
        _started = False
        start()


_hooks.preemptible_by_default.append(spawn_default)
_hooks.before_preemptible.append(start)
_hooks.exiting.append(_stop_at_exit)
_hooks.before_fork.append(_before_fork)
_hooks.after_fork_in_parent.append(_after_fork)
_hooks.after_fork_in_child.append(_after_fork)
