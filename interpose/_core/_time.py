"""Timeouts and deadlines in the engine's unit: int64 nanoseconds of the
monotonic clock (interpose_clock_ns), rounded up, clamped, NaN refused."""
import math

from . import _native

_now_ns = _native.lib.clock_ns
# The engine takes int64 nanoseconds, and ctypes truncates a larger int
# silently (2**64 + 5 arrives as 5): every time handed to it is clamped
# here.  A timeout of INT64_MAX passes any deadline the engine can count,
# which it treats as none (native/timeconv.h).
INT64_MAX = 2**63 - 1


# The one place Python converts between the engine's nanoseconds and
# seconds (the native side's is native/timeconv.h).
NS_PER_S = 1_000_000_000
US_PER_S = 1_000_000


def ns_to_seconds(ns):
    """Float seconds for nanoseconds."""
    return ns / NS_PER_S


def seconds_to_us(secs):
    """Whole microseconds for float seconds, rounded to nearest."""
    return round(secs * US_PER_S)


def format_seconds(secs):
    """'1.234 s', the diagnostics' format for a duration."""
    return f"{secs:.3f} s"


def format_ms(secs):
    """'1.234 ms', the diagnostics' format for a short duration."""
    return f"{secs * 1000:.3f} ms"


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
    if seconds * NS_PER_S >= FOREVER_NS:
        return None
    return math.ceil(seconds * NS_PER_S)


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
