"""threading on coroutines: under `interpose run` every thread the program
starts (threading.Thread, _thread.start_new_thread, and so Timer,
ThreadPoolExecutor, socketserver's ThreadingMixIn) is a coroutine on the OS
thread that started it.

What changes is small, because the native library already makes every
CPython lock cooperative (its sem_* hooks park a coroutine that waits for a
lock): Lock, Condition, Semaphore, Event, Barrier, queue.*, Thread.join and
the interpreter's wait for non-daemon threads at exit need nothing more.
What is left is identity and creation:

* get_ident() is per coroutine: a spawned coroutine's ident is its
  coroutine id (small integers, which never collide with the pthread
  addresses CPython uses as the idents of OS threads); a thread's main
  coroutine keeps the OS thread's ident.  current_thread(), RLock
  ownership, threading.local (per thread state anyway) and importlib's
  module locks follow.  native_id stays the OS thread's: that is what the
  kernel and tools such as ps see.
* Starting a thread spawns a coroutine; on 3.13 the thread handle that
  Thread.join and interpreter shutdown use is ours (see _Handle).
* RLocks: C RLocks record the OS thread as owner, which coroutines share.
  threading.RLock() returns the pure-Python RLock (it asks get_ident()),
  and RLocks created as C objects anyway (before start-up, by
  functools.cached_property, by C code) get their methods routed to a
  per-lock Python RLock.
"""
import _thread
import gc
import os
import sys
import threading
import weakref

from . import _compat
from . import _native
from . import _sched

_real_get_ident = _thread.get_ident
# Taken before install() replaces it, for the OS threads interpose itself
# needs (the blocking monitor).
real_start_new_thread = _thread.start_new_thread
_idents = _thread._local()
_installed = False


def get_ident():
    """The calling coroutine's thread identity (see the module docstring)."""
    try:
        return _idents.ident
    except AttributeError:
        # A thread's main coroutine (the thread's own thread state): its
        # OS thread's ident, stored so that later calls skip this path.
        ident = _idents.ident = _real_get_ident()
        return ident


def _thread_name(function):
    owner = getattr(function, "__self__", None)
    return owner.name if isinstance(owner, threading.Thread) else None


def _stack_size():
    """threading.stack_size(), honoured as the coroutine's C stack size but
    never below what the engine needs."""
    size = _thread.stack_size()
    return max(size, _native.lib.stack_minimum()) if size else 0


def _run_as_thread(function, args, kwargs, handle=None):
    """A thread's body, as _thread runs it: SystemExit ends only the thread;
    anything else uncaught goes to sys.unraisablehook (threading.Thread
    catches its own exceptions first and reports them to excepthook)."""
    try:
        function(*args, **kwargs)
    except SystemExit:
        pass
    except BaseException as exc:
        sys.unraisablehook(sys.UnraisableHookArgs(
            type(exc), exc, exc.__traceback__,
            f"Exception ignored in thread started by {function!r}", None))
    finally:
        if handle is not None:
            handle._set_done()


def _spawn_thread(function, args, kwargs, handle=None):
    if not callable(function):
        raise TypeError("first arg must be callable")
    if not isinstance(args, tuple):
        raise TypeError("2nd arg must be a tuple")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise TypeError("optional 3rd arg must be a dictionary")
    try:
        coro = _sched._spawn(
            _run_as_thread, (function, args, kwargs or {}, handle), {},
            _thread_name(function), _stack_size(), True)
    except OSError as e:  # threading expects RuntimeError, as from _thread
        raise RuntimeError(f"can't start new thread: {e}") from e
    # Thread.start() waits until the thread runs: let it run first instead
    # of after every other runnable coroutine.
    _native.lib.coro_run_next(coro._handle)
    return coro.id


def start_new_thread(function, args, kwargs=None):
    """_thread.start_new_thread on a coroutine; returns its ident."""
    return _spawn_thread(function, args, kwargs)


class _Handle:
    """3.13's _thread._ThreadHandle for a thread that is a coroutine: its
    ident, whether it has finished, and join().  Joining waits on a lock,
    which the sem hooks make cooperative and Ctrl-C interrupts."""

    __slots__ = ("ident", "daemon", "_done", "_finished", "__weakref__")

    def __init__(self):
        self.ident = None
        self.daemon = True
        self._finished = False
        self._done = _thread.allocate_lock()
        self._done.acquire()

    def is_done(self):
        return self._finished

    def _set_done(self):
        if not self._finished:
            self._finished = True
            self._done.release()

    def join(self, timeout=None):
        if self.ident is not None and self.ident == get_ident() and not self._finished:
            raise RuntimeError("Cannot join current thread")
        if self._finished:
            return
        if timeout is None or timeout < 0:
            acquired = self._done.acquire()
        else:
            acquired = self._done.acquire(True, timeout)
        if acquired:
            self._done.release()

    def __repr__(self):
        state = "done" if self._finished else "running"
        return f"<interpose thread handle {self.ident} {state}>"


# Handles of the threads started here; shutdown waits for non-daemon ones.
_handles = weakref.WeakSet()


def start_joinable_thread(function, handle=None, daemon=True):
    """3.13's _thread.start_joinable_thread on a coroutine."""
    if handle is None:
        handle = _Handle()
    elif not isinstance(handle, _Handle):
        raise TypeError(f"interpose cannot run a thread for handle {handle!r}")
    handle.daemon = bool(daemon)
    handle.ident = _spawn_thread(function, (), None, handle)
    _handles.add(handle)
    return handle


def _make_shutdown(original):
    def _thread_shutdown():
        """Wait for every non-daemon thread, ours then CPython's."""
        while True:
            pending = [h for h in list(_handles)
                       if not h.daemon and not h.is_done()]
            if not pending:
                break
            for handle in pending:
                handle.join()
        original()
    return _thread_shutdown


# ---- C RLocks -------------------------------------------------------------

_CRLock = _thread.RLock
# C RLock -> the Python RLock that stands for it.
_rlock_twins = weakref.WeakKeyDictionary()


def _twin(lock):
    try:
        return _rlock_twins[lock]
    except KeyError:
        twin = _rlock_twins[lock] = threading._PyRLock()
        return twin


def _rlock_acquire(self, blocking=True, timeout=-1):
    return _twin(self).acquire(blocking, timeout)


def _rlock_release(self):
    _twin(self).release()


def _rlock_exit(self, *exc_info):
    _twin(self).release()


def _rlock_repr(self):
    twin = _twin(self)
    owner = twin._owner
    state = "locked" if owner is not None else "unlocked"
    return (f"<{state} {type(self).__module__}.{type(self).__qualname__} object"
            f" owner={owner or 0} count={twin._count} at {hex(id(self))}>")


_RLOCK_METHODS = {
    "acquire": _rlock_acquire,
    "__enter__": _rlock_acquire,
    "release": _rlock_release,
    "__exit__": _rlock_exit,
    "_is_owned": lambda self: _twin(self)._is_owned(),
    "_release_save": lambda self: _twin(self)._release_save(),
    "_acquire_restore": lambda self, state: _twin(self)._acquire_restore(state),
    "_recursion_count": lambda self: _twin(self)._recursion_count(),
    "_at_fork_reinit": lambda self: _twin(self)._at_fork_reinit(),
    "__repr__": _rlock_repr,
}


def _route_c_rlocks():
    """Give the C RLock type the methods above.  The type is immutable from
    Python, so its dict is reached through the mapping proxy's referent and
    the method caches are invalidated with PyType_Modified."""
    type_dict = gc.get_referents(_CRLock.__dict__)[0]
    for name, method in _RLOCK_METHODS.items():
        if name in type_dict:
            type_dict[name] = method
    _native.type_modified(_CRLock)


# ---- installation ---------------------------------------------------------

def install():
    """Make threads coroutines in this process (interpose run does it at
    start-up, before the program's code runs)."""
    global _installed
    if _installed:
        return
    _sched._scheduler()
    _sched._idents = _idents
    _thread.get_ident = get_ident
    threading.get_ident = get_ident
    if _compat.PY313:
        _thread.start_joinable_thread = start_joinable_thread
        threading._start_joinable_thread = start_joinable_thread
        threading._ThreadHandle = _Handle
        threading._thread_shutdown = _make_shutdown(threading._thread_shutdown)
    else:
        threading._start_new_thread = start_new_thread
    _thread.start_new_thread = start_new_thread
    _thread.start_new = start_new_thread
    threading._CRLock = None
    _compat.leave_os_thread_names_alone(threading)
    _route_c_rlocks()
    os.register_at_fork(after_in_child=_after_fork_in_child)
    _installed = True


def install_native():
    """Keep OS threads (INTERPOSE_THREADS=native): each thread the program
    starts gets a scheduler of its own, with its main coroutine's hooks on,
    before the thread's code runs.  Locks, Events and queues work across
    the threads (the sem hooks wake a coroutine parked on another thread)."""
    global _installed
    if _installed:
        return
    if _compat.PY313:
        real = _thread.start_joinable_thread

        def start_joinable_thread(function, handle=None, daemon=True):
            return real(_with_scheduler(function), handle=handle, daemon=daemon)

        _thread.start_joinable_thread = start_joinable_thread
        threading._start_joinable_thread = start_joinable_thread
    else:
        real = _thread.start_new_thread

        def start_new_thread(function, args, kwargs=None):
            if kwargs is None:
                return real(_with_scheduler(function), args)
            return real(_with_scheduler(function), args, kwargs)

        threading._start_new_thread = start_new_thread
        _thread.start_new_thread = _thread.start_new = start_new_thread
    _installed = True


def _with_scheduler(function):
    def run_with_scheduler(*args, **kwargs):
        _sched._scheduler()
        _native.lib.coro_set_hooks(1)
        return function(*args, **kwargs)
    return run_with_scheduler


def _after_fork_in_child():
    """Threads other than the forking one are gone (threading has already
    rebuilt its tables): their handles report done, as CPython's do."""
    me = get_ident()
    for handle in list(_handles):
        if handle.ident != me:
            handle._set_done()
