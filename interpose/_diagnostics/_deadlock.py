"""The deadlock report: decides whether the coroutines of stuck schedulers
can ever be woken, and writes the report.

The engine flags a scheduler stuck when its hub goes to sleep with an empty
run queue, no timer and no coroutine waiting on an fd or on the resolver
pool (ip_sched_t.stuck).  Its coroutines are then all parked on locks,
events, queues or joins: only another coroutine, another OS thread or a
signal handler can end those waits.  The watcher (_watch.py) confirms that
a scheduler stayed stuck without a single switch for CONFIRM_S, then asks
this module (a scheduler with a wake queued by another thread does not
count as stuck: diag.c).  A deadlock is reported only when, besides:

* no OS thread of the process can wake them: every thread is a stuck
  scheduler's, a helper of interpose's own (the watcher, the blocking
  monitor) or an idle resolver thread;
* no signal can: no Python handler is installed for any signal (SIGINT's
  default handler raises KeyboardInterrupt, which ends the program, not the
  wait, and the synchronous fault signals wake nothing).

A wait that another process can end (a pipe, a socket, a child's exit)
always involves an fd and so never makes a scheduler stuck.  Those rules
prefer silence to a false report: a program whose deadlocked threads share
the process with a thread blocked in a C call gets no report.
"""
import os
import signal

from .._core import _compat
from . import _dump
from .._integrations import _forkwarn
from .._core import _native

CONFIRM_S = 0.3
EXIT_STATUS = 70  # EX_SOFTWARE: the program cannot go on
_SYNCHRONOUS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL,
                signal.SIGABRT}
# Native ids of interpose's own OS threads (never wakers): the set the
# fork warning filter also leaves out of its count.
helper_tids = _forkwarn.helper_tids
# Handlers interpose itself installs (the SIGQUIT dump): not wakers.
own_handlers = set()


def _other_threads(stuck_tids):
    """OS threads that might wake a stuck scheduler's coroutines."""
    try:
        tids = {int(t) for t in os.listdir("/proc/self/task")}
    except OSError:
        return 1  # cannot tell: assume one
    others = tids - set(stuck_tids) - helper_tids
    others.discard(_native.lib.preempt_monitor_tid())  # never wakes anyone
    return max(0, len(others) - _native.lib.diag_resolver_threads())


def _signal_wakers():
    """Signals whose Python handler might wake a coroutine."""
    found = []
    for signum in signal.valid_signals():
        if signum in _SYNCHRONOUS:
            continue
        try:
            handler = signal.getsignal(signum)
        except (OSError, ValueError):
            continue
        if handler is None:
            found.append(signum)  # a C handler set before start-up: unknown
        elif callable(handler) and handler is not signal.default_int_handler \
                and handler not in own_handlers:
            found.append(signum)
    return found


def deadlocked(stuck):
    """Whether the stuck schedulers (SchedInfo list) can never be woken."""
    if not stuck:
        return False
    if _other_threads([s.tid for s in stuck]) > 0:
        return False
    return not _signal_wakers()


def lock_cycle(views):
    """The first cycle of 'waits for a lock held by' among views, as a list
    of CoroutineViews, or []."""
    for start in views:
        seen = []
        v = start
        while v is not None and v.owner is not None and v not in seen:
            seen.append(v)
            v = v.owner
        if v is not None and v in seen:
            return seen[seen.index(v):]
    return []


def format_cycle(cycle):
    lines = ["lock cycle:"]
    for v in cycle:
        waits = v.waits_for.split(", held by")[0]
        lines.append(f"  coroutine {v.id} {v.name!r} waits for {waits},"
                     f" held by coroutine {v.owner.id} {v.owner.name!r}")
    return "\n".join(lines) + "\n"


def _no_cycle_note(views):
    """Why no cycle is shown when some lock waiter has no known holder and
    the version records none for threading.Lock; else ''."""
    if _compat.LOCK_OWNERS_KNOWN or not any(
            v.wait_kind == _native.WAIT_LOCK and v.owner is None for v in views):
        return ""
    return ("no lock cycle shown: from CPython 3.13 a threading.Lock records"
            " no holder (RLock and Thread.join do; docs/diagnostics.md).\n")


def report(stuck, exiting):
    """The report's text for the stuck schedulers."""
    views, scheds = _dump.snapshot()
    keys = {s.sched for s in stuck}
    mine = [v for v in views if v.sched in keys]
    try:
        threads = ", ".join(str(s.tid) for s in stuck)
        head = (f"interpose: deadlock: all {len(mine)} coroutine(s) of OS"
                f" thread(s) {threads} are parked and nothing in the process"
                f" can wake them (no fd wait, no timer, no other thread, no"
                f" signal handler).\n")
        cycle = lock_cycle(mine)
        body = format_cycle(cycle) if cycle else _no_cycle_note(mine)
        body += "\n"
        body += _dump.format_dump(mine, [s for s in scheds if s.sched in keys],
                                  title="interpose deadlock dump")
        if exiting:
            tail = f"interpose: exiting with status {EXIT_STATUS} (INTERPOSE_DEADLOCK=exit).\n"
        else:
            tail = ("interpose: waiting on, as Python would (Ctrl-C interrupts;"
                    " INTERPOSE_DEADLOCK=exit exits instead).\n")
        return head + body + tail
    finally:
        for v in views:
            v.frame = v.wait_lock = None
            v.owner = None
