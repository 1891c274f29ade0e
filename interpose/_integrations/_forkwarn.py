"""os.fork() warns about threads exactly when plain Python would.

CPython 3.12+ warns at os.fork() ("This process is multi-threaded, use of
fork() may lead to deadlocks in the child") when /proc/self/stat counts more
than one thread.  Under interpose a program's threads are coroutines of its
OS thread, but interpose keeps helper OS threads of its own: the preemption
monitor, the diagnostics thread, the resolver pool.  Stopping them around a
fork cannot work on 3.13+, which counts after the parent's at-fork hooks
have run.  So before each fork this hook counts the process's threads that
are not interpose's: with only the forking one left, a filter for that one
warning goes in front of the others; otherwise it comes out.  The program
then sees the warning exactly when its own threads would have caused it.
"""
import os
import re
import warnings

from .._core import _compat
from .._core import _native

_MESSAGE = r"This process \(pid=\d+\) is multi-threaded"
_FILTER = ("ignore", re.compile(_MESSAGE), DeprecationWarning, None, 0)
_installed = False
# Native ids of interpose's own helper OS threads (the diagnostics thread,
# the blocking monitor): each adds its own as it starts.
helper_tids = set()


def _program_threads():
    try:
        tids = {int(t) for t in os.listdir("/proc/self/task")}
    except OSError:
        return 2  # cannot tell: let CPython decide, as it would anyway
    tids -= helper_tids  # the diagnostics thread
    tids.discard(_native.lib.preempt_monitor_tid())
    return len(tids) - _native.lib.diag_resolver_threads()


def _before_fork():
    quiet = _program_threads() <= 1
    present = _FILTER in warnings.filters
    if quiet and not present:
        warnings.filters.insert(0, _FILTER)
    elif present and not quiet:
        warnings.filters.remove(_FILTER)
    else:
        return
    warnings._filters_mutated()


def install():
    """Called by whatever starts one of interpose's helper threads."""
    global _installed
    if _compat.FORK_WARNS_WITH_THREADS and not _installed:
        os.register_at_fork(before=_before_fork)
        _installed = True
