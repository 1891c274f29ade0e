"""The parking primitive every cooperative wait is built on.

A waiter is the pair (coroutine handle, park generation).  Wakers pop
waiters and unpark them; the engine guarantees that exactly one wake ends a
park, so a waker learns whether it really woke someone (unpark returns 1) or
lost the race to a timeout or cancellation (0) and must try the next one.
Every structure is guarded by a real OS lock, never held across a park, so
primitives also work between OS threads.
"""
import collections
import math

from . import _native
from . import _sched

_lib = _native.lib
_park = _lib.coro_park
_unpark = _lib.coro_unpark
_now_ns = _lib.clock_ns
# The engine takes int64 nanoseconds, and ctypes truncates a larger int
# silently (2**64 + 5 arrives as 5): every time handed to it is clamped
# here.  A timeout of INT64_MAX passes any deadline the engine can count,
# which it treats as none (native/timeconv.h).
INT64_MAX = 2**63 - 1


# Timeouts longer than this (about 146 years), and infinity, mean forever:
# a deadline in nanoseconds must fit the engine's int64 with room to spare.
FOREVER_NS = 1 << 62


def timeout_ns(seconds):
    """Nanoseconds to wait for seconds, rounded up: None for forever
    (infinity or beyond FOREVER_NS), 0 for a negative timeout.  NaN raises
    ValueError with the message CPython's own timeouts give."""
    if math.isnan(seconds):
        raise ValueError("Invalid value NaN (not a number)")
    if seconds <= 0:
        return 0
    if seconds * 1e9 >= FOREVER_NS:
        return None
    return math.ceil(seconds * 1e9)


def deadline_ns(timeout):
    """Absolute deadline for a timeout in seconds (None = no deadline)."""
    if timeout is None:
        return None
    ns = timeout_ns(timeout)
    return None if ns is None else _now_ns() + ns


def remaining_ns(deadline):
    if deadline is None:
        return -1
    return min(INT64_MAX, max(0, deadline - _now_ns()))


class WaitQueue:
    __slots__ = ("_waiters",)

    def __init__(self):
        self._waiters = collections.deque()

    def __len__(self):
        return len(self._waiters)

    def wait(self, guard, deadline, before_park=None):
        """Park until woken or the deadline; True when woken.

        guard is held on entry and on return; it is released while parked.
        before_park runs after the waiter is registered and guard released
        (Condition uses it to release the user's lock without losing a
        notify).  A signal or a forwarded exception raises; a timeout
        returns False.
        """
        waiter = _sched.prepare()
        self._waiters.append(waiter)
        guard.release()
        try:
            if before_park is not None:
                before_park()
            code = _park(remaining_ns(deadline))
        except BaseException:
            guard.acquire()
            self._withdraw(waiter)
            raise
        guard.acquire()
        if code == 0:
            return True
        self._withdraw(waiter)
        if code == _native.PARK_TIMEOUT:
            return False
        _sched.park_failed(code)
        return True  # interrupted by a signal whose handler did not raise

    def _withdraw(self, waiter):
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass  # a waker already popped it and lost the race

    def wake_one(self):
        """Wake the first waiter still waiting; True if there was one."""
        waiters = self._waiters
        while waiters:
            handle, gen = waiters.popleft()
            if _unpark(handle, gen, 0):
                return True
        return False

    def wake_all(self):
        n = 0
        waiters = self._waiters
        while waiters:
            handle, gen = waiters.popleft()
            n += _unpark(handle, gen, 0)
        return n
