"""Coroutines, the per-thread scheduler and the wait queue they park on:
spawn, join, cancel, run, sleep, fd waits and deadlines.

Each OS thread that uses interpose gets a scheduler lazily.  The thread's own
context is its main coroutine: it keeps the thread's stack and thread state,
runs the code that called run() (or anything else), receives
KeyboardInterrupt and any SystemExit/KeyboardInterrupt raised in a spawned
coroutine.  Spawned coroutines each get a C stack and a thread state of
their own and start running when the spawner next waits.

The wait queue lives here because the three need each other: a wait
prepares a park on the running coroutine's scheduler, joining a coroutine
waits on a queue, and a scheduler starts with a Coroutine for its thread.

The core knows no integration: threads, signals and time slicing take
part through the hook lists of _hooks.py (the diagnostics only read the
registry).  The process's
at-fork and exit handlers are registered when the first scheduler starts,
never at import.
"""
import _thread
import atexit
import collections
import contextvars
import errno
import math
import os
import sys
import threading

from . import _compat
from . import _errors
from . import _hooks
from . import _native
from ._time import deadline_ns, remaining_ns, timeout_ns

_lib = _native.lib
_prepare = _lib.coro_prepare
_current_handle = _lib.coro_current
_park = _lib.coro_park
_unpark = _lib.coro_unpark
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
# Whether the process's at-fork and exit handlers are registered: once,
# by the first scheduler.
_process_hooked = False


class _Scheduler:
    """Python-side state of one OS thread's scheduler."""

    __slots__ = ("main", "live", "pending", "running", "native", "incarnation",
                 "name", "is_main_thread")

    def __init__(self):
        self.main = None  # the Coroutine standing for the thread's context
        self.live = {}  # handle -> Coroutine spawned here and not finished
        self.pending = None  # exception forwarded to the main coroutine
        self.running = False  # inside run()
        self.native = None  # the engine's handle, for the blocking monitor
        self.incarnation = 0  # which life of that handle (structs are reused)
        self.name = ""  # the OS thread's name when the scheduler was made
        self.is_main_thread = False  # on the process's main thread


def _scheduler():
    try:
        return _tls.sched
    except AttributeError:
        pass
    sched = _schedulers.get(_get_ident())
    if sched is None or not _owned_here(sched):
        sched = _create_scheduler()
    _tls.sched = sched
    return sched


def _owned_here(sched):
    """Whether sched is the calling OS thread's live scheduler.

    The registry is keyed by pthread_self(), which a new thread reuses as
    soon as an old one exits, while the old thread's entry lives until its
    reaper runs: on that thread as it exits, or later, on any thread, when
    its locals were caught in a reference cycle.  Only the engine's
    (handle, incarnation) tells the two threads apart."""
    return (sched.native, sched.incarnation) == _native.sched_self()


def _create_scheduler():
    sched = _Scheduler()
    r = _lib.sched_ensure()  # creates the native scheduler
    if r < 0:
        raise OSError(-r, f"interpose: cannot create a scheduler: {os.strerror(-r)}")
    handle = _current_handle()
    sched.main = Coroutine._for_main(handle)
    sched.native, sched.incarnation = _native.sched_self()
    sched.name = threading.current_thread().name
    sched.is_main_thread = threading.current_thread() is threading.main_thread()
    ident = _get_ident()
    _schedulers[ident] = sched
    _hook_process()
    if not sched.is_main_thread:
        _local.reaper = _Reaper(ident, sched)
    _hooks.run(_hooks.scheduler_started, sched)
    return sched


def _hook_process():
    """Register the core's at-fork and exit handlers with the interpreter,
    once, as the first scheduler starts (so importing interpose changes
    neither fork() nor exit)."""
    global _process_hooked
    if _process_hooked:
        return
    os.register_at_fork(before=_before_fork,
                        after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)
    atexit.register(_at_exit)
    _process_hooked = True


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
        if not _owned_here(sched):
            # CPython freed the thread's locals on another thread (possibly
            # a new one with the same ident): only the registry entry can go
            # here; the engine tears the scheduler down itself as its
            # thread exits (sched_at_thread_exit).
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
    gen = _prepare()
    if gen < 0:
        raise OSError(-gen, os.strerror(-gen))
    return _current_handle(), gen


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


class WaitQueue:
    """The parking primitive every cooperative wait is built on.

    A waiter is the pair (coroutine handle, park generation).  Wakers pop
    waiters and unpark them; the engine guarantees that exactly one wake
    ends a park, so a waker learns whether it really woke someone (unpark
    returns 1) or lost the race to a timeout or cancellation (0) and must
    try the next one.  Every structure is guarded by a real OS lock, never
    held across a park, so primitives also work between OS threads."""

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
        waiter = prepare()
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
        park_failed(code)
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
        # (The wait stays in this frame: interpose.dump() names a park in
        # Coroutine.join as a join.)
        if not self._done:
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
                                    f"interpose: {self!r} did not finish in"
                                    f" {timeout} s",
                                )
                finally:
                    self._joiners -= 1
        if self._exception is not None:
            raise self._exception
        return self._result

    # -- running in the coroutine's own thread state --------------------

    def _bootstrap(self):
        _tls.sched = self._sched
        # Inherited as threading.Thread inherits them (threading.settrace).
        trace, profile = threading.gettrace(), threading.getprofile()
        if trace is not None:
            sys.settrace(trace)
        if profile is not None:
            sys.setprofile(profile)
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
        _hooks.run(_hooks.coroutine_finished, self)


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
          **target_kwargs):
    """Create a coroutine running fn(*args) in a copy of the caller's
    contextvars context; it starts when the caller next waits.  Returns its
    Coroutine.

    Every keyword argument is an option of spawn itself, never one of fn's,
    so a target's own name= or stack_size= cannot be taken for an option
    (or the other way round).  Pass keyword arguments to fn with
    functools.partial: spawn(functools.partial(fn, name="x"), name="worker").

    name: the coroutine's name (dumps, repr); default "coroutine-<id>".

    stack_size is the usable C stack in bytes (default 1 MiB, or
    INTERPOSE_STACK_SIZE); below 512 KiB ordinary Python code can overflow
    it, which the guard page reports and aborts on.

    preemptible: True lets the coroutine be preempted at a bytecode
    boundary once it has run for a switch interval while others wait, as a
    thread would be; False keeps it cooperative (it switches only where it
    waits).  None: False, unless INTERPOSE_PREEMPT=all.
    """
    if target_kwargs:
        given = ", ".join(f"{k}=..." for k in target_kwargs)
        raise TypeError(
            f"spawn() got an unexpected keyword argument ({given}): its"
            " keywords are its own options (name, stack_size, preemptible);"
            f" pass fn's as spawn(functools.partial(fn, {given}))")
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
        preemptible = _preemptible_by_default()
    elif not isinstance(preemptible, bool):
        raise TypeError("preemptible must be True, False or None")
    return _spawn(fn, args, {}, name, size, False, preemptible)


def _preemptible_by_default():
    # A loop, not any() over a generator: this runs on every spawn, and the
    # generator costs about 0.1 us more.
    for default in _hooks.preemptible_by_default:
        if default():
            return True
    return False


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
        set_preemptible(coro._handle, True)
    return coro


def set_preemptible(handle, on):
    """Mark a coroutine (native handle) preemptible or not; the
    before_preemptible hooks (the preemption monitor) run first."""
    if on:
        _hooks.run(_hooks.before_preemptible)
    _lib.coro_set_preemptible(handle, 1 if on else 0)


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


def _at_exit():
    """The core's atexit handler (registered by the first scheduler): shut
    the main thread's coroutines down, then run the exiting hooks."""
    _shutdown_at_exit()
    _hooks.run(_hooks.exiting)


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


def _before_fork():
    for hook in reversed(_hooks.before_fork):
        hook()


def _after_fork_in_parent():
    _hooks.run(_hooks.after_fork_in_parent)


def _after_fork_in_child():
    _recover_after_fork()
    _hooks.run(_hooks.after_fork_in_child)


def _recover_after_fork():
    """Only the forking coroutine survives a fork (the engine has already
    given the thread a fresh scheduler and invalidated every other
    coroutine): mark the others finished, as threading marks threads lost
    in a fork, so joining one returns at once (raising Cancelled)."""
    # Reopens the native scheduler's epoll set (or creates one), as the
    # engine's fork recovery waits for the runtime to ask (native/fork.c).
    me_handle = _current_handle() if _lib.sched_ensure() == 0 else None
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
