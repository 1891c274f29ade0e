"""The sem_* hooks: what libc returns, and coroutines parking on locks.

The differential snippets call libc's semaphore functions through ctypes
(which releases the GIL, so a coroutine's hooks apply) with and without the
preload."""
import textwrap

import pytest

from support.snippets import assert_same, check_ok, run_hooked

pytestmark = pytest.mark.timeout(120)

SEM = """
    import ctypes, errno, os, time
    # The process's global symbols, as CPython's own calls resolve them (a
    # handle on libc.so.6 itself would bypass the preload).
    libc = ctypes.CDLL(None, use_errno=True)

    class timespec(ctypes.Structure):
        _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

    def abs_time(clock, delta):
        t = time.clock_gettime(clock) + delta
        return timespec(int(t), int((t % 1) * 1e9))

    def call(name, *args):
        ctypes.set_errno(0)
        r = getattr(libc, name)(*args)
        return r if r == 0 else (r, errno.errorcode[ctypes.get_errno()])

    sem = ctypes.create_string_buffer(32)
"""


def with_sem(code):
    """The SEM helpers, then code (each dedented on its own)."""
    return textwrap.dedent(SEM) + textwrap.dedent(code)


def test_sem_calls_return_what_libc_returns():
    out = assert_same(with_sem("""
        def body():
            print(call("sem_init", sem, 0, 1))
            print(call("sem_wait", sem))
            print(call("sem_trywait", sem))
            print(call("sem_timedwait", sem, ctypes.byref(abs_time(time.CLOCK_REALTIME, 0.02))))
            print(call("sem_timedwait", sem, ctypes.byref(abs_time(time.CLOCK_REALTIME, -1))))
            print(call("sem_clockwait", sem, time.CLOCK_MONOTONIC,
                       ctypes.byref(abs_time(time.CLOCK_MONOTONIC, 0.02))))
            print(call("sem_timedwait", sem, ctypes.byref(timespec(0, 2_000_000_000))))
            print(call("sem_post", sem), call("sem_post", sem))
            value = ctypes.c_int()
            libc.sem_getvalue(sem, ctypes.byref(value))
            print("value", value.value)
            print(call("sem_wait", sem), call("sem_timedwait", sem,
                  ctypes.byref(abs_time(time.CLOCK_REALTIME, 5))))
            print(call("sem_destroy", sem))
        go(body).join()
    """))
    assert out == ["0", "0", "(-1, 'EAGAIN')", "(-1, 'ETIMEDOUT')", "(-1, 'ETIMEDOUT')",
                   "(-1, 'ETIMEDOUT')", "(-1, 'EINVAL')", "0 0", "value 2", "0 0", "0"]


def test_a_coroutine_waiting_on_a_semaphore_lets_others_run_and_wakes_on_post():
    lines = check_ok(run_hooked(with_sem("""
        libc.sem_init(sem, 0, 0)
        ticker = Ticker()
        waiter = go(lambda: call("sem_wait", sem))
        ticker.wait_ticks(5)           # the thread is not blocked in sem_wait
        print("waiting", not waiter.done())
        print("post", call("sem_post", sem))
        print("woken with", waiter.join())
        print("timed", go(lambda: call("sem_clockwait", sem, time.CLOCK_MONOTONIC,
              ctypes.byref(abs_time(time.CLOCK_MONOTONIC, 0.05)))).join())
        ticker.stop()
    """)))
    assert lines == ["waiting True", "post 0", "woken with 0", "timed (-1, 'ETIMEDOUT')"]


def test_many_waiters_on_one_lock_each_get_it_once():
    assert_same("""
        import threading, time
        lock = threading.Lock()
        order = []
        lock.acquire()
        def body(i):
            with lock:
                order.append(i)
        ts = [threading.Thread(target=body, args=(i,)) for i in range(200)]
        for t in ts: t.start()
        time.sleep(0.05)
        lock.release()
        for t in ts: t.join()
        print(len(order), sorted(order) == list(range(200)))
    """)


def test_process_shared_semaphores_posted_by_another_process_wake_the_waiter():
    # A multiprocessing lock is a process-shared semaphore: the child's
    # sem_post is invisible to the parent's hooks, so the parent polls it.
    assert_same("""
        import multiprocessing, threading, time
        ctx = multiprocessing.get_context("fork")
        lock = ctx.Lock()
        held = ctx.Event()
        # The child holds the lock until the parent's ticker has ticked six
        # times (not for a fixed 0.2 s, in which an OS thread under load
        # may tick less): the ticks prove others ran while the parent waited.
        release = ctx.Event()
        def child():
            with lock:
                held.set()
                release.wait(20)
        p = ctx.Process(target=child); p.start()
        held.wait(10)
        ticks = []
        stop = threading.Event()
        def ticker():
            while not stop.is_set():
                ticks.append(1); time.sleep(0.005)
                if len(ticks) == 6:
                    release.set()
        t = threading.Thread(target=ticker); t.start()
        got = lock.acquire(timeout=30)
        stop.set(); t.join(); p.join()
        print("acquired", got, "others ran while waiting", len(ticks) > 5)
    """)


def test_a_coroutine_that_never_waits_yields_at_hooked_calls_after_its_time_slice():
    # select() on an always-readable fd returns at once, so this loop never
    # parks; the flag it polls is set by a thread that needs the CPU.  OS
    # threads are preempted; the coroutine must yield after its time slice.
    assert_same("""
        import select, socket, threading, time
        a, b = socket.socketpair()
        b.send(b"x")                  # a stays readable
        done = threading.Event()
        threading.Thread(target=lambda: (time.sleep(0.05), done.set())).start()
        spins = 0
        while not done.is_set():
            select.select([a], [], [], None)
            spins += 1
        print("flag seen", spins > 0)
    """)
