"""Statistics of a scheduler as frozen dataclasses: counters, run-queue
latency percentiles, and per-coroutine CPU time (interpose.statistics())."""
import dataclasses
import math

from . import _native
from . import _sched
from ._time import ns_to_seconds


@dataclasses.dataclass(frozen=True)
class CoroutineStatistics:
    """Time one coroutine spent on its thread (wall-clock time between the
    switch to it and the switch away: its CPU time, plus any blocking call
    no hook turned into a park)."""

    id: int
    name: str
    cpu_time: float  # seconds, all turns
    longest_turn: float  # seconds, the longest it held the thread at once
    turns: int


@dataclasses.dataclass(frozen=True)
class Statistics:
    """Counters of the calling thread's scheduler.

    Run-queue latency is the time from a coroutine's wake-up to its turn,
    measured in powers of two: each percentile is an upper bound at most
    twice the true value (0.0 before any turn)."""

    coroutines_alive: int = 0
    coroutines_created: int = 0
    switches: int = 0
    parks: int = 0
    timeouts: int = 0
    epoll_waits: int = 0
    preemptions: int = 0
    longest_turn: float = 0.0
    run_queue_latency_p50: float = 0.0
    run_queue_latency_p90: float = 0.0
    run_queue_latency_p99: float = 0.0
    run_queue_latency_max: float = 0.0
    coroutines: tuple = ()  # CoroutineStatistics of its live coroutines


def latency_percentiles(hist):
    """(p50, p90, p99, max) in seconds from a log2(ns) histogram: bucket b
    holds durations below 2**b ns, so each is reported as 2**b ns."""
    total = sum(hist)
    if total == 0:
        return 0.0, 0.0, 0.0, 0.0
    out = []
    for q in (0.50, 0.90, 0.99, 1.0):
        need = max(1, math.ceil(q * total))
        seen = 0
        for b, n in enumerate(hist):
            seen += n
            if seen >= need:
                out.append(ns_to_seconds(1 << b))
                break
    return tuple(out)


def coroutine_statistics(sched_handle):
    """CoroutineStatistics of the live coroutines of one scheduler."""
    names = {}
    for s in list(_sched._schedulers.values()):
        for handle, coro in list(s.live.items()):
            names[handle] = coro.name
        if s.main is not None:
            names[s.main._handle] = "main"
    out = []
    for info, _ in _native.diag_coros(frames=False):
        if info.sched != sched_handle:
            continue
        out.append(CoroutineStatistics(
            id=info.id,
            name=names.get(info.handle) or info.name.decode("utf-8", "replace"),
            cpu_time=ns_to_seconds(info.run_ns),
            longest_turn=ns_to_seconds(info.max_turn_ns),
            turns=info.turns))
    return tuple(out)


def statistics():
    """Counters of the calling thread's scheduler (all zero before its first
    use)."""
    raw = _native.statistics_raw()
    if raw is None:
        return Statistics()
    me = _native.sched_self()[0]
    info = next((s for s in _native.diag_scheds() if s.sched == me), None)
    p50 = p90 = p99 = pmax = 0.0
    longest = 0.0
    if info is not None:
        p50, p90, p99, pmax = latency_percentiles(list(info.latency))
        longest = ns_to_seconds(info.max_turn_ns)
    return Statistics(
        coroutines_alive=raw.alive,
        coroutines_created=raw.created,
        switches=raw.switches,
        parks=raw.parks,
        timeouts=raw.timeouts,
        epoll_waits=raw.epoll_waits,
        preemptions=raw.preemptions,
        longest_turn=longest,
        run_queue_latency_p50=p50,
        run_queue_latency_p90=p90,
        run_queue_latency_p99=p99,
        run_queue_latency_max=pmax,
        coroutines=coroutine_statistics(me),
    )
