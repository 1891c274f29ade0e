"""Signals with coroutines on the main thread.

Two things CPython does not do by itself here:

* Wake the hub.  A signal that arrives while the hub is between epoll_wait
  calls interrupts nothing; Python then only notes it.  The wakeup fd
  (signal.set_wakeup_fd) makes CPython's C handler write a byte to a pipe
  whose read end the hub watches, and the hub wakes the main coroutine with
  EINTR.  A program that sets a wakeup fd of its own (asyncio does) gets it
  through signal.set_wakeup_fd as always; interpose's pipe stays installed
  and the hub copies every byte it drains to the program's fd.
* Run handlers in the main coroutine.  On 3.11 and 3.12 CPython runs a
  Python handler in whichever thread state of the main OS thread runs
  Python next: any coroutine that shares the OS thread's ident.  Outside
  `interpose run` spawned coroutines do, so each handler is installed
  wrapped; run in another coroutine, the wrapper hands the signal to the
  engine, which wakes the main coroutine and trips the signal again as it
  resumes, so the handler (and the KeyboardInterrupt of the default SIGINT
  handler) runs there, as it would in the main thread.  Under `interpose
  run` every spawned coroutine has a thread ident of its own
  (native/hooks_pthread.c), CPython's own main-thread check keeps handlers
  in the main coroutine, and use_native_main_thread() puts signal.signal
  and signal.getsignal back untouched.

The replacements carry the names and docstrings of the functions they
stand for, and 'signal' as their module (programs compare __module__).

Registered with the core (_core/_hooks.py) as this module is imported: the
main thread's scheduler start installs the pipe and the wrappers, and a
forked child renews the pipe.
"""
import fcntl
import functools
import os
import signal

from .._core import _hooks
from .._core import _native
from .._core import _sched

_lib = _native.lib
_real_signal = signal.signal
_real_getsignal = signal.getsignal
_real_set_wakeup_fd = signal.set_wakeup_fd

# The wakeup pipe interpose installed, if it did: (read end, write end).
_pipe = None
# The fd the program gave set_wakeup_fd (-1: none), as it will read it back.
_program_fd = -1


class _InMainCoroutine:
    """A Python signal handler that runs only in the main coroutine."""

    __slots__ = ("handler",)

    def __init__(self, handler):
        self.handler = handler

    def __call__(self, signum, frame):
        if _lib.coro_current() == _main_handle():
            return self.handler(signum, frame)
        _lib.sched_defer_signal(signum)
        return None


def _main_handle():
    return _sched._scheduler().main._handle


def _wrapped(handler):
    if callable(handler) and not isinstance(handler, _InMainCoroutine):
        return _InMainCoroutine(handler)
    return handler


def _unwrapped(handler):
    return handler.handler if isinstance(handler, _InMainCoroutine) else handler


def _signal(signalnum, handler):
    return _unwrapped(_real_signal(signalnum, _wrapped(handler)))


def _getsignal(signalnum):
    return _unwrapped(_real_getsignal(signalnum))


def _set_wakeup_fd(fd, /, *, warn_on_full_buffer=True):
    # signal.set_wakeup_fd, chained behind interpose's pipe (the docstring
    # is the original's, see _as_original).
    global _program_fd
    if _pipe is None:
        return _real_set_wakeup_fd(fd, warn_on_full_buffer=warn_on_full_buffer)
    # Let CPython validate fd (non-blocking, main thread, an int) exactly as
    # it would, then put the pipe back.
    _real_set_wakeup_fd(fd, warn_on_full_buffer=warn_on_full_buffer)
    _real_set_wakeup_fd(_pipe[1], warn_on_full_buffer=False)
    previous, _program_fd = _program_fd, fd
    _lib.sched_set_signal_forward(fd)
    return previous


def _as_original(replacement, original):
    """replacement, presenting itself as original (name, doc) and as a
    Python function of the signal module: signal.signal is one already;
    set_wakeup_fd is a builtin of _signal, and a Python function found in
    the signal module must say 'signal' (CPython's test_signal checks)."""
    functools.update_wrapper(replacement, original)
    replacement.__module__ = "signal"
    return replacement


_signal = _as_original(_signal, _real_signal)
_getsignal = _as_original(_getsignal, _real_getsignal)
_set_wakeup_fd = _as_original(_set_wakeup_fd, _real_set_wakeup_fd)


def _move_internal(fd):
    """fd moved above the engine's internal floor, out of the way of the
    program's own fds (native/fdtable.c says why); fd if it cannot move.
    Through the hooked fcntl and close, so the fd table follows."""
    floor = _lib.fd_internal_floor()
    if fd >= floor:
        return fd
    try:
        high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor)
    except OSError:
        return fd
    os.close(fd)
    return high


def _open_pipe():
    """Install a fresh wakeup pipe and hand its read end to the hub; return
    the wakeup fd it replaced.  The pipe stays open for the life of the
    process, like the wakeup fd."""
    global _pipe
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    r, w = _move_internal(r), _move_internal(w)
    previous = _real_set_wakeup_fd(w, warn_on_full_buffer=False)
    _pipe = (r, w)
    _lib.sched_set_signal_fd(r)
    return previous


def install():
    """On the main thread, once its scheduler exists (scheduler_started)."""
    previous = _open_pipe()
    if previous != -1:  # set before interpose started: keep it fed
        global _program_fd
        _program_fd = previous
        _lib.sched_set_signal_forward(previous)
    for signum in signal.valid_signals():
        try:
            handler = _real_getsignal(signum)
        except (OSError, ValueError):
            continue
        if callable(handler):
            _real_signal(signum, _wrapped(handler))
    signal.signal = _signal
    signal.getsignal = _getsignal
    signal.set_wakeup_fd = _set_wakeup_fd


def use_native_main_thread():
    """Under `interpose run` only the main coroutine passes CPython's
    main-thread check, so handlers need no wrapper: unwrap the installed
    ones and give signal.signal and signal.getsignal back."""
    if signal.signal is _real_signal:
        return
    for signum in signal.valid_signals():
        try:
            handler = _real_getsignal(signum)
        except (OSError, ValueError):
            continue
        if isinstance(handler, _InMainCoroutine):
            _real_signal(signum, handler.handler)
    signal.signal = _real_signal
    signal.getsignal = _real_getsignal


def renew_after_fork():
    """A forked child must not share the parent's wakeup pipe: the child's
    hub would drain bytes meant for the parent's."""
    if _pipe is None:
        return
    for fd in _pipe:
        os.close(fd)
    _open_pipe()
    _lib.sched_set_signal_forward(_program_fd)


def _scheduler_started(sched):
    if sched.is_main_thread:
        install()


_hooks.scheduler_started.append(_scheduler_started)
_hooks.after_fork_in_child.append(renew_after_fork)
