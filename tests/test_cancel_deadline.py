"""cancel() and deadline(): a cancelled coroutine's current and later waits
raise interpose.Cancelled (ECANCELED) and join() raises it too; a deadline
makes every wait past it raise TimeoutError, nested deadlines keep the
earliest and leaving the block restores the previous one.  Covers
coroutines parked in sleep, Event.wait, Lock.acquire and wait_readable."""
import contextlib
import errno
import os
import socket
import threading
import time

import pytest

import interpose
from support.probes import wait_all_blocked, in_epoll_wait


@contextlib.contextmanager
def _socketpair():
    """A connected socket pair, closed when the block ends."""
    a, b = socket.socketpair()
    try:
        yield a, b
    finally:
        a.close()
        b.close()


pytestmark = pytest.mark.timeout(30)

SHORT = 0.05  # a deadline that must expire; asserted as a lower bound only
LONG = 60  # a wait that must be cut short; longer than the test timeout


def _elapsed_since(t0):
    return time.monotonic() - t0


def _assert_cancelled(exc):
    assert isinstance(exc, interpose.Cancelled)
    assert isinstance(exc, OSError)
    assert exc.errno == errno.ECANCELED


# ---- cancel ------------------------------------------------------------


def _parked_in(kind, resources):
    """A zero-argument function that parks in the named wait."""
    if kind == "sleep":
        return lambda: interpose.sleep(LONG)
    if kind == "event":
        return interpose.Event().wait
    if kind == "lock":
        lock = interpose.Lock()
        lock.acquire()
        return lock.acquire
    if kind == "semaphore":
        return interpose.Semaphore(0).acquire
    if kind == "queue":
        return interpose.Queue().get
    if kind == "condition":
        cond = interpose.Condition()

        def wait():
            with cond:
                cond.wait()
        return wait
    if kind == "join":
        other = interpose.spawn(interpose.sleep, LONG)
        resources.append(other)
        return other.join
    if kind == "wait_readable":
        a, b = socket.socketpair()
        resources.extend([a, b])
        return lambda: interpose.wait_readable(a)
    if kind == "wait_writable":
        a, b = socket.socketpair()
        resources.extend([a, b])
        a.setblocking(False)
        try:
            while True:
                a.send(b"x" * 65536)
        except BlockingIOError:
            pass
        return lambda: interpose.wait_writable(a)
    raise AssertionError(kind)


WAITS = ["sleep", "event", "lock", "semaphore", "queue", "condition", "join",
         "wait_readable", "wait_writable"]


def _close_all(resources):
    for r in resources:
        if isinstance(r, socket.socket):
            r.close()


@pytest.mark.parametrize("kind", WAITS)
def test_cancel_parked_coroutine_raises_cancelled_in_wait_and_join(kind):
    resources = []

    def main():
        wait = _parked_in(kind, resources)
        seen = []

        def body():
            try:
                wait()
            except BaseException as exc:
                seen.append(exc)
                raise
            seen.append("returned")

        c = interpose.spawn(body)
        wait_all_blocked([c])
        assert not c.done()
        assert c.cancel() is True
        with pytest.raises(interpose.Cancelled) as info:
            c.join()
        _assert_cancelled(info.value)
        assert c.done()
        assert len(seen) == 1
        _assert_cancelled(seen[0])

    try:
        interpose.run(main)
    finally:
        _close_all(resources)


def test_cancel_makes_later_waits_raise_cancelled_too():
    def main():
        log = []

        def body():
            try:
                interpose.sleep(LONG)
            finally:
                for wait in (lambda: interpose.sleep(0),
                             lambda: interpose.sleep(LONG),
                             lambda: interpose.Event().wait(LONG),
                             lambda: interpose.Queue().get(timeout=LONG)):
                    try:
                        wait()
                    except interpose.Cancelled:
                        log.append("cancelled")
                    else:
                        log.append("returned")

        c = interpose.spawn(body)
        wait_all_blocked([c])
        c.cancel()
        with pytest.raises(interpose.Cancelled):
            c.join()
        assert log == ["cancelled"] * 4

    interpose.run(main)


def test_cancel_sleep_in_finally_raises_cancelled():
    def main():
        outcome = []

        def body():
            try:
                interpose.Event().wait()
            finally:
                try:
                    interpose.sleep(0.01)
                except interpose.Cancelled as exc:
                    outcome.append(exc)

        c = interpose.spawn(body)
        wait_all_blocked([c])
        c.cancel()
        with pytest.raises(interpose.Cancelled):
            c.join()
        assert len(outcome) == 1
        _assert_cancelled(outcome[0])

    interpose.run(main)


def test_cancel_before_start_body_never_runs():
    def main():
        ran = []
        c = interpose.spawn(ran.append, 1)
        assert c.cancel() is True
        with pytest.raises(interpose.Cancelled) as info:
            c.join()
        _assert_cancelled(info.value)
        assert ran == []
        assert c.done()

    interpose.run(main)


def test_cancel_finished_coroutine_returns_false():
    def main():
        c = interpose.spawn(lambda: 42)
        assert c.join() == 42
        assert c.cancel() is False
        assert c.join() == 42  # the result is unchanged

    interpose.run(main)


def test_cancel_failed_coroutine_returns_false_and_keeps_exception():
    def main():
        def boom():
            raise KeyError("k")

        c = interpose.spawn(boom)
        with pytest.raises(KeyError):
            c.join()
        assert c.cancel() is False
        with pytest.raises(KeyError):
            c.join()

    interpose.run(main)


def test_cancel_twice_is_harmless():
    def main():
        c = interpose.spawn(interpose.sleep, LONG)
        wait_all_blocked([c])
        assert c.cancel() is True
        c.cancel()
        with pytest.raises(interpose.Cancelled):
            c.join()
        assert c.cancel() is False

    interpose.run(main)


def test_cancel_one_coroutine_leaves_others_running():
    def main():
        ev = interpose.Event()
        victim = interpose.spawn(ev.wait)
        survivor = interpose.spawn(ev.wait)
        wait_all_blocked([victim, survivor])
        victim.cancel()
        with pytest.raises(interpose.Cancelled):
            victim.join()
        assert not survivor.done()
        ev.set()
        assert survivor.join() is True

    interpose.run(main)


def test_cancel_after_wake_before_resume_raises_at_next_wait():
    """Cancelled after it was woken but before it ran again: the wait that
    was already satisfied completes, the next one raises Cancelled."""
    def main():
        ev = interpose.Event()
        log = []

        def body():
            log.append(ev.wait())
            interpose.sleep(0)
            log.append("not reached")

        c = interpose.spawn(body)
        wait_all_blocked([c])
        ev.set()  # body is runnable now, but has not run yet
        assert c.cancel() is True
        with pytest.raises(interpose.Cancelled):
            c.join()
        assert log == [True]

    interpose.run(main)


def _probe_free(lock):
    """From another coroutine: could it take the lock right now?"""
    def probe():
        got = lock.acquire(blocking=False)
        if got:
            lock.release()
        return got
    return interpose.spawn(probe).join()


@pytest.mark.parametrize("make_lock", [interpose.Lock, interpose.RLock],
                         ids=["Lock", "RLock"])
@pytest.mark.parametrize("how", ["cancel", "deadline"])
def test_condition_wait_interrupted_reacquires_lock_before_raising(how, make_lock):
    """Acceptable: the interrupted Condition.wait waits until it owns the
    lock again (as threading.Condition.wait always returns with the lock
    held), then the waiter's with-block releases it and Cancelled or
    TimeoutError reaches join().  Unacceptable: the waiter's with-block
    releasing a lock another coroutine holds, or RuntimeError instead of
    the interruption."""
    def main():
        lock = make_lock()
        cond = interpose.Condition(lock)

        def waiter():
            if how == "deadline":
                with interpose.deadline(SHORT):
                    with cond:
                        cond.wait()
            else:
                with cond:
                    cond.wait()

        w = interpose.spawn(waiter)
        wait_all_blocked([w])
        assert lock.acquire()  # the main coroutine takes the lock
        if how == "cancel":
            w.cancel()
        else:
            interpose.sleep(2 * SHORT)  # the waiter's deadline passes
        wait_all_blocked([w])
        assert _probe_free(lock) is False, "the waiter released a lock it did not hold"
        lock.release()
        expected = interpose.Cancelled if how == "cancel" else TimeoutError
        with pytest.raises(expected):
            w.join()
        assert _probe_free(lock) is True

    interpose.run(main)




@pytest.mark.parametrize("kind", ["sleep", "event", "wait_readable"])
def test_cancel_from_another_os_thread(kind):
    main_tid = threading.get_native_id()
    resources = []
    errors = []

    def main():
        wait = _parked_in(kind, resources)
        c = interpose.spawn(wait)
        wait_all_blocked([c])

        def canceller():
            try:
                end = time.monotonic() + 20
                while not in_epoll_wait(main_tid):
                    assert time.monotonic() < end, "main thread never parked"
                    time.sleep(0.001)
                assert c.cancel() is True
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=canceller, daemon=True)
        t.start()
        with pytest.raises(interpose.Cancelled):
            c.join()
        t.join(20)
        assert not t.is_alive()

    try:
        interpose.run(main)
    finally:
        _close_all(resources)
    assert errors == []


def test_cancel_cancelled_exception_has_ecanceled_errno():
    exc = interpose.Cancelled()
    _assert_cancelled(exc)


# ---- deadline ----------------------------------------------------------


def _deadline_wait(kind, resources):
    if kind == "sleep":
        return lambda: interpose.sleep(10)
    if kind == "event":
        return interpose.Event().wait
    if kind == "event_timeout":
        return lambda: interpose.Event().wait(LONG)
    if kind == "lock":
        lock = interpose.Lock()
        lock.acquire()
        return lock.acquire
    if kind == "queue":
        return interpose.Queue().get
    if kind == "join":
        other = interpose.spawn(interpose.sleep, LONG)
        resources.append(other)
        return other.join
    if kind == "wait_readable":
        a, b = socket.socketpair()
        resources.extend([a, b])
        return lambda: interpose.wait_readable(a)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["sleep", "event", "event_timeout", "lock",
                                  "queue", "join", "wait_readable"])
def test_deadline_makes_wait_raise_timeouterror_not_early(kind):
    resources = []

    def main():
        wait = _deadline_wait(kind, resources)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError) as info:
            with interpose.deadline(SHORT):
                wait()
        assert _elapsed_since(t0) >= SHORT
        assert info.value.errno == errno.ETIMEDOUT

    try:
        interpose.run(main)
    finally:
        _close_all(resources)


def test_deadline_in_spawned_coroutine_is_its_own():
    def main():
        def limited():
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                with interpose.deadline(SHORT):
                    interpose.sleep(10)
            return _elapsed_since(t0)

        ev = interpose.Event()
        unlimited = interpose.spawn(ev.wait)
        assert interpose.spawn(limited).join() >= SHORT
        # The other coroutine and the main one are not affected.
        assert not unlimited.done()
        interpose.sleep(SHORT)
        ev.set()
        assert unlimited.join() is True

    interpose.run(main)


def test_deadline_not_reached_lets_waits_complete():
    def main():
        with interpose.deadline(LONG) as dl:
            interpose.sleep(0.01)
            assert interpose.Event().wait(0.01) is False
        assert dl.deadline_ns is not None

    interpose.run(main)


def test_deadline_wait_timeout_shorter_than_deadline_returns_false():
    def main():
        with _socketpair() as (a, b):
            with interpose.deadline(LONG):
                assert interpose.wait_readable(a, timeout=SHORT) is False
                assert interpose.Event().wait(SHORT) is False
                assert interpose.Lock().acquire(timeout=SHORT) is True

    interpose.run(main)


def test_deadline_nested_inner_later_keeps_outer_earliest():
    def main():
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            with interpose.deadline(SHORT) as outer:
                with interpose.deadline(LONG) as inner:
                    assert inner.deadline_ns == outer.deadline_ns
                    interpose.sleep(LONG)
        assert _elapsed_since(t0) >= SHORT

    interpose.run(main)


def test_deadline_nested_inner_earlier_wins_and_exit_restores_outer():
    def main():
        with interpose.deadline(LONG) as outer:
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                with interpose.deadline(SHORT) as inner:
                    assert inner.deadline_ns < outer.deadline_ns
                    interpose.sleep(LONG)
            assert _elapsed_since(t0) >= SHORT
            # The inner deadline is gone, the outer one is far away.
            interpose.sleep(SHORT)
            assert interpose.Event().wait(0.01) is False

    interpose.run(main)


def test_deadline_exit_restores_outer_deadline():
    def main():
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            with interpose.deadline(0.2):
                with interpose.deadline(LONG):
                    pass
                # Still bounded by the outer deadline.
                interpose.sleep(LONG)
        assert _elapsed_since(t0) >= 0.2

    interpose.run(main)


def test_deadline_exit_restores_no_deadline_after_timeout():
    def main():
        with pytest.raises(TimeoutError):
            with interpose.deadline(SHORT):
                interpose.sleep(10)
        # Past the old deadline now: waits must work again.
        t0 = time.monotonic()
        interpose.sleep(2 * SHORT)
        assert _elapsed_since(t0) >= 2 * SHORT
        assert interpose.Event().wait(SHORT) is False

    interpose.run(main)


def test_deadline_exit_restores_no_deadline_without_timeout():
    def main():
        with interpose.deadline(SHORT):
            pass
        interpose.sleep(2 * SHORT)  # past the deadline that was left

    interpose.run(main)


def test_deadline_expired_then_caught_inside_block_keeps_raising():
    def main():
        with interpose.deadline(SHORT):
            with pytest.raises(TimeoutError):
                interpose.sleep(10)
            # Still inside the block: every further wait fails at once.
            with pytest.raises(TimeoutError):
                interpose.sleep(0)
            with pytest.raises(TimeoutError):
                interpose.Event().wait(LONG)
        interpose.sleep(0)

    interpose.run(main)


@pytest.mark.parametrize("seconds", [0, -1])
def test_deadline_zero_or_negative_fails_first_wait(seconds):
    def main():
        with pytest.raises(TimeoutError):
            with interpose.deadline(seconds):
                interpose.sleep(0)

    interpose.run(main)


def test_deadline_bad_arguments():
    with pytest.raises(TypeError):
        interpose.deadline("1")
    with pytest.raises(TypeError):
        interpose.deadline(True)
    with pytest.raises(ValueError):
        interpose.deadline(float("nan"))


def test_deadline_and_cancel_cancel_wins_when_first():
    def main():
        def body():
            with interpose.deadline(LONG):
                interpose.sleep(LONG)

        c = interpose.spawn(body)
        wait_all_blocked([c])
        c.cancel()
        with pytest.raises(interpose.Cancelled):
            c.join()

    interpose.run(main)


# ---- wait_readable / wait_writable -------------------------------------


def test_wait_readable_timeout_returns_false_not_early():
    def main():
        with _socketpair() as (a, b):
            t0 = time.monotonic()
            assert interpose.wait_readable(a, timeout=SHORT) is False
            assert _elapsed_since(t0) >= SHORT
            t0 = time.monotonic()
            assert interpose.wait_readable(a.fileno(), timeout=SHORT) is False
            assert _elapsed_since(t0) >= SHORT

    interpose.run(main)


def test_wait_readable_timeout_zero_polls():
    def main():
        with _socketpair() as (a, b):
            assert interpose.wait_readable(a, timeout=0) is False
            b.send(b"x")
            assert interpose.wait_readable(a, timeout=0) is True

    interpose.run(main)


def test_wait_readable_returns_true_when_data_arrives_from_another_coroutine():
    def main():
        with _socketpair() as (a, b):
            def reader():
                assert interpose.wait_readable(a) is True
                return a.recv(16)

            r = interpose.spawn(reader)
            wait_all_blocked([r])
            assert not r.done()

            def writer():
                b.send(b"hello")

            interpose.spawn(writer).join()
            assert r.join() == b"hello"

    interpose.run(main)


def test_wait_readable_wakes_on_peer_close():
    def main():
        with _socketpair() as (a, b):
            r = interpose.spawn(interpose.wait_readable, a)
            wait_all_blocked([r])
            b.close()
            assert r.join() is True
            assert a.recv(1) == b""

    interpose.run(main)


def test_wait_readable_several_waiters_on_one_fd_all_wake():
    def main():
        with _socketpair() as (a, b):
            cs = [interpose.spawn(interpose.wait_readable, a, 60) for _ in range(3)]
            wait_all_blocked(cs)
            b.send(b"x")
            assert [c.join() for c in cs] == [True, True, True]

    interpose.run(main)


def test_wait_writable_ready_socket_returns_true():
    def main():
        with _socketpair() as (a, b):
            assert interpose.wait_writable(a) is True
            assert interpose.wait_writable(a, timeout=0) is True

    interpose.run(main)


def test_wait_writable_wakes_when_peer_drains():
    def main():
        with _socketpair() as (a, b):
            sent = _fill_send_buffer(a)
            w = interpose.spawn(interpose.wait_writable, a)
            wait_all_blocked([w])
            assert not w.done()
            b.setblocking(False)
            received = 0
            while received < sent:
                try:
                    received += len(b.recv(1 << 20))
                except BlockingIOError:
                    break
            assert w.join() is True

    interpose.run(main)


def _fill_send_buffer(sock):
    sock.setblocking(False)
    sent = 0
    try:
        while True:
            sent += sock.send(b"x" * 65536)
    except BlockingIOError:
        pass
    return sent


def test_wait_readable_and_writable_on_same_fd_wake_separately():
    """One coroutine waits to read and one to write on the same socket:
    data arriving wakes only the reader, draining the peer wakes the
    writer."""
    def main():
        with _socketpair() as (a, b):
            sent = _fill_send_buffer(a)
            r = interpose.spawn(interpose.wait_readable, a)
            w = interpose.spawn(interpose.wait_writable, a)
            wait_all_blocked([r, w])
            assert not r.done() and not w.done()
            b.send(b"ping")
            assert r.join() is True
            wait_all_blocked([w])
            assert not w.done()
            b.setblocking(False)
            received = 0
            while received < sent:
                try:
                    received += len(b.recv(1 << 20))
                except BlockingIOError:
                    break
            assert w.join() is True
            assert a.recv(16) == b"ping"

    interpose.run(main)


def test_wait_readable_after_cancelled_wait_on_same_fd_still_works():
    def main():
        with _socketpair() as (a, b):
            first = interpose.spawn(interpose.wait_readable, a)
            wait_all_blocked([first])
            first.cancel()
            with pytest.raises(interpose.Cancelled):
                first.join()
            second = interpose.spawn(interpose.wait_readable, a)
            wait_all_blocked([second])
            assert not second.done()
            b.send(b"x")
            assert second.join() is True

    interpose.run(main)


def test_wait_readable_closed_fd_raises_ebadf():
    def main():
        a, b = socket.socketpair()
        fd = a.detach()
        b.close()
        os.close(fd)
        with pytest.raises(OSError) as info:
            interpose.wait_readable(fd)
        assert info.value.errno == errno.EBADF
        with pytest.raises(OSError) as info:
            interpose.wait_writable(fd, timeout=SHORT)
        assert info.value.errno == errno.EBADF

    interpose.run(main)


def test_wait_readable_bad_arguments():
    def main():
        with pytest.raises(ValueError):
            interpose.wait_readable(-1)
        with pytest.raises(TypeError):
            interpose.wait_readable("not an fd")

    interpose.run(main)


def test_wait_readable_regular_file_is_ready(tmp_path):
    def main():
        path = tmp_path / "f"
        path.write_bytes(b"")
        with open(path, "rb") as f:
            assert interpose.wait_readable(f) is True

    interpose.run(main)
