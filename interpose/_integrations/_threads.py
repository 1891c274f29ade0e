"""threading on coroutines: under `interpose run` every thread the program
starts (threading.Thread, _thread.start_new_thread, and so Timer,
ThreadPoolExecutor, socketserver's ThreadingMixIn) is a coroutine on the OS
thread that started it.

What changes is small, because the native library already makes every
CPython lock cooperative (its sem_* hooks park a coroutine that waits for a
lock): Lock, RLock, Condition, Semaphore, Event, Barrier, queue.*,
Thread.join and the interpreter's wait for non-daemon threads at exit need
nothing more.  What is left is identity and creation:

* Identity is native (native/hooks_pthread.c): install() turns on thread
  identities, and from then on pthread_self() in a spawned coroutine
  returns a handle of its own, which CPython takes as the thread's ident.
  _thread.get_ident, current_thread(), the owner of the C RLock and of the
  import lock, the main-thread checks of signal.signal and set_wakeup_fd,
  tstate->thread_id (sys._current_frames, PyThreadState_SetAsyncExc,
  faulthandler) all follow, with nothing replaced at the Python level.  A
  thread's main coroutine keeps the OS thread's ident.  native_id stays the
  OS thread's: that is what the kernel and tools such as ps see, and a
  made-up TID could name a real thread of the process (docs/threads.md).
* Starting a thread spawns a coroutine.  How threading starts and joins
  threads differs by version: _threads_311.py (3.11, 3.12) and
  _threads_313.py (3.13 and later) each patch their version's entry points;
  the choice between them is made here, once, below the imports.
"""
import _thread
import functools
import os
import sys
import threading

from .._core import _compat
from .._core import _hooks
from .._core import _native
from .._core import _sched
from . import _preempt
from . import _signals

# The one place that picks the version's threading module.
if _compat.PY313:
    from . import _threads_313 as _versioned
else:
    from . import _threads_311 as _versioned

# Taken before install() replaces it, for the OS threads interpose itself
# needs (the blocking monitor).
real_start_new_thread = _thread.start_new_thread
_installed = False


def _thread_name(function):
    owner = getattr(function, "__self__", None)
    return owner.name if isinstance(owner, threading.Thread) else None


def _stack_size():
    """threading.stack_size(), honoured as the coroutine's C stack size but
    never below what the engine needs."""
    size = _thread.stack_size()
    return max(size, _native.lib.stack_minimum()) if size else 0


def _unraisable_hook_args_type():
    """sys.unraisablehook's argument type, which sys does not expose: taken
    from one unraisable exception caught on purpose."""
    caught = []
    hook, sys.unraisablehook = sys.unraisablehook, caught.append
    try:
        class _Raises:
            def __del__(self):
                raise RuntimeError

        _Raises()
    finally:
        sys.unraisablehook = hook
    return type(caught[0])


_UnraisableHookArgs = _unraisable_hook_args_type()


def _run_as_thread(function, args, kwargs, handle=None, token=None):
    """A thread's body, as _thread runs it: SystemExit ends only the thread;
    anything else uncaught goes to sys.unraisablehook (threading.Thread
    catches its own exceptions first and reports them to excepthook)."""
    try:
        if args or kwargs:
            function(*args, **kwargs)
        else:
            # threading.Thread's case (its _bootstrap, no arguments): a plain
            # call of a Python function runs in the caller's C frame of the
            # interpreter, where f(*a, **k) nests another one, about 500
            # bytes of every parked thread's C stack (docs/performance.md).
            function()
    except SystemExit:
        pass
    except BaseException as exc:
        if _compat.THREAD_ERROR_NAMES_FUNCTION:
            message = f"Exception ignored in thread started by {function!r}"
            culprit = None
        else:
            message, culprit = "Exception ignored in thread started by", function
        sys.unraisablehook(_UnraisableHookArgs((
            type(exc), exc, exc.__traceback__, message, culprit)))
    finally:
        _running.discard(token)
        if handle is not None:
            handle._set_done()


# One token per thread started here and still running its function:
# _thread._count() counts them with the interpreter's own threads.  (A set:
# add and discard are atomic under the GIL, also across OS threads.)
_running = set()
_real_count = _thread._count


def _count():
    return _real_count() + len(_running)


functools.update_wrapper(_count, _real_count)


def _spawn_thread(function, args, kwargs, handle=None):
    if not callable(function):
        raise TypeError("first arg must be callable")
    if not isinstance(args, tuple):
        raise TypeError("2nd arg must be a tuple")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise TypeError("optional 3rd arg must be a dictionary")
    token = object()
    _running.add(token)
    try:
        coro = _sched._spawn(
            _run_as_thread, (function, args, kwargs or {}, handle, token), {},
            _thread_name(function), _stack_size(), True,
            _preempt.threads_preemptible())
    except OSError as e:  # threading expects RuntimeError, as from _thread
        _running.discard(token)
        raise RuntimeError(f"can't start new thread: {e}") from e
    # Thread.start() waits until the thread runs: let it run first instead
    # of after every other runnable coroutine.
    _native.lib.coro_run_next(coro._handle)
    return _native.lib.coro_thread_ident(coro._handle)


def start_new_thread(function, args, kwargs=None):
    """_thread.start_new_thread on a coroutine; returns its ident."""
    return _spawn_thread(function, args, kwargs)


def _forget_dummy_thread(coro):
    """threading.current_thread() in a coroutine that is not a thread
    (interpose.spawn) registers a _DummyThread that nothing removes: drop it
    with the coroutine, so idents do not pile up in threading._active.  A
    coroutine that stands for a thread keeps it, as plain 3.11 keeps the
    dummy of a _thread.start_new_thread thread.  A coroutine_finished hook,
    so it runs in the coroutine's own thread state, under its ident."""
    if coro._thread:
        return
    ident = _thread.get_ident()
    thread = threading._active.get(ident)
    if type(thread) is threading._DummyThread:
        threading._active.pop(ident, None)


# ---- installation ---------------------------------------------------------

def install():
    """Make threads coroutines in this process (interpose run does it at
    start-up, before the program's code runs)."""
    global _installed
    if _installed:
        return
    r = _native.lib.thread_idents_enable()
    if r < 0:
        raise OSError(-r, f"interpose: cannot reserve thread identities: {os.strerror(-r)}")
    _sched._scheduler()
    # Every spawned coroutine now has a thread identity of its own
    # (native/hooks_pthread.c).
    _hooks.coroutine_finished.append(_forget_dummy_thread)
    # Signal handlers now run only in the main coroutine (the only one that
    # passes CPython's main-thread check): signal.signal needs no wrapper.
    _signals.use_native_main_thread()
    _versioned.install(_spawn_thread, start_new_thread)
    _thread.start_new_thread = start_new_thread
    _thread.start_new = start_new_thread
    _thread._count = _count
    _hooks.after_fork_in_child.append(_versioned.after_fork_in_child)
    _installed = True


def install_native():
    """Keep OS threads (INTERPOSE_THREADS=native): each thread the program
    starts gets a scheduler of its own, with its main coroutine's hooks on,
    before the thread's code runs.  Locks, Events and queues work across
    the threads (the sem hooks wake a coroutine parked on another thread)."""
    global _installed
    if _installed:
        return
    _versioned.install_native(_with_scheduler)
    _installed = True


def _with_scheduler(function):
    def run_with_scheduler(*args, **kwargs):
        _sched._scheduler()
        _native.lib.coro_set_hooks(1)
        if _preempt.threads_preemptible():  # its coroutines take turns
            _sched.set_preemptible(_native.lib.coro_current(), True)
        return function(*args, **kwargs)
    return run_with_scheduler
