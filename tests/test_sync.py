"""Cooperative Event, Lock, RLock, Semaphore, Condition and Queue: their
threading/queue semantics between coroutines of one scheduler, and wake-ups
that cross OS threads (a plain thread with no scheduler releasing a parked
coroutine, and a coroutine releasing a plain thread parked in a wait)."""
import queue
import threading
import time

import pytest

import interpose
from support.probes import wait_all_blocked, in_epoll_wait

pytestmark = pytest.mark.timeout(30)

SHORT = 0.05  # a timeout that must expire; asserted as a lower bound only
LONG_ENOUGH = 60  # a timeout that must not expire


def _run(fn, *args):
    return interpose.run(fn, *args)


def _elapsed_since(t0):
    return time.monotonic() - t0


# ---- Event -------------------------------------------------------------


def test_event_wait_wakes_every_waiter_in_fifo_order():
    def main():
        ev = interpose.Event()
        woken = []

        def waiter(i):
            assert ev.wait() is True
            woken.append(i)

        cs = [interpose.spawn(waiter, i) for i in range(5)]
        wait_all_blocked(cs)
        assert woken == []
        assert not any(c.done() for c in cs)
        ev.set()
        for c in cs:
            c.join()
        assert woken == [0, 1, 2, 3, 4]

    _run(main)


def test_event_wait_on_set_event_returns_true_without_parking():
    def main():
        ev = interpose.Event()
        ev.set()
        assert ev.is_set()
        before = interpose.statistics().parks
        assert ev.wait() is True
        assert ev.wait(0) is True
        assert interpose.statistics().parks == before

    _run(main)


def test_event_clear_makes_later_waits_block():
    def main():
        ev = interpose.Event()
        ev.set()
        ev.clear()
        assert not ev.is_set()
        assert ev.wait(0) is False

    _run(main)


def test_event_wait_timeout_returns_false_not_early():
    def main():
        ev = interpose.Event()
        t0 = time.monotonic()
        assert ev.wait(SHORT) is False
        assert _elapsed_since(t0) >= SHORT

    _run(main)


def test_event_wait_with_timeout_returns_true_when_set_in_time():
    def main():
        ev = interpose.Event()
        c = interpose.spawn(ev.wait, 60)
        wait_all_blocked([c])
        ev.set()
        assert c.join() is True

    _run(main)


def test_event_wait_timeout_in_several_coroutines_each_not_early():
    def main():
        ev = interpose.Event()

        def waiter(timeout):
            t0 = time.monotonic()
            result = ev.wait(timeout)
            return result, _elapsed_since(t0)

        timeouts = [0.08, 0.02, 0.05]
        cs = [interpose.spawn(waiter, t) for t in timeouts]
        for c, timeout in zip(cs, timeouts):
            result, elapsed = c.join()
            assert result is False
            assert elapsed >= timeout

    _run(main)


# ---- Lock --------------------------------------------------------------


def test_lock_waiters_acquire_in_fifo_order():
    def main():
        lock = interpose.Lock()
        order = []

        def worker(i):
            with lock:
                order.append(i)
                interpose.sleep(0)  # others stay out while it is held
                order.append(i)

        assert lock.acquire() is True
        cs = [interpose.spawn(worker, i) for i in range(4)]
        wait_all_blocked(cs)
        assert order == []
        lock.release()
        for c in cs:
            c.join()
        assert order == [0, 0, 1, 1, 2, 2, 3, 3]
        assert not lock.locked()

    _run(main)


def test_lock_acquire_nonblocking():
    def main():
        lock = interpose.Lock()
        assert lock.acquire(blocking=False) is True
        assert lock.locked()
        assert lock.acquire(blocking=False) is False
        assert lock.acquire(False) is False
        lock.release()
        assert not lock.locked()
        assert lock.acquire(blocking=False) is True
        lock.release()

    _run(main)


def test_lock_acquire_timeout_returns_false_not_early():
    def main():
        lock = interpose.Lock()
        lock.acquire()
        t0 = time.monotonic()
        assert lock.acquire(timeout=SHORT) is False
        assert _elapsed_since(t0) >= SHORT
        assert lock.locked()
        lock.release()

    _run(main)


def test_lock_acquire_timeout_in_other_coroutine_while_holder_parks():
    def main():
        lock = interpose.Lock()
        release = interpose.Event()

        def holder():
            with lock:
                release.wait()

        def contender():
            t0 = time.monotonic()
            got = lock.acquire(timeout=SHORT)
            return got, _elapsed_since(t0)

        h = interpose.spawn(holder)
        wait_all_blocked([h])
        got, elapsed = interpose.spawn(contender).join()
        assert got is False
        assert elapsed >= SHORT
        release.set()
        h.join()
        assert not lock.locked()

    _run(main)


def test_lock_acquire_with_timeout_succeeds_when_released_in_time():
    def main():
        lock = interpose.Lock()
        lock.acquire()
        c = interpose.spawn(lambda: lock.acquire(timeout=60))
        wait_all_blocked([c])
        lock.release()
        assert c.join() is True
        assert lock.locked()
        lock.release()

    _run(main)


def test_lock_release_unlocked_raises_runtimeerror():
    def main():
        lock = interpose.Lock()
        with pytest.raises(RuntimeError):
            lock.release()
        lock.acquire()
        lock.release()
        with pytest.raises(RuntimeError):
            lock.release()

    _run(main)


@pytest.mark.parametrize("kwargs", [
    {"blocking": False, "timeout": 1},
    {"timeout": -2},
])
def test_lock_acquire_bad_arguments_raise_valueerror(kwargs):
    def main():
        lock = interpose.Lock()
        with pytest.raises(ValueError):
            lock.acquire(**kwargs)
        assert not lock.locked()

    _run(main)


def test_lock_context_manager_releases_on_exception():
    def main():
        lock = interpose.Lock()
        with pytest.raises(KeyError):
            with lock:
                assert lock.locked()
                raise KeyError("x")
        assert not lock.locked()

    _run(main)


# ---- RLock -------------------------------------------------------------


def test_rlock_is_reentrant_and_excludes_other_coroutines():
    def main():
        rlock = interpose.RLock()
        events = []

        def other():
            events.append("try")
            with rlock:
                events.append("got")

        assert rlock.acquire()
        assert rlock.acquire()
        c = interpose.spawn(other)
        wait_all_blocked([c])
        assert events == ["try"]
        rlock.release()
        wait_all_blocked([c])
        assert events == ["try"]  # still held once
        rlock.release()
        c.join()
        assert events == ["try", "got"]

    _run(main)


def test_rlock_release_by_non_owner_raises_runtimeerror():
    def main():
        rlock = interpose.RLock()
        with pytest.raises(RuntimeError):
            rlock.release()
        rlock.acquire()

        def intruder():
            with pytest.raises(RuntimeError):
                rlock.release()
            return rlock.acquire(blocking=False)

        assert interpose.spawn(intruder).join() is False
        rlock.release()
        with pytest.raises(RuntimeError):
            rlock.release()

    _run(main)


def test_rlock_acquire_timeout_returns_false_not_early():
    def main():
        rlock = interpose.RLock()
        rlock.acquire()

        def contender():
            t0 = time.monotonic()
            return rlock.acquire(timeout=SHORT), _elapsed_since(t0)

        got, elapsed = interpose.spawn(contender).join()
        assert got is False
        assert elapsed >= SHORT
        rlock.release()

    _run(main)


# ---- Semaphore ---------------------------------------------------------


def test_semaphore_bounds_concurrency():
    def main():
        sem = interpose.Semaphore(2)
        inside = []
        peak = []

        def worker():
            with sem:
                inside.append(1)
                peak.append(len(inside))
                interpose.sleep(0)
                interpose.sleep(0)
                inside.pop()

        cs = [interpose.spawn(worker) for _ in range(6)]
        for c in cs:
            c.join()
        assert len(peak) == 6
        assert max(peak) == 2

    _run(main)


def test_semaphore_nonblocking_and_timeout():
    def main():
        sem = interpose.Semaphore(1)
        assert sem.acquire(blocking=False) is True
        assert sem.acquire(blocking=False) is False
        t0 = time.monotonic()
        assert sem.acquire(timeout=SHORT) is False
        assert _elapsed_since(t0) >= SHORT
        sem.release()
        assert sem.acquire(timeout=SHORT) is True

    _run(main)


def test_semaphore_release_n_wakes_n_waiters_in_order():
    def main():
        sem = interpose.Semaphore(0)
        got = []

        def waiter(i):
            sem.acquire()
            got.append(i)

        cs = [interpose.spawn(waiter, i) for i in range(4)]
        wait_all_blocked(cs)
        sem.release(2)
        wait_all_blocked(cs)
        assert got == [0, 1]
        sem.release(2)
        for c in cs:
            c.join()
        assert got == [0, 1, 2, 3]

    _run(main)


def test_semaphore_bad_arguments():
    with pytest.raises(ValueError):
        interpose.Semaphore(-1)

    def main():
        sem = interpose.Semaphore(0)
        with pytest.raises(ValueError):
            sem.release(0)
        with pytest.raises(ValueError):
            sem.acquire(blocking=False, timeout=1)

    _run(main)


# ---- Condition ---------------------------------------------------------


def test_condition_wait_notify_hands_over_state():
    def main():
        cond = interpose.Condition()
        items = []

        def consumer():
            with cond:
                while not items:
                    assert cond.wait() is True
                return items.pop()

        c = interpose.spawn(consumer)
        wait_all_blocked([c])
        with cond:
            items.append("x")
            cond.notify()
        assert c.join() == "x"

    _run(main)


@pytest.mark.parametrize("make_lock", [interpose.Lock, interpose.RLock],
                         ids=["Lock", "RLock"])
def test_condition_notify_n_wakes_exactly_n(make_lock):
    def main():
        cond = interpose.Condition(make_lock())
        woken = []

        def waiter(i):
            with cond:
                assert cond.wait() is True
                woken.append(i)

        cs = [interpose.spawn(waiter, i) for i in range(4)]
        wait_all_blocked(cs)
        with cond:
            cond.notify(2)
        wait_all_blocked(cs)
        assert woken == [0, 1]
        with cond:
            cond.notify()
        wait_all_blocked(cs)
        assert woken == [0, 1, 2]
        with cond:
            cond.notify_all()
        for c in cs:
            c.join()
        assert woken == [0, 1, 2, 3]

    _run(main)


def test_condition_notify_without_waiters_is_not_remembered():
    def main():
        cond = interpose.Condition()
        with cond:
            cond.notify()
            cond.notify_all()
            t0 = time.monotonic()
            assert cond.wait(SHORT) is False
            assert _elapsed_since(t0) >= SHORT

    _run(main)


@pytest.mark.parametrize("make_lock", [interpose.Lock, interpose.RLock],
                         ids=["Lock", "RLock"])
def test_condition_wait_timeout_returns_false_with_lock_reacquired(make_lock):
    def main():
        lock = make_lock()
        cond = interpose.Condition(lock)
        observed = []

        def observer():
            # Runs while the main coroutine is parked in wait(): the lock
            # must be free then.
            observed.append(lock.acquire(blocking=False))
            lock.release()

        with cond:
            c = interpose.spawn(observer)
            t0 = time.monotonic()
            assert cond.wait(SHORT) is False
            assert _elapsed_since(t0) >= SHORT
            # Back in the with block: the lock is ours again.
            assert interpose.spawn(lambda: lock.acquire(blocking=False)).join() is False
        c.join()
        assert observed == [True]
        assert lock.acquire(blocking=False) is True
        lock.release()

    _run(main)


def test_condition_wait_releases_recursive_rlock_fully_and_restores_it():
    def main():
        rlock = interpose.RLock()
        cond = interpose.Condition(rlock)

        def notifier():
            with cond:  # possible only if wait() released both levels
                cond.notify()
            return "notified"

        with cond:
            with cond:
                n = interpose.spawn(notifier)
                assert cond.wait(LONG_ENOUGH) is True
                assert n.join() == "notified"
            # One level released: still owned, another coroutine cannot enter.
            assert interpose.spawn(lambda: rlock.acquire(blocking=False)).join() is False
        assert interpose.spawn(lambda: rlock.acquire(blocking=False)).join() is True

    _run(main)


def test_condition_wait_for_returns_when_predicate_true():
    def main():
        cond = interpose.Condition()
        state = {"n": 0}

        def consumer():
            with cond:
                return cond.wait_for(lambda: state["n"] >= 3)

        c = interpose.spawn(consumer)
        for _ in range(3):
            wait_all_blocked([c])
            assert not c.done()
            with cond:
                state["n"] += 1
                cond.notify_all()
        assert c.join() is True

    _run(main)


def test_condition_wait_for_timeout_returns_predicate_value_not_early():
    def main():
        cond = interpose.Condition()
        calls = []

        def predicate():
            calls.append(1)
            return 0  # falsy, not False: wait_for returns its last value

        with cond:
            t0 = time.monotonic()
            assert cond.wait_for(predicate, timeout=SHORT) == 0
            assert _elapsed_since(t0) >= SHORT
        assert len(calls) >= 2

    _run(main)


def test_condition_wait_for_true_predicate_does_not_wait():
    def main():
        cond = interpose.Condition()
        with cond:
            before = interpose.statistics().parks
            assert cond.wait_for(lambda: "yes", timeout=60) == "yes"
            assert interpose.statistics().parks == before

    _run(main)


def test_condition_wait_and_notify_need_the_lock():
    def main():
        cond = interpose.Condition()
        with pytest.raises(RuntimeError):
            cond.wait(0)
        with pytest.raises(RuntimeError):
            cond.notify()
        with pytest.raises(RuntimeError):
            cond.notify_all()

    _run(main)


# ---- Queue -------------------------------------------------------------


def test_queue_is_fifo_and_get_blocks_until_put():
    def main():
        q = interpose.Queue()

        def consumer():
            return [q.get() for _ in range(3)]

        c = interpose.spawn(consumer)
        wait_all_blocked([c])
        assert not c.done()
        for item in ("a", "b", "c"):
            q.put(item)
        assert c.join() == ["a", "b", "c"]
        assert q.empty()
        assert q.qsize() == 0

    _run(main)


def test_queue_get_timeout_raises_empty_not_early():
    def main():
        q = interpose.Queue()
        t0 = time.monotonic()
        with pytest.raises(queue.Empty):
            q.get(timeout=SHORT)
        assert _elapsed_since(t0) >= SHORT

    _run(main)


def test_queue_put_timeout_on_full_raises_full_not_early():
    def main():
        q = interpose.Queue(maxsize=1)
        q.put(1)
        assert q.full()
        t0 = time.monotonic()
        with pytest.raises(queue.Full):
            q.put(2, timeout=SHORT)
        assert _elapsed_since(t0) >= SHORT
        assert q.qsize() == 1
        assert q.get_nowait() == 1

    _run(main)


def test_queue_nowait_variants():
    def main():
        q = interpose.Queue(maxsize=2)
        with pytest.raises(queue.Empty):
            q.get_nowait()
        with pytest.raises(queue.Empty):
            q.get(block=False)
        q.put_nowait(1)
        q.put(2, block=False)
        with pytest.raises(queue.Full):
            q.put_nowait(3)
        with pytest.raises(queue.Full):
            q.put(3, False)
        assert q.get_nowait() == 1
        assert q.get(False) == 2

    _run(main)


def test_queue_bounded_put_blocks_until_get():
    def main():
        q = interpose.Queue(maxsize=2)
        produced = []

        def producer():
            for i in range(5):
                q.put(i)
                produced.append(i)

        p = interpose.spawn(producer)
        wait_all_blocked([p])
        assert produced == [0, 1]
        assert q.full()
        got = []
        while len(got) < 5:
            got.append(q.get())
        p.join()
        assert got == [0, 1, 2, 3, 4]

    _run(main)


def test_queue_several_consumers_each_get_distinct_items():
    def main():
        q = interpose.Queue()

        def consumer():
            return q.get()

        cs = [interpose.spawn(consumer) for _ in range(4)]
        wait_all_blocked(cs)
        for i in range(4):
            q.put(i)
        assert [c.join() for c in cs] == [0, 1, 2, 3]

    _run(main)


def test_queue_join_waits_for_every_task_done():
    def main():
        q = interpose.Queue()
        done = []

        def worker():
            while True:
                item = q.get()
                if item is None:
                    q.task_done()
                    return
                interpose.sleep(0)
                done.append(item)
                q.task_done()

        for i in range(5):
            q.put(i)
        q.put(None)
        w = interpose.spawn(worker)
        joiner = interpose.spawn(q.join)
        q.join()  # parks the main coroutine until the worker is through
        assert done == [0, 1, 2, 3, 4]
        joiner.join()
        w.join()

    _run(main)


def test_queue_join_blocks_while_a_task_is_unfinished():
    def main():
        q = interpose.Queue()
        q.put("job")
        assert q.get() == "job"
        joiner = interpose.spawn(q.join)
        wait_all_blocked([joiner])
        assert not joiner.done()
        q.task_done()
        joiner.join()

    _run(main)


def test_queue_join_on_empty_queue_returns_at_once():
    def main():
        interpose.Queue().join()

    _run(main)


def test_queue_task_done_too_often_raises_valueerror():
    def main():
        q = interpose.Queue()
        with pytest.raises(ValueError):
            q.task_done()
        q.put(1)
        q.get()
        q.task_done()
        with pytest.raises(ValueError):
            q.task_done()

    _run(main)


@pytest.mark.parametrize("call", ["get", "put"])
@pytest.mark.parametrize("timeout", [-1, -0.5])
def test_queue_negative_timeout_raises_valueerror(call, timeout):
    """queue.Queue raises ValueError for any negative timeout; -1 is not
    "forever" as it is for Lock.acquire.  The deadline turns a wait that
    blocks instead into a failure rather than a hang."""
    def main():
        q = interpose.Queue(maxsize=1)
        if call == "put":
            q.put("fill")
        with interpose.deadline(1):
            with pytest.raises(ValueError):
                if call == "get":
                    q.get(timeout=timeout)
                else:
                    q.put("more", timeout=timeout)

    _run(main)


@pytest.mark.parametrize("timeout", [-1, -2])
def test_semaphore_negative_timeout_does_not_block(timeout):
    """threading.Semaphore(0).acquire(timeout=-1) returns False at once.
    Acceptable here: False or ValueError.  Unacceptable: blocking."""
    def main():
        sem = interpose.Semaphore(0)
        with interpose.deadline(1):
            try:
                result = sem.acquire(timeout=timeout)
            except ValueError:
                result = False
        assert result is False

    _run(main)


# ---- across OS threads -------------------------------------------------



def _wait_in_epoll(native_id, limit=20.0):
    """Poll (from another OS thread) until native_id sleeps in epoll_wait."""
    end = time.monotonic() + limit
    while not in_epoll_wait(native_id):
        if time.monotonic() > end:
            raise AssertionError(f"thread {native_id} never blocked in epoll_wait")
        time.sleep(0.001)


def _plain_thread(fn):
    """Start a plain threading.Thread (no scheduler) running fn; errors are
    kept and re-raised by the returned join function."""
    errors = []

    def body():
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=body, daemon=True)
    t.start()

    def join():
        t.join(20)
        assert not t.is_alive(), "helper thread hung"
        if errors:
            raise errors[0]

    return join


def _primitive_for(kind):
    """(waiter run in a coroutine, release run in a plain thread)."""
    if kind == "event":
        ev = interpose.Event()
        return ev.wait, ev.set
    if kind == "queue":
        q = interpose.Queue()
        return q.get, lambda: q.put(True)
    if kind == "lock":
        lock = interpose.Lock()
        assert lock.acquire()  # held by the main coroutine
        return lock.acquire, lock.release
    if kind == "semaphore":
        sem = interpose.Semaphore(0)
        return sem.acquire, sem.release
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["event", "queue", "lock", "semaphore"])
def test_release_from_plain_thread_wakes_parked_coroutine(kind):
    """An Event/Queue/Lock released from another OS thread wakes a parked
    coroutine.  The plain thread acts only once the coroutine has parked
    and the main OS thread sleeps in epoll_wait, so the wake must come
    through the scheduler's cross-thread channel."""
    main_tid = threading.get_native_id()

    def main():
        wait, release = _primitive_for(kind)
        c = interpose.spawn(wait)
        wait_all_blocked([c])
        assert not c.done()

        def from_thread():
            _wait_in_epoll(main_tid)
            assert not c.done()
            release()

        join_thread = _plain_thread(from_thread)
        assert c.join() is True
        join_thread()

    _run(main)


@pytest.mark.parametrize("kind", ["event", "queue"])
def test_release_from_plain_thread_wakes_parked_main_coroutine(kind):
    main_tid = threading.get_native_id()

    def main():
        wait, release = _primitive_for(kind)

        def from_thread():
            _wait_in_epoll(main_tid)
            release()

        join_thread = _plain_thread(from_thread)
        assert wait() is True
        join_thread()

    _run(main)


def test_event_set_from_plain_thread_wakes_many_coroutines():
    main_tid = threading.get_native_id()

    def main():
        ev = interpose.Event()
        cs = [interpose.spawn(ev.wait, 60) for _ in range(20)]
        wait_all_blocked(cs)

        def from_thread():
            _wait_in_epoll(main_tid)
            ev.set()

        join_thread = _plain_thread(from_thread)
        assert [c.join() for c in cs] == [True] * 20
        join_thread()

    _run(main)


def test_queue_items_from_plain_thread_arrive_in_order():
    def main():
        q = interpose.Queue(maxsize=3)
        n = 200

        def producer():
            for i in range(n):
                q.put(i)

        join_thread = _plain_thread(producer)
        assert [q.get() for _ in range(n)] == list(range(n))
        join_thread()

    _run(main)


@pytest.mark.parametrize("kind", ["event", "queue"])
def test_coroutine_release_wakes_plain_thread_blocked_in_wait(kind):
    """A plain thread's first interpose call is the wait: it lazily gets a
    scheduler of its own and parks there; a coroutine on the main thread
    releases it."""
    if kind == "event":
        ev = interpose.Event()
        wait, release = ev.wait, ev.set
    else:
        q = interpose.Queue()
        wait, release = q.get, lambda: q.put(True)
    result = {}

    def blocked():
        result["tid"] = threading.get_native_id()
        result["before"] = interpose.statistics()
        result["value"] = wait()
        result["after"] = interpose.statistics()

    started = time.monotonic()
    join_thread = None

    def main():
        nonlocal join_thread
        join_thread = _plain_thread(blocked)
        while "tid" not in result:
            interpose.sleep(0.001)
            assert time.monotonic() - started < 20, "thread never started"
        tid = result["tid"]
        while not in_epoll_wait(tid):
            interpose.sleep(0.001)
            assert time.monotonic() - started < 20, "thread never parked"

        def setter():
            release()

        interpose.spawn(setter).join()

    _run(main)
    join_thread()
    assert result["value"] is True
    # All zero before: the thread had no scheduler until it waited.
    assert result["before"] == interpose.Statistics()
    assert result["after"].parks >= 1


def test_lock_contended_by_plain_thread_and_coroutines():
    """Mutual exclusion holds while a plain thread and coroutines share a
    lock (the thread gets a scheduler lazily when it has to wait)."""
    def main():
        lock = interpose.Lock()
        counter = {"n": 0, "inside": 0, "overlap": 0}

        def critical():
            counter["inside"] += 1
            if counter["inside"] != 1:
                counter["overlap"] += 1
            v = counter["n"]
            time.sleep(0)  # a real GIL switch point for the plain thread
            counter["n"] = v + 1
            counter["inside"] -= 1

        def thread_side():
            for _ in range(200):
                with lock:
                    critical()

        def coroutine_side():
            for _ in range(100):
                with lock:
                    critical()
                interpose.sleep(0)

        join_thread = _plain_thread(thread_side)
        cs = [interpose.spawn(coroutine_side) for _ in range(2)]
        for c in cs:
            c.join()
        join_thread()
        assert counter["overlap"] == 0
        assert counter["n"] == 400

    _run(main)
