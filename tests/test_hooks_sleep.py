"""The sleep hooks (native/hooks_sleep.c): sleeping coroutines let the others
run, interleaved, and no sleep returns early; inside interpose.no_hooks() a
sleep blocks the OS thread again.  interpose.sleep(0) passes the turn in
strict round-robin order, the main coroutine included.

Differential tests run the snippet hooked and plain (go() = OS threads) and
compare what both print.
"""
import pytest

import interpose
from support.snippets import assert_same, check_ok, run_hooked


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_sleep_lets_other_coroutines_run_interleaved():
    # If time.sleep blocked the thread the log would read AAAABBBB.  The
    # order is exact under the scheduler (timers fire in deadline order, the
    # run queue is FIFO), so this runs hooked only.
    out = check_ok(run_hooked("""
        log = []

        def worker(name):
            t0 = time.monotonic()
            for _ in range(4):
                log.append(name)
                time.sleep(0.05)
            return time.monotonic() - t0 >= 0.2

        a, b = go(worker, "A"), go(worker, "B")
        print("".join(log) or "-", a.join(), b.join(), "".join(log))
    """, timeout=30))
    assert out == ["- True True ABABABAB"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sleep_calls_never_return_early():
    # time.sleep (clock_nanosleep TIMER_ABSTIME), and nanosleep, usleep and
    # clock_nanosleep called directly, in a coroutine while a ticker runs.
    out = assert_same("""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)

        class timespec(ctypes.Structure):
            _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

        def ts(ns):
            return timespec(ns // 10**9, ns % 10**9)

        MONO, REAL, ABSTIME = time.CLOCK_MONOTONIC, time.CLOCK_REALTIME, 1
        t = Ticker()

        def check(label, requested_ns, fn):
            t0 = time.monotonic_ns()
            rc = fn()
            ok = time.monotonic_ns() - t0 >= requested_ns
            return f"{label} rc={rc} on time={ok}"

        def sleeper():
            lines = []
            for ms in (0.5, 1, 10.5, 50, 120):
                ns = int(ms * 1e6)
                lines.append(check(f"time.sleep({ms} ms)", ns, lambda: time.sleep(ns / 1e9) or 0))
                lines.append(check("nanosleep", ns,
                                   lambda: libc.nanosleep(ctypes.byref(ts(ns)), None)))
                lines.append(check("usleep", ns // 1000 * 1000,
                                   lambda: libc.usleep(ns // 1000)))
                lines.append(check("clock_nanosleep", ns,
                                   lambda: libc.clock_nanosleep(MONO, 0, ctypes.byref(ts(ns)), None)))
                for clock in (MONO, REAL):
                    target = time.clock_gettime_ns(clock) + ns
                    rc = libc.clock_nanosleep(clock, ABSTIME, ctypes.byref(ts(target)), None)
                    lines.append(f"clock_nanosleep ABSTIME clock {clock} rc={rc}"
                                 f" on time={time.clock_gettime_ns(clock) >= target}")
            t0 = time.monotonic()
            time.sleep(0)
            lines.append("sleep(0) returns")
            return lines

        for line in go(sleeper).join():
            print(line)
        print("ticked:", t.stop() > 0)
    """)
    assert out[-1] == "ticked: True"
    assert all("rc=0 on time=True" in line for line in out[:-2]), out


@pytest.mark.timeout(60)
def test_no_hooks_blocks_the_thread_and_restores():
    # Inside no_hooks() a blocking sleep blocks the thread (the ticker does
    # not tick meanwhile); after it, sleeps cooperate again.
    out = check_ok(run_hooked("""
        ticks = []
        def ticker():
            for i in range(5):
                time.sleep(0.01)
                ticks.append(i)
        t = interpose.spawn(ticker)
        with interpose.no_hooks():
            time.sleep(0.2)
            print("ticks while blocked", len(ticks))
        t.join()
        print("ticks after", len(ticks))
    """))
    assert out == ["ticks while blocked 0", "ticks after 5"]


# ---- sleep(0) -------------------------------------------------------------

@pytest.mark.timeout(30)
def test_sleep_zero_alternates_two_coroutines_strictly():
    order = []

    def player(tag):
        for _ in range(200):
            order.append(tag)
            interpose.sleep(0)

    def main():
        a = interpose.spawn(player, "A")
        b = interpose.spawn(player, "B")
        a.join()
        b.join()

    interpose.run(main)
    assert order == ["A", "B"] * 200


@pytest.mark.timeout(30)
def test_sleep_zero_round_robin_includes_main_coroutine():
    order = []

    def player(tag):
        for _ in range(100):
            order.append(tag)
            interpose.sleep(0)

    def main():
        others = [interpose.spawn(player, tag) for tag in ("B", "C")]
        player("M")
        for c in others:
            c.join()

    interpose.run(main)
    assert order == ["M", "B", "C"] * 100
