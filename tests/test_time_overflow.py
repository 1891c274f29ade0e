"""Timeouts too large for int64 nanoseconds (issue #12 item 5): every
conversion saturates, and a value past what the engine can count means
"forever", as it does for the kernel.  Differential tests run the same
snippet plain and under `interpose run`; the Python API tests check that
nothing is truncated on its way through ctypes.

Acceptable: the hooked run prints what the plain run prints.  Unacceptable:
an early timeout (a wrapped value), a different time reported as not slept,
a UBSan report (signed overflow), a wait on the wrong fd."""
import textwrap

import pytest

from support.snippets import assert_same, run_hooked, check_ok

pytestmark = pytest.mark.timeout(120)

LIBC = """
import ctypes, ctypes.util, select, signal, socket
libc = ctypes.CDLL(None, use_errno=True)
LONG_MAX = 2**63 - 1

class timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]

class timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]
"""


def _libc(body):
    return LIBC + textwrap.dedent(body)


def test_poll_with_int_max_ms_waits_for_data():
    assert_same(_libc("""
        r, w = os.pipe()
        def waiter():
            p = select.poll()
            p.register(r, select.POLLIN)
            return [(fd == r, ev) for fd, ev in p.poll(2**31 - 1)]
        t = go(waiter)
        settle(t)
        os.write(w, b"x")
        print(t.join())
    """))


def test_select_with_huge_timeval_waits_and_reports_huge_time_left():
    # Linux saturates the expiry and reports the time not slept: still
    # huge.  Before the fix the hook computed LONG_MAX * 1e9 (undefined;
    # UBSan aborts) and reported 0 left.
    assert_same(_libc("""
        r, w = os.pipe()
        def waiter():
            fds = (ctypes.c_ulong * 16)()
            fds[r // 64] |= 1 << (r % 64)
            tv = timeval(LONG_MAX, 0)
            n = libc.select(r + 1, fds, None, None, ctypes.byref(tv))
            return n, tv.tv_sec > 2**62, 0 <= tv.tv_usec < 10**6
        t = go(waiter)
        settle(t)
        os.write(w, b"x")
        print(t.join())
    """))


def test_ppoll_with_huge_timespec_waits_for_data():
    assert_same(_libc("""
        class pollfd(ctypes.Structure):
            _fields_ = [("fd", ctypes.c_int), ("events", ctypes.c_short),
                        ("revents", ctypes.c_short)]
        r, w = os.pipe()
        def waiter():
            p = pollfd(r, select.POLLIN, 0)
            ts = timespec(LONG_MAX, 999999999)
            return libc.ppoll(ctypes.byref(p), 1, ctypes.byref(ts), None), p.revents
        t = go(waiter)
        settle(t)
        os.write(w, b"x")
        print(t.join())
    """))


# tv_sec * 10**9 wraps, in int64, to 512 ns for this tv_sec (the inverse of
# 1953125 modulo 2**55): before the fix the hook timed the recv out at once,
# while the kernel keeps 584 years (or forever) for it.
WRAPS_TO_512_NS = pow(1953125, -1, 2**55)


@pytest.mark.slow
@pytest.mark.parametrize("tv_sec", [2**63 - 1, WRAPS_TO_512_NS, 18446744074],
                         ids=["LONG_MAX", "wraps_to_512ns", "wraps_to_0.29s"])
def test_so_rcvtimeo_huge_is_forever(tv_sec):
    assert_same(_libc(f"""
        a, b = socket.socketpair()
        tv = timeval({tv_sec}, 0)
        assert libc.setsockopt(a.fileno(), socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                               ctypes.byref(tv), ctypes.sizeof(tv)) == 0
        def reader():
            try:
                return a.recv(10)
            except OSError as e:
                return errname(e)
        t = go(reader)
        settle(t)
        time.sleep(0.5)  # past the wrapped 0.29 s, were it still wrapping
        b.send(b"late")
        print(t.join())
    """))


@pytest.mark.parametrize("call", ["nanosleep", "clock_nanosleep"])
def test_huge_sleep_interrupted_reports_time_left_like_the_kernel(call):
    # The kernel saturates the expiry at KTIME_MAX (INT64_MAX ns on the
    # monotonic clock) and reports what is left of it after EINTR.
    assert_same(_libc(f"""
        signal.signal(signal.SIGALRM, lambda *a: None)
        signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)  # until one lands inside
        req, rem = timespec(LONG_MAX, 0), timespec(0, 0)
        if "{call}" == "nanosleep":
            r = libc.nanosleep(ctypes.byref(req), ctypes.byref(rem))
            err = ctypes.get_errno() if r else 0
        else:
            err = r = libc.clock_nanosleep(time.CLOCK_MONOTONIC, 0, ctypes.byref(req),
                                           ctypes.byref(rem))
        now = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, 0)
        print(errno.errorcode.get(err))
        print(abs(rem.tv_sec + now - (2**63 - 1) / 1e9) < 60)
    """))


def test_wait_readable_refuses_fd_truncated_by_c_int():
    # 2**32 + r would reach the engine as r: it must raise as os.fstat does.
    lines = check_ok(run_hooked("""
        r, w = os.pipe()
        for fd in (2**32 + r, 2**31, 2**64 + r):
            for fn in (os.fstat, interpose.wait_readable, interpose.wait_writable):
                try:
                    fn(fd)
                except (OverflowError, ValueError) as e:
                    print(fn.__name__, type(e).__name__)
        print(interpose.wait_readable(r, timeout=0))
    """))
    assert lines == ["fstat OverflowError", "wait_readable OverflowError",
                     "wait_writable OverflowError"] * 3 + ["False"]


@pytest.mark.slow
def test_wait_readable_huge_timeout_is_not_truncated():
    # 18446744074 s is 2**64 + 0.29 s in ns: ctypes would pass 0.29 s.
    lines = check_ok(run_hooked("""
        from interpose._core import _time
        r, w = os.pipe()
        def writer():
            interpose.sleep(0.5)
            os.write(w, b"x")
        t = go(writer)
        print(interpose.wait_readable(r, timeout=18446744074))
        t.join()
        # A timeout past FOREVER_NS is no deadline at all (issue #13 item 5:
        # inf means forever), which the engine gets as -1; a deadline too
        # far for int64 that does reach remaining_ns is clamped.
        print(_time.deadline_ns(1e30) is None,
              _time.remaining_ns(None) == -1)
        print(_time.remaining_ns(2**70) == 2**63 - 1)
        with interpose.deadline(18446744074):
            interpose.sleep(0.3)
        print("deadline ok")
    """))
    assert lines == ["True", "True True", "True", "deadline ok"]
