"""Cooperative synchronisation: Event, Lock, RLock, Semaphore, Condition and
Queue.  Waiting parks only the calling coroutine; setting, releasing and
putting work from any coroutine or OS thread, including threads that never
run a scheduler of their own."""
import _thread
import collections
import queue as _queue

from .._core import _compat, _sched
from .._core._sched import WaitQueue
from .._core._time import deadline_ns, ns_to_seconds, remaining_ns


# Each primitive takes (blocking, timeout) exactly as its standard twin
# does, with the same errors for the same values; these return the
# deadline (None = forever, 0 = do not wait).
#
# Edge values (issue #13), decided per call by what CPython 3.11 does:
#  - Lock.acquire converts any timeout but -1 to a C timestamp first, so NaN
#    raises ValueError and infinity (or more than threading.TIMEOUT_MAX)
#    raises OverflowError even for a free lock; _check_lock_timeout lets a
#    fresh _thread lock do that conversion, so messages match each version.
#  - Condition.wait and Event.wait wait only for a timeout > 0 (so NaN does
#    not wait) and convert it like Lock.acquire (so infinity raises
#    OverflowError, but only when they would wait).  From 3.14 they skip
#    the wait only for a timeout <= 0, so NaN waits, that is, raises
#    ValueError like Lock.acquire (_compat.NAN_TIMEOUT_WAITS).
#  - Semaphore.acquire, Queue.get/put and Condition.wait_for recompute the
#    time left and call Condition.wait again, so for NaN CPython 3.11-3.13
#    spins for ever, and for infinity raises OverflowError once it must
#    wait.  NaN here does not wait at all on those versions (a timeout that
#    has passed): a busy loop is no behaviour to copy.  From 3.14 their
#    first Condition.wait(nan) raises ValueError, and so do they.

def _check_lock_timeout(timeout):
    """Raises what _thread.lock.acquire raises for this timeout, if anything;
    the fast path never allocates."""
    if not 0 <= timeout <= _thread.TIMEOUT_MAX:  # also true for NaN
        probe = _thread.allocate_lock()  # free: acquire returns at once
        if probe.acquire(True, timeout):
            probe.release()


def _wait_deadline(timeout):
    """Condition.wait's rule: None is forever; up to 3.13 only timeout > 0
    waits, from 3.14 everything but timeout <= 0 (NaN too) does."""
    if timeout is None:
        return None
    if _compat.NAN_TIMEOUT_WAITS:
        if timeout <= 0:
            return 0
    elif not timeout > 0:  # NaN included
        return 0
    _check_lock_timeout(timeout)
    return deadline_ns(timeout)


def _lock_timeout(blocking, timeout):
    """threading.Lock: -1 is forever, other negatives are errors."""
    if timeout != -1:
        _check_lock_timeout(timeout)
    if not blocking:
        if timeout != -1:
            raise ValueError("can't specify a timeout for a non-blocking call")
        return 0
    return deadline_ns(None if timeout == -1 else timeout)


def _semaphore_timeout(blocking, timeout):
    """threading.Semaphore: None is forever; a negative timeout tries once."""
    if not blocking:
        if timeout is not None:
            raise ValueError("can't specify timeout for non-blocking acquire")
        return 0
    return _wait_deadline(timeout)


_UNSET = object()


def _queue_timeout_valid(block, timeout):
    """queue.Queue refuses a negative timeout before anything else."""
    if block and timeout is not None and timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")


def _queue_timeout(block, timeout):
    """queue.Queue: None is forever, and the timeout is ignored when block
    is false."""
    return _wait_deadline(timeout) if block else 0


class Event:
    """threading.Event, cooperatively."""

    def __init__(self):
        self._guard = _thread.allocate_lock()
        self._flag = False
        self._waiters = WaitQueue()

    def is_set(self):
        return self._flag

    def set(self):
        with self._guard:
            self._flag = True
            self._waiters.wake_all()

    def clear(self):
        with self._guard:
            self._flag = False

    def wait(self, timeout=None):
        """Return True once the flag is set, False if timeout passes."""
        if self._flag:
            return True
        deadline = _wait_deadline(timeout)
        with self._guard:
            while not self._flag:
                if not self._waiters.wait(self._guard, deadline):
                    return self._flag
            return True


class Lock:
    """threading.Lock, cooperatively: acquire(blocking=True, timeout=-1)."""

    def __init__(self):
        self._guard = _thread.allocate_lock()
        self._locked = False
        self._waiters = WaitQueue()

    def locked(self):
        return self._locked

    def acquire(self, blocking=True, timeout=-1):
        deadline = _lock_timeout(blocking, timeout)
        with self._guard:
            while self._locked:
                if deadline == 0 or not self._waiters.wait(self._guard, deadline):
                    if self._locked:
                        return False
            self._locked = True
            return True

    def release(self):
        with self._guard:
            if not self._locked:
                raise RuntimeError("release unlocked lock")
            self._locked = False
            self._waiters.wake_one()

    __enter__ = acquire

    def __exit__(self, *exc_info):
        self.release()

    # Condition protocol
    def _release_save(self):
        self.release()

    def _acquire_restore(self, state):
        self.acquire()

    def _is_owned(self):
        return self._locked


class RLock:
    """threading.RLock, cooperatively: owned by a coroutine."""

    def __init__(self):
        self._lock = Lock()
        self._owner = None
        self._count = 0

    def acquire(self, blocking=True, timeout=-1):
        me = _sched.current()
        if self._owner is me:
            self._count += 1
            return True
        if not self._lock.acquire(blocking, timeout):
            return False
        self._owner = me
        self._count = 1
        return True

    def release(self):
        if self._owner is not _sched.current():
            raise RuntimeError("cannot release un-acquired lock")
        self._count -= 1
        if self._count == 0:
            self._owner = None
            self._lock.release()

    __enter__ = acquire

    def __exit__(self, *exc_info):
        self.release()

    def _release_save(self):
        if self._owner is not _sched.current():
            raise RuntimeError("cannot release un-acquired lock")
        state = (self._owner, self._count)
        self._owner, self._count = None, 0
        self._lock.release()
        return state

    def _acquire_restore(self, state):
        self._lock.acquire()
        self._owner, self._count = state

    def _is_owned(self):
        return self._owner is _sched.current()


class Condition:
    """threading.Condition, cooperatively; the default lock is an RLock."""

    def __init__(self, lock=None):
        self._lock = RLock() if lock is None else lock
        self._guard = _thread.allocate_lock()
        self._waiters = WaitQueue()
        self.acquire = self._lock.acquire
        self.release = self._lock.release

    def __enter__(self):
        return self._lock.__enter__()

    def __exit__(self, *exc_info):
        return self._lock.__exit__(*exc_info)

    def wait(self, timeout=None):
        if not self._lock._is_owned():
            raise RuntimeError("cannot wait on un-acquired lock")
        deadline = _wait_deadline(timeout)
        saved = []
        self._guard.acquire()
        try:
            woken = self._waiters.wait(
                self._guard, deadline,
                before_park=lambda: saved.append(self._lock._release_save()),
            )
        finally:
            self._guard.release()
            if saved:
                # threading's contract: wait() returns or raises with the lock
                # held, even when cancelled or past a deadline.
                with _sched.shielded():
                    self._lock._acquire_restore(saved[0])
        return woken

    def wait_for(self, predicate, timeout=None):
        deadline = None if timeout is None else _UNSET
        result = predicate()
        while not result:
            if deadline is _UNSET:
                deadline = _wait_deadline(timeout)
            if deadline is not None:
                left = remaining_ns(deadline)
                if left <= 0:
                    break
                self.wait(ns_to_seconds(left))
            else:
                self.wait()
            result = predicate()
        return result

    def notify(self, n=1):
        if not self._lock._is_owned():
            raise RuntimeError("cannot notify on un-acquired lock")
        with self._guard:
            for _ in range(n):
                if not self._waiters.wake_one():
                    break

    def notify_all(self):
        if not self._lock._is_owned():
            raise RuntimeError("cannot notify on un-acquired lock")
        with self._guard:
            self._waiters.wake_all()


class Semaphore:
    """threading.Semaphore, cooperatively."""

    def __init__(self, value=1):
        if value < 0:
            raise ValueError("semaphore initial value must be >= 0")
        self._guard = _thread.allocate_lock()
        self._value = value
        self._waiters = WaitQueue()

    def acquire(self, blocking=True, timeout=None):
        if not blocking and timeout is not None:
            raise ValueError("can't specify timeout for non-blocking acquire")
        deadline = _UNSET  # worked out only when it must wait, as CPython
        with self._guard:
            while self._value == 0:
                if deadline is _UNSET:
                    deadline = _semaphore_timeout(blocking, timeout)
                if deadline == 0 or not self._waiters.wait(self._guard, deadline):
                    if self._value == 0:
                        return False
            self._value -= 1
            return True

    def release(self, n=1):
        if n < 1:
            raise ValueError("n must be one or more")
        with self._guard:
            self._value += n
            for _ in range(n):
                if not self._waiters.wake_one():
                    break

    __enter__ = acquire

    def __exit__(self, *exc_info):
        self.release()


class Queue:
    """queue.Queue, cooperatively (FIFO; maxsize <= 0 means unbounded).
    Raises queue.Empty and queue.Full like the standard one."""

    def __init__(self, maxsize=0):
        self.maxsize = maxsize
        self._items = collections.deque()
        self._guard = _thread.allocate_lock()
        self._not_empty = WaitQueue()
        self._not_full = WaitQueue()
        self._all_done = WaitQueue()
        self._unfinished = 0

    def qsize(self):
        return len(self._items)

    def empty(self):
        return not self._items

    def full(self):
        return 0 < self.maxsize <= len(self._items)

    def put(self, item, block=True, timeout=None):
        if self.maxsize > 0:  # queue.Queue checks only a bounded queue's
            _queue_timeout_valid(block, timeout)
        deadline = _UNSET  # worked out only when it must wait, as CPython
        with self._guard:
            while 0 < self.maxsize <= len(self._items):
                if deadline is _UNSET:
                    deadline = _queue_timeout(block, timeout)
                if deadline == 0 or not self._not_full.wait(self._guard, deadline):
                    if 0 < self.maxsize <= len(self._items):
                        raise _queue.Full
            self._items.append(item)
            self._unfinished += 1
            self._not_empty.wake_one()

    def get(self, block=True, timeout=None):
        _queue_timeout_valid(block, timeout)
        deadline = _UNSET  # worked out only when it must wait, as CPython
        with self._guard:
            while not self._items:
                if deadline is _UNSET:
                    deadline = _queue_timeout(block, timeout)
                if deadline == 0 or not self._not_empty.wait(self._guard, deadline):
                    if not self._items:
                        raise _queue.Empty
            item = self._items.popleft()
            self._not_full.wake_one()
            if self._items:
                self._not_empty.wake_one()  # pass on a wake a barger consumed
            return item

    def put_nowait(self, item):
        self.put(item, block=False)

    def get_nowait(self):
        return self.get(block=False)

    def task_done(self):
        with self._guard:
            if self._unfinished <= 0:
                raise ValueError("task_done() called too many times")
            self._unfinished -= 1
            if self._unfinished == 0:
                self._all_done.wake_all()

    def join(self):
        with self._guard:
            while self._unfinished:
                self._all_done.wait(self._guard, None)
