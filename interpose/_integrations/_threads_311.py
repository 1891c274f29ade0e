"""Threads on CPython 3.11 and 3.12 (chosen by _threads.py): threading
starts a thread through _thread.start_new_thread, which it keeps as
threading._start_new_thread, and joins it through the thread's own lock,
which the sem hooks already make cooperative.

Delete when 3.12 leaves support (_compat.SUPPORTED_RANGE), with the choice
in _threads.py.
"""
import _thread
import threading


def install(spawn_thread, start_new_thread):
    """threading starts coroutines through start_new_thread (_threads.py
    replaces _thread's own names on every version)."""
    threading._start_new_thread = start_new_thread


def install_native(with_scheduler):
    """OS threads whose function runs wrapped by with_scheduler."""
    real = _thread.start_new_thread

    def start_new_thread(function, args, kwargs=None):
        if kwargs is None:
            return real(with_scheduler(function), args)
        return real(with_scheduler(function), args, kwargs)

    threading._start_new_thread = start_new_thread
    _thread.start_new_thread = _thread.start_new = start_new_thread


def after_fork_in_child():
    """Nothing to do: threading rebuilds its own tables in the child."""
