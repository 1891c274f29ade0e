"""The blocking monitor never reads freed memory (issue #12 item 6).

It samples every scheduler from its own thread while the threads that own
them come and go.  Scheduler structs are type-stable (reused, never freed)
and named by (handle, incarnation); the running coroutine's frame is read
by the engine with the GIL held throughout.  These tests are meant for
scripts/asan-tests, where a read of freed memory is a report and a crash;
in the regular run they check that samples stay consistent.

Acceptable: samples of live schedulers, zeros for gone ones.  Unacceptable:
an ASan report, a crash, a frame of a thread state already deleted."""
import pytest

from support.snippets import run_snippet, check_ok

pytestmark = pytest.mark.timeout(120)


@pytest.mark.slow
def test_monitor_samples_while_threads_create_and_destroy_schedulers():
    lines = check_ok(run_snippet("""
        import os, sys, threading, interpose
        from interpose._core import _sched; from interpose._diagnostics import _monitor

        fds_before = len(os.listdir("/proc/self/fd"))
        tasks_before = len(os.listdir("/proc/self/task"))
        sys.setswitchinterval(1e-6)  # interleave the sampler and the threads
        monitor = _monitor._Monitor(0.001, sys.stderr)
        stop = False
        samples = 0

        def sampler():
            global samples
            while not stop:
                monitor.sample(0.0)
                samples += 1

        def short_lived():
            # A scheduler made for one coroutine, destroyed as the thread exits.
            interpose.spawn(lambda: interpose.sleep(0)).join()

        s = threading.Thread(target=sampler)
        s.start()
        for _ in range(60):
            ts = [threading.Thread(target=short_lived) for _ in range(4)]
            for t in ts: t.start()
            for t in ts: t.join()
        stop = True
        s.join()
        # A thread's locals can end up in a reference cycle that only the
        # collector frees, on whichever thread it runs: collect here so the
        # registry is checked after every reaper has run.
        import gc; gc.collect()
        print("samples", samples > 0, "schedulers left", len(_sched._schedulers))
        # Each scheduler holds an epoll fd and an eventfd: none may outlive
        # its thread, whichever thread CPython frees the thread's locals on.
        # When they were freed elsewhere, the engine closes both as the OS
        # thread exits, which join() does not wait for: count once every
        # OS thread has left /proc (its exit handlers have run by then).
        import time
        deadline = time.monotonic() + 20
        while (len(os.listdir("/proc/self/task")) > tasks_before
               and time.monotonic() < deadline):
            time.sleep(0.001)
        print("fds leaked", len(os.listdir("/proc/self/fd")) - fds_before)
    """))
    assert lines == ["samples True schedulers left 0", "fds leaked 0"]


def test_monitor_sample_after_thread_exits_with_live_coroutines():
    # The thread leaves a parked coroutine behind, so its scheduler is kept,
    # but the thread's own thread state is deleted as it exits: the sample
    # must not read it (it did: heap-use-after-free under ASan).
    lines = check_ok(run_snippet("""
        import sys, threading, interpose
        from interpose._core import _native, _sched; from interpose._diagnostics import _monitor

        gate = interpose.Event()

        def leaves_one_behind():
            interpose.spawn(gate.wait)
            interpose.sleep(0)  # it has parked

        t = threading.Thread(target=leaves_one_behind)
        t.start()
        t.join()
        [sched] = [s for s in _sched._schedulers.values()]
        for _ in range(3):
            switches, alive, handle, frame = _native.probe(sched.native, sched.incarnation)
            print(alive, frame)
        _monitor._Monitor(0.001, sys.stderr).sample(0.0)
        print("stale", _native.probe(sched.native, sched.incarnation + 2))
    """))
    assert lines == ["1 None"] * 3 + ["stale (0, 0, None, None)"]


def test_probe_of_destroyed_scheduler_reads_zeros():
    lines = check_ok(run_snippet("""
        import threading, interpose
        from interpose._core import _native
        got = []

        def worker():
            interpose.spawn(lambda: None).join()
            got.append(_native.sched_self())

        t = threading.Thread(target=worker)
        t.start()
        t.join()
        handle, incarnation = got[0]
        print(incarnation % 2, _native.probe(handle, incarnation))
        # The struct is reused by the next thread, under a new incarnation.
        t = threading.Thread(target=worker)
        t.start()
        t.join()
        print(got[1][0] == handle, got[1][1] == incarnation + 2)
    """))
    assert lines == ["1 (0, 0, None, None)", "True True"]


def test_new_thread_with_a_reused_ident_gets_a_scheduler_of_its_own():
    # Regression (the intermittent "schedulers left 1" above): the registry
    # is keyed by pthread_self(), which glibc hands the next thread as soon
    # as one exits.  A thread whose locals outlive it (here held on purpose;
    # in the wild, caught in a cycle until the collector runs) left its
    # entry behind, the next thread with its ident adopted that dead
    # scheduler and registered no reaper, and the late reaper, run on the
    # new thread, took it for its own: the entry was never removed.
    lines = check_ok(run_snippet("""
        import gc, os, threading, time, interpose
        from interpose._core import _native, _sched

        held = []

        def first():
            interpose.spawn(lambda: None).join()
            held.append((_sched._get_ident(), _sched._local.reaper))

        def second():
            sched = _sched._scheduler()
            print("own", sched is not held[0][1].sched,
                  (sched.native, sched.incarnation) == _native.sched_self())
            c = interpose.spawn(interpose.sleep, 0)
            held.clear()  # the late reaper runs here, a coroutine still live
            c.join()

        def gone(t):
            # join() returns before the OS thread has exited; glibc reuses
            # a stack (and so the ident) only after that.
            while os.path.exists(f"/proc/self/task/{t.native_id}"):
                time.sleep(0.001)

        for _ in range(50):  # until glibc reuses the exited thread's ident
            t = threading.Thread(target=first); t.start(); t.join(); gone(t)
            ident = held[0][0]
            t = threading.Thread(target=second); t.start(); t.join()
            if t.ident == ident:
                break
        gc.collect()
        print("ident reused", t.ident == ident, "left", len(_sched._schedulers))
    """))
    assert lines[-2:] == ["own True True", "ident reused True left 0"]
