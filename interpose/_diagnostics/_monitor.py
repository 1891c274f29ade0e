"""The blocking monitor: reports a coroutine that keeps its OS thread for
longer than a threshold without reaching a hooked call (CPU-bound code, or
a C library blocking in a call no hook sees), with its Python stack, the
way gevent's monitor thread reports max_blocking_time.

A real OS thread (no scheduler, so its sleeps really sleep) samples every
scheduler's switch count each threshold/4.  A scheduler whose count has not
moved for the threshold while one of its coroutines runs, and that has
other coroutines (else nobody waits), is blocked: the stack of the running
coroutine is printed once per incident.  Sampling takes the
GIL, which CPU-bound Python code gives up every switch interval (5 ms); a C
call that blocks while holding the GIL stops every thread, the monitor
included, and cannot be reported (faulthandler.dump_traceback_later can).

Opt in with INTERPOSE_MONITOR=SECONDS, `interpose run --monitor SECONDS`,
or interpose.start_blocking_monitor(SECONDS).
"""
import sys
import threading
import time
import traceback

from . import _deadlock
from . import _dump
from .._core import _native
from .._core import _sched
from .._integrations import _threads

_monitor = None


class _Monitor:
    def __init__(self, threshold, file):
        self.threshold = threshold
        self.file = file
        # scheduler handle -> [switch count, when it last moved, reported]
        self.seen = {}

    def run(self):
        _deadlock.helper_tids.add(threading.get_native_id())
        period = max(self.threshold / 4, 0.001)
        while True:
            time.sleep(period)
            self.sample(time.monotonic())

    def sample(self, now):
        seen = {}
        for sched in list(_sched._schedulers.values()):
            if not sched.native:
                continue
            switches, alive, handle, frame = _native.probe(
                sched.native, sched.incarnation)
            last = self.seen.get(sched.native)
            # Alone on its thread, a coroutine keeps nobody waiting.
            if last is None or last[0] != switches or frame is None or not alive:
                seen[sched.native] = [switches, now, False]
                continue
            seen[sched.native] = last
            if not last[2] and now - last[1] >= self.threshold:
                last[2] = True
                self.report(sched, now - last[1], handle, frame)
        self.seen = seen

    def report(self, sched, elapsed, handle, frame):
        """One report, in the dump's format (interpose/_diagnostics/_dump.py)."""
        coro = sched.live.get(handle) or sched.main
        views, _ = _dump.snapshot()
        view = next((v for v in views if v.sched == sched.native
                     and v.state == "running"), None)
        if view is not None:
            text = _dump.format_coroutine(view)
        else:  # it switched meanwhile: the stack sampled is all there is
            text = "".join(traceback.format_stack(frame))
        for v in views:
            v.frame = v.owner = None
        file = self.file or sys.stderr
        file.write(
            f"interpose: {coro} on OS thread {sched.name!r} has run for"
            f" {elapsed:.3f} s without reaching a hooked call; every other"
            f" coroutine of that thread is waiting:\n{text}")
        file.flush()


def start(threshold, file=None):
    """Start the monitor (once per process); threshold in seconds."""
    global _monitor
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool):
        raise TypeError("the blocking threshold must be a number of seconds")
    if not threshold > 0:
        raise ValueError(f"the blocking threshold must be positive, not {threshold}")
    if _monitor is not None:
        _monitor.threshold = threshold
        _monitor.file = file
        return
    _monitor = _Monitor(threshold, file)
    ident = _threads.real_start_new_thread(_monitor.run, ())
    _native.name_os_thread(ident, "interpose-mon")
