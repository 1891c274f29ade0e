"""Threads on CPython 3.13 and later (chosen by _threads.py): threading
starts a thread through _thread.start_joinable_thread and joins it, and
waits for non-daemon threads at exit, through a _thread._ThreadHandle.  For
a thread that is a coroutine, the handle is ours (_Handle).

Delete with the version-neutral part of _threads.py's choice once 3.12 is
the oldest version left out of support (see _threads_311.py).
"""
import _thread
import threading
import weakref

# _threads.py's _spawn_thread(function, args, kwargs, handle) -> ident, set
# by install().
_spawn_thread = None
# CPython's own _thread.start_joinable_thread, kept by install().
_os_start_joinable_thread = None


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
        if timeout is not None and not (
                isinstance(timeout, (int, float)) and timeout < 0):
            # 3.13's _ThreadHandle.join converts the timeout before anything
            # else, so join(inf) raises OverflowError even for a finished
            # thread.  A fresh lock's acquire uses the same conversion and
            # returns at once: it raises exactly what the real join raises.
            _thread.allocate_lock().acquire(True, timeout)
        if (self.ident is not None and self.ident == _thread.get_ident()
                and not self._finished):
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
    """3.13's _thread.start_joinable_thread on a coroutine.

    A handle the caller made itself with _thread._ThreadHandle() (CPython's
    own tests do) keeps its state in C, where a coroutine cannot report its
    end: that thread is an OS thread, started by CPython exactly as without
    interpose, and its hooked calls block it alone.  Every other way of
    starting a thread (threading.Thread, _thread.start_new_thread, no handle
    or one of threading's) makes a coroutine."""
    if handle is None:
        handle = _Handle()
    elif not isinstance(handle, _Handle):
        return _os_start_joinable_thread(function, handle=handle,
                                         daemon=daemon)
    if handle.ident is not None:
        # As CPython's ThreadHandle_start: a handle starts one thread.
        raise RuntimeError("thread already started")
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


def install(spawn_thread, start_new_thread):
    """threading starts coroutines through spawn_thread(function, args,
    kwargs, handle) -> ident (_threads.py replaces _thread.start_new_thread
    with start_new_thread on every version)."""
    global _spawn_thread, _os_start_joinable_thread
    _spawn_thread = spawn_thread
    if _thread.start_joinable_thread is not start_joinable_thread:
        _os_start_joinable_thread = _thread.start_joinable_thread
    _thread.start_joinable_thread = start_joinable_thread
    threading._start_joinable_thread = start_joinable_thread
    threading._ThreadHandle = _Handle
    threading._thread_shutdown = _make_shutdown(threading._thread_shutdown)


def install_native(with_scheduler):
    """OS threads whose function runs wrapped by with_scheduler."""
    real = _thread.start_joinable_thread

    def start_joinable_thread(function, handle=None, daemon=True):
        return real(with_scheduler(function), handle=handle, daemon=daemon)

    _thread.start_joinable_thread = start_joinable_thread
    threading._start_joinable_thread = start_joinable_thread


def after_fork_in_child():
    """Threads other than the forking one are gone (threading has already
    rebuilt its tables): their handles report done, as CPython's do."""
    me = _thread.get_ident()
    for handle in list(_handles):
        if handle.ident != me:
            handle._set_done()
