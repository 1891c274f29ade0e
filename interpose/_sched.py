"""Coroutines and the per-thread scheduler: spawn, join, cancel, run, sleep,
fd waits, deadlines and statistics.

Each OS thread that uses interpose gets a scheduler lazily.  The thread's own
context is its main coroutine: it keeps the thread's stack and thread state,
runs the code that called run() (or anything else), receives
KeyboardInterrupt and any SystemExit/KeyboardInterrupt raised in a spawned
coroutine.  Spawned coroutines each get a C stack and a thread state of
their own and start running when the spawner next waits.
"""
import _thread
import atexit
import contextvars
import dataclasses
import errno
import math
import os
import sys
import threading

from . import _compat
from . import _errors
from . import _native
from . import _preempt
from . import _signals
from ._waitqueue import WaitQueue, deadline_ns, remaining_ns, timeout_ns

_lib = _native.lib
_prepare = _lib.coro_prepare
_current_handle = _lib.coro_current
_park = _lib.coro_park
# The OS thread's real pthread_self(), whichever coroutine asks: schedulers
# are per OS thread, while _thread.get_ident() is per converted thread.
_get_ident = _lib.thread_os_ident

# Per OS thread, in that thread's own thread state: the reaper that frees a
# non-main thread's scheduler when the thread exits.
_local = _thread._local()
# Guards every Coroutine's join bookkeeping; held only for a few
# instructions, never across a park (a lock per coroutine costs memory).
_join_guard = _thread.allocate_lock()
# Per OS thread: ident -> _Scheduler.
_schedulers = {}
# Per thread state, so per coroutine: .sched caches the scheduler of the OS
# thread the coroutine runs on (the hot paths skip the ctypes call).
_tls = _thread._local()
# Set by _threads.install(): every spawned coroutine has a thread identity
# of its own (native/hooks_pthread.c).
thread_idents = False


class _Scheduler:
    """Python-side state of one OS thread's scheduler."""

    __slots__ = ("main", "live", "pending", "running", "native", "incarnation",
                 "name")

    def __init__(self):
        self.main = None  # the Coroutine standing for the thread's context
        self.live = {}  # handle -> Coroutine spawned here and not finished
        self.pending = None  # exception forwarded to the main coroutine
        self.running = False  # inside run()
        self.native = None  # the engine's handle, for the blocking monitor
        self.incarnation = 0  # which life of that handle (structs are reused)
        self.name = ""  # the OS thread's name when the scheduler was made


def _scheduler():
    try:
        return _tls.sched
    except AttributeError:
        pass
    sched = _schedulers.get(_get_ident())
    if sched is None:
        sched = _create_scheduler()
    _tls.sched = sched
    return sched


def _create_scheduler():
    sched = _Scheduler()
    handle = _current_handle()  # creates the native scheduler
    if not handle:
        raise OSError(errno.ENOMEM, "interpose: cannot create a scheduler")
    sched.main = Coroutine._for_main(handle)
    sched.native, sched.incarnation = _native.sched_self()
    sched.name = threading.current_thread().name
    ident = _get_ident()
    _schedulers[ident] = sched
    if threading.current_thread() is threading.main_thread():
        _signals.install()
        atexit.register(_shutdown_at_exit)
    else:
        _local.reaper = _Reaper(ident, sched)
    return sched


class _Reaper:
    """Frees a non-main thread's scheduler when the thread exits.

    It lives in the thread's own thread-local storage, which CPython
    normally clears on that thread as it exits: the one moment the thread's
    scheduler can be torn down by the thread that owns it.  When the locals
    are freed on another thread instead, only the registry entry is dropped
    here and the engine destroys the scheduler at the thread's exit."""

    __slots__ = ("ident", "sched")

    def __init__(self, ident, sched):
        self.ident = ident
        self.sched = sched

    def __del__(self):
        sched = _schedulers.get(self.ident)
        if sched is not self.sched:
            return  # already gone, or the ident was reused by a new thread
        if _get_ident() != self.ident:
            # CPython freed the thread's locals on another thread: only the
            # registry entry can go here; the engine tears the scheduler
            # down itself as its thread exits (sched_at_thread_exit).
            if not sched.live:
                del _schedulers[self.ident]
            return
        if sched.live:
            # Coroutines the thread never waited for: keep their state, but
            # the thread's own thread state is about to be deleted.
            _lib.sched_forget_root()
            return
        if _lib.sched_destroy() == 0:
            del _schedulers[self.ident]


def prepare():
    """Start a park generation for the running coroutine: (handle, gen).

    Raises an exception that a spawned coroutine forwarded to the main one.
    """
    sched = _scheduler()
    if sched.pending is not None:
        _raise_pending(sched)
    return _current_handle(), _prepare()


def _raise_pending(sched):
    if _current_handle() != sched.main._handle:
        return
    exc, sched.pending = sched.pending, None
    raise exc


def park_failed(code):
    """Handle a negative park result: -EINTR runs signal handlers and raises
    forwarded exceptions (returns if none raise); others raise."""
    if code == -errno.EINTR:
        _native.check_signals()
        sched = getattr(_tls, "sched", None) or _schedulers.get(_get_ident())
        if sched is not None and sched.pending is not None:
            _raise_pending(sched)
        return
    _errors.raise_for(code)


class Coroutine:
    """A spawned coroutine.  Create with spawn(); never directly."""

    __slots__ = (
        "_handle", "_id", "_name", "_target", "_context", "_result",
        "_exception", "_done", "_cancelled", "_joiners", "_join_waiters",
        "_sched", "_thread", "__weakref__",
    )

    def __init__(self, handle, cid, name):
        self._handle = handle
        self._id = cid
        self._name = name
        self._target = None
        self._context = None
        self._result = None
        self._exception = None
        self._done = False
        self._cancelled = False
        self._joiners = 0
        self._join_waiters = None  # a WaitQueue once someone joins
        self._sched = None
        # A threading.Thread (or _thread) thread: its body reports its own
        # errors, and nothing cancels it, as nothing cancels a thread.
        self._thread = False

    @classmethod
    def _for_main(cls, handle):
        return cls(handle, _lib.coro_id(handle), "main")

    @property
    def id(self):
        """Unique, never reused, positive integer."""
        return self._id

    @property
    def name(self):
        return self._name

    def done(self):
        return self._done

    def __repr__(self):
        state = "done" if self._done else "alive"
        return f"<interpose.Coroutine {self._id} {self._name!r} {state}>"

    def cancel(self):
        """Make this coroutine's current and later waits fail with ECANCELED
        (interpose.Cancelled).  Returns False if it has already finished.
        Callable from any coroutine or OS thread."""
        if self._sched is None:
            raise RuntimeError(
                "the main coroutine of a thread cannot be cancelled; use a"
                " deadline() or raise in it instead"
            )
        if self._done:
            return False
        self._cancelled = True
        return bool(_lib.coro_cancel(self._handle, self._id))

    def join(self, timeout=None):
        """Wait for the coroutine to finish; return its result or raise its
        exception (with the original traceback).  Raises interpose.Cancelled
        if it ended because it was cancelled, and TimeoutError if timeout
        (seconds) passes first."""
        if self is current():
            raise RuntimeError("a coroutine cannot join itself")
        if self._sched is None:
            raise RuntimeError("the main coroutine of a thread cannot be joined")
        deadline = deadline_ns(timeout)
        # Joining a finished coroutine (most joins after a batch of spawns)
        # needs no wait queue: _finish stores the outcome before _done,
        # under the guard, so a reader that sees _done sees the outcome.
        if not self._done:
            self._wait_done(deadline, timeout)
        if self._exception is not None:
            raise self._exception
        return self._result

    def _wait_done(self, deadline, timeout):
        with _join_guard:
            self._joiners += 1
            if self._join_waiters is None:
                self._join_waiters = WaitQueue()
            try:
                while not self._done:
                    if not self._join_waiters.wait(_join_guard, deadline):
                        if not self._done:
                            raise TimeoutError(
                                errno.ETIMEDOUT,
                                f"interpose: {self!r} did not finish in {timeout} s",
                            )
            finally:
                self._joiners -= 1

    # -- running in the coroutine's own thread state --------------------

    def _bootstrap(self):
        _tls.sched = self._sched
        if threading._trace_hook is not None:
            sys.settrace(threading._trace_hook)
        if threading._profile_hook is not None:
            sys.setprofile(threading._profile_hook)
        fn, args, kwargs = self._target
        self._target = ()
        try:
            if self._cancelled:
                raise _errors.Cancelled()
            result = self._context.run(fn, *args, **kwargs)
        except BaseException as exc:  # reported or forwarded by _finish
            self._finish(None, exc)
        else:
            self._finish(result, None)
        finally:
            self._context = None
            fn = args = kwargs = None

    def _finish(self, result, exc):
        sched = self._sched
        if exc is not None:
            if self._cancelled and getattr(exc, "errno", None) == errno.ECANCELED:
                if not isinstance(exc, _errors.Cancelled):
                    cancelled = _errors.Cancelled()
                    cancelled.__cause__ = exc
                    exc = cancelled
            elif isinstance(exc, (KeyboardInterrupt, SystemExit)):
                sched.pending = exc
                _lib.sched_interrupt_main()
            elif not self._joiners:
                _report(self, exc)
        with _join_guard:
            self._result = result
            self._exception = exc
            self._done = True
            if self._join_waiters is not None:
                self._join_waiters.wake_all()
        sched.live.pop(self._handle, None)
        if thread_idents and not self._thread:
            _forget_dummy_thread(_thread.get_ident())


def _forget_dummy_thread(ident):
    """threading.current_thread() in a coroutine that is not a thread
    (interpose.spawn) registers a _DummyThread that nothing removes: drop it
    with the coroutine, so idents do not pile up in threading._active.  A
    coroutine that stands for a thread keeps it, as plain 3.11 keeps the
    dummy of a _thread.start_new_thread thread."""
    thread = threading._active.get(ident)
    if type(thread) is threading._DummyThread:
        threading._active.pop(ident, None)


def _report(coro, exc):
    """Report an uncaught exception the way threading.excepthook does."""
    try:
        threading.excepthook(
            threading.ExceptHookArgs([type(exc), exc, exc.__traceback__, coro])
        )
    except BaseException as hook_error:  # never lose the report entirely
        sys.unraisablehook(
            sys.UnraisableHookArgs(
                type(hook_error), hook_error, hook_error.__traceback__,
                "Exception in threading.excepthook for", coro,
            )
        )


_MAX_STACK = 1 << 62  # beyond it size_t arithmetic in the engine would wrap


def spawn(fn, /, *args, name=None, stack_size=None, preemptible=None,
          **kwargs):
    """Create a coroutine running fn(*args, **kwargs) in a copy of the
    caller's contextvars context; it starts when the caller next waits.

    stack_size is the usable C stack in bytes (default 1 MiB, or
    INTERPOSE_STACK_SIZE); below 512 KiB ordinary Python code can overflow
    it, which the guard page reports and aborts on.

    preemptible: True lets the coroutine be preempted at a bytecode
    boundary once it has run for a switch interval while others wait, as a
    thread would be; False keeps it cooperative (it switches only where it
    waits).  None: False, unless INTERPOSE_PREEMPT=all.
    """
    if not callable(fn):
        raise TypeError(f"spawn() needs a callable, not {type(fn).__name__}")
    size = 0
    if stack_size is not None:
        if not isinstance(stack_size, int) or isinstance(stack_size, bool):
            raise TypeError("stack_size must be an int (bytes)")
        minimum = _lib.stack_minimum()
        if not minimum <= stack_size <= _MAX_STACK:
            raise ValueError(
                f"stack_size must be between {minimum} and {_MAX_STACK} bytes"
                f" ({minimum} is {_compat.STACK_MINIMUM_REASON}); got {stack_size}"
            )
        size = stack_size
    if preemptible is None:
        preemptible = _preempt.spawn_default()
    elif not isinstance(preemptible, bool):
        raise TypeError("preemptible must be True, False or None")
    return _spawn(fn, args, kwargs, name, size, False, preemptible)


def _spawn(fn, args, kwargs, name, size, thread, preemptible):
    """spawn() after validation; thread marks a coroutine standing for a
    thread (size 0: the default stack)."""
    sched = _scheduler()
    label = "" if name is None else str(name)
    coro = Coroutine(0, 0, label)
    coro._thread = thread
    coro._target = (fn, args, kwargs)
    coro._context = contextvars.copy_context()
    coro._sched = sched
    try:
        coro._handle, coro._id = _native.spawn_raw(coro._bootstrap, size, label)
    except OSError as e:
        raise _errors.spawn_error(e) from None
    if name is None:
        coro._name = f"coroutine-{coro._id}"
    sched.live[coro._handle] = coro
    if preemptible:
        _preempt.set_preemptible(coro._handle, True)
    return coro


def current():
    """The running Coroutine (the thread's main coroutine outside spawned
    ones)."""
    sched = _scheduler()
    return sched.live.get(_current_handle()) or sched.main


def sleep(seconds):
    """Suspend the running coroutine for at least seconds; sleep(0) lets
    every other runnable coroutine run first; sleep(math.inf) parks until
    the coroutine is cancelled or its deadline passes."""
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        raise TypeError("sleep() needs a number of seconds")
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    deadline = deadline_ns(seconds)  # NaN: ValueError, as time.sleep
    while True:
        prepare()
        code = _park(remaining_ns(deadline))
        if code < 0:
            park_failed(code)
        if deadline is not None and _lib.clock_ns() >= deadline:
            return


_INT_MAX = 2**31 - 1


def _fileno(fd):
    if isinstance(fd, int):
        return fd
    try:
        return fd.fileno()
    except AttributeError:
        raise TypeError(f"expected an fd or an object with fileno(), got {fd!r}") from None


def _wait_fd(fd, events, timeout):
    fd = _fileno(fd)
    if fd < 0:
        raise ValueError(f"invalid file descriptor {fd}")
    # ctypes would truncate it to a C int (2**32 + 5 arrives as fd 5) and
    # wait on another fd: refuse it as os.fstat does.
    if fd > _INT_MAX:
        raise OverflowError(f"fd {fd} is greater than maximum")
    deadline = deadline_ns(timeout)
    while True:
        prepare()
        code = _lib.wait_fd(fd, events, remaining_ns(deadline))
        if code == 0 or code == -errno.EPERM:  # EPERM: a regular file, always ready
            return True
        if code == _native.PARK_TIMEOUT:
            return False
        park_failed(code)


def wait_readable(fd, timeout=None):
    """Wait until fd (an int or an object with fileno()) is readable; True
    when it is, False when timeout seconds passed first."""
    return _wait_fd(fd, _native.READABLE, timeout)


def wait_writable(fd, timeout=None):
    """Wait until fd is writable; True when it is, False on timeout."""
    return _wait_fd(fd, _native.WRITABLE, timeout)


class deadline:
    """Context manager: after seconds, every wait of the running coroutine
    fails with ETIMEDOUT (TimeoutError) until the block exits.  Nested
    deadlines keep the earliest."""

    __slots__ = ("_seconds", "_previous", "deadline_ns")

    def __init__(self, seconds):
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
            raise TypeError("deadline() needs a number of seconds")
        if math.isnan(seconds):
            raise ValueError("deadline() needs a number of seconds, not NaN")
        self._seconds = seconds
        self._previous = None
        self.deadline_ns = None

    def __enter__(self):
        _scheduler()
        left = timeout_ns(self._seconds)
        when = -1 if left is None else _lib.clock_ns() + left
        previous = _lib.coro_set_deadline(when)
        if 0 <= previous and (when < 0 or previous < when):
            _lib.coro_set_deadline(previous)
            when = previous
        self._previous = previous
        self.deadline_ns = when if when >= 0 else None
        return self

    def __exit__(self, *exc_info):
        _lib.coro_set_deadline(self._previous)
        return False


class no_hooks:
    """Context manager: inside it, blocking libc calls made by the running
    coroutine block the thread as they would without interpose (for code
    that must not switch, or to compare).  Nests; restores on exit."""

    __slots__ = ("_previous",)

    def __enter__(self):
        _scheduler()
        self._previous = _lib.coro_set_hooks(0)
        return self

    def __exit__(self, *exc_info):
        _lib.coro_set_hooks(self._previous)
        return False


class shielded:
    """Context manager (private): waits inside ignore cancellation and
    deadlines, for cleanup that must complete."""

    __slots__ = ()

    def __enter__(self):
        _lib.coro_shield(1)
        return self

    def __exit__(self, *exc_info):
        _lib.coro_shield(-1)
        return False


def run(fn, /, *args, **kwargs):
    """Run fn(*args, **kwargs) as this thread's main coroutine and return its
    result.  When it returns or raises, every coroutine still alive on this
    thread is cancelled and run until it finishes (as asyncio.run does),
    except one parked where cancellation cannot reach (a lock wait)."""
    sched = _scheduler()
    if current() is not sched.main:
        raise RuntimeError("interpose.run() must be called outside spawned coroutines")
    if sched.running:
        raise RuntimeError("interpose.run() is already running on this thread")
    sched.running = True
    try:
        result = fn(*args, **kwargs)
    finally:
        sched.running = False
        _shutdown(sched)
    # A SystemExit/KeyboardInterrupt a coroutine forwarded while the main
    # coroutine was already runnable has not been raised by a wait yet.
    if sched.pending is not None:
        _raise_pending(sched)
    return result


def _shutdown(sched):
    """Cancel every coroutine still alive on this thread, except those
    standing for threads (threading waits for non-daemon ones), and let them
    run until each has finished or nothing on the thread can run any more.

    The ones then still alive are parked in waits that cancellation does
    not end: lock waits (Lock.acquire, Event.wait, Queue.get), which CPython
    cannot let fail.  Only another coroutine or thread could wake them, and
    none is runnable, so waiting for them could hang the process for ever;
    they are left parked, as daemon threads are.  Returns them.

    Nothing joins the cancelled coroutines, so an exception one raises
    other than its cancellation (from a finally, say) is reported through
    threading.excepthook when it finishes, as asyncio.run reports errors
    during its shutdown."""
    stuck = set()
    while True:
        victims = [c for c in sched.live.values()
                   if not c._thread and c not in stuck]
        if not victims:
            return stuck
        for coro in victims:
            coro.cancel()
        while True:
            with shielded():  # a deadline of the main one must not stop it
                sleep(0)  # every runnable coroutine runs first
            if all(c._done for c in victims) or not _lib.sched_runnable():
                break
        stuck.update(c for c in victims if not c._done)


def _shutdown_at_exit():
    sched = _schedulers.get(_get_ident())
    if sched is None:
        return
    _shutdown(sched)
    if sched.live:
        # Daemon threads, and coroutines parked where cancellation cannot
        # reach, are abandoned, as CPython abandons daemon threads: they
        # must never run again, for the interpreter is about to clear their
        # thread states.  With the main coroutine's hooks off nothing
        # switches to them any more (this is the last atexit handler).
        _lib.coro_set_hooks(0)


def _after_fork_in_child():
    """Only the forking coroutine survives a fork (the engine has already
    given the thread a fresh scheduler and invalidated every other
    coroutine): mark the others finished, as threading marks threads lost
    in a fork, so joining one returns at once (raising Cancelled)."""
    me_handle = _current_handle()
    survivor = None
    for sched in _schedulers.values():
        for coro in [*sched.live.values(), sched.main]:
            if coro._handle == me_handle and coro._id == _lib.coro_id(me_handle):
                survivor = coro
            elif not coro._done:
                coro._done = True
                coro._exception = _errors.Cancelled(
                    f"interpose: {coro!r} did not survive fork()")
            coro._joiners = 0
            coro._join_waiters = None
    sched = _schedulers.get(_get_ident())
    _schedulers.clear()
    if sched is None:
        return
    _schedulers[_get_ident()] = sched
    sched.live = {me_handle: survivor} if survivor is not sched.main else {}
    sched.pending = None
    if survivor is not None:
        sched.main = survivor
    _signals.renew_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


@dataclasses.dataclass(frozen=True)
class CoroutineStatistics:
    """Time one coroutine spent on its thread (wall-clock time between the
    switch to it and the switch away: its CPU time, plus any blocking call
    no hook turned into a park)."""

    id: int
    name: str
    cpu_time: float  # seconds, all turns
    longest_turn: float  # seconds, the longest it held the thread at once
    turns: int


@dataclasses.dataclass(frozen=True)
class Statistics:
    """Counters of the calling thread's scheduler.

    Run-queue latency is the time from a coroutine's wake-up to its turn,
    measured in powers of two: each percentile is an upper bound at most
    twice the true value (0.0 before any turn)."""

    coroutines_alive: int = 0
    coroutines_created: int = 0
    switches: int = 0
    parks: int = 0
    timeouts: int = 0
    epoll_waits: int = 0
    preemptions: int = 0
    longest_turn: float = 0.0
    run_queue_latency_p50: float = 0.0
    run_queue_latency_p90: float = 0.0
    run_queue_latency_p99: float = 0.0
    run_queue_latency_max: float = 0.0
    coroutines: tuple = ()  # CoroutineStatistics of its live coroutines


def latency_percentiles(hist):
    """(p50, p90, p99, max) in seconds from a log2(ns) histogram: bucket b
    holds durations below 2**b ns, so each is reported as 2**b ns."""
    total = sum(hist)
    if total == 0:
        return 0.0, 0.0, 0.0, 0.0
    out = []
    for q in (0.50, 0.90, 0.99, 1.0):
        need = max(1, math.ceil(q * total))
        seen = 0
        for b, n in enumerate(hist):
            seen += n
            if seen >= need:
                out.append((1 << b) / 1e9)
                break
    return tuple(out)


def coroutine_statistics(sched_handle):
    """CoroutineStatistics of the live coroutines of one scheduler."""
    names = {}
    for s in list(_schedulers.values()):
        for handle, coro in list(s.live.items()):
            names[handle] = coro.name
        if s.main is not None:
            names[s.main._handle] = "main"
    out = []
    for info, _ in _native.diag_coros(frames=False):
        if info.sched != sched_handle:
            continue
        out.append(CoroutineStatistics(
            id=info.id,
            name=names.get(info.handle) or info.name.decode("utf-8", "replace"),
            cpu_time=info.run_ns / 1e9, longest_turn=info.max_turn_ns / 1e9,
            turns=info.turns))
    return tuple(out)


def statistics():
    """Counters of the calling thread's scheduler (all zero before its first
    use)."""
    raw = _native.statistics_raw()
    if raw is None:
        return Statistics()
    me = _native.sched_self()[0]
    info = next((s for s in _native.diag_scheds() if s.sched == me), None)
    p50 = p90 = p99 = pmax = 0.0
    longest = 0.0
    if info is not None:
        p50, p90, p99, pmax = latency_percentiles(list(info.latency))
        longest = info.max_turn_ns / 1e9
    return Statistics(
        coroutines_alive=raw.alive,
        coroutines_created=raw.created,
        switches=raw.switches,
        parks=raw.parks,
        timeouts=raw.timeouts,
        epoll_waits=raw.epoll_waits,
        preemptions=raw.preemptions,
        longest_turn=longest,
        run_queue_latency_p50=p50,
        run_queue_latency_p90=p90,
        run_queue_latency_p99=p99,
        run_queue_latency_max=pmax,
        coroutines=coroutine_statistics(me),
    )
