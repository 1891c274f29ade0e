"""Statistics as text: what --stats prints at exit and what `interpose ps
--stats PID` shows, for every scheduler of the process (interpose.statistics()
returns the calling thread's as a dataclass)."""
import os

from . import _dump
from .._core import _native
from .._core import _statistics
from .._core._time import format_ms, ns_to_seconds

TOP = 10  # coroutines listed per scheduler, by time on the thread


def format_sched(info, names, own=None):
    """Lines for one scheduler (a SchedInfo); own: the calling thread's
    Statistics, whose counters only that thread can read."""
    p50, p90, p99, pmax = _statistics.latency_percentiles(list(info.latency))
    title = "main thread" if info.is_main_thread else "thread"
    lines = [f"scheduler on OS {title} {info.tid} ({names.get(info.sched, '?')}):"
             f" {info.alive} spawned coroutine(s) alive, {info.switches} switches"]
    if own is not None:
        lines.append(f"  created {own.coroutines_created}, parks {own.parks},"
                     f" timeouts {own.timeouts}, epoll waits {own.epoll_waits}")
    lines.append(f"  longest turn {format_ms(ns_to_seconds(info.max_turn_ns))}; run-queue"
                 f" latency p50 <= {format_ms(p50)}, p90 <= {format_ms(p90)},"
                 f" p99 <= {format_ms(p99)}, max <= {format_ms(pmax)}")
    coros = _statistics.coroutine_statistics(info.sched)
    busiest = sorted(coros, key=lambda c: c.cpu_time, reverse=True)[:TOP]
    if busiest:
        lines.append(f"  busiest coroutines (of {len(coros)}):")
        for c in busiest:
            lines.append(f"    {c.id:>6} {c.name!r}: {format_ms(c.cpu_time)} in"
                         f" {c.turns} turns, longest {format_ms(c.longest_turn)}")
    return "\n".join(lines) + "\n"


def format_all():
    """Every scheduler's statistics as text."""
    _, names = _dump._names()
    me = _native.sched_self()[0]
    out = [f"interpose statistics (pid {os.getpid()}):\n"]
    for info in _native.diag_scheds():
        own = _statistics.statistics() if info.sched == me else None
        out.append(format_sched(info, names, own))
    return "".join(out)
