"""Waiting for one of interpose's own OS threads to be gone from the kernel.

CPython 3.12+ warns at os.fork() when /proc/self/stat counts more than one
thread.  interpose stops its helper threads (the preemption monitor, the
diagnostics thread) before a fork so that a program whose threads are all
coroutines forks as the single-threaded process it is under plain Python.
A joined thread can still be counted for a moment: the kernel clears the
joiner's futex before it drops the thread from the thread group.  So the
stop waits until the thread's /proc entry is gone as well.
"""
import os
import time

_GONE_TIMEOUT = 1.0  # seconds; a helper that has returned exits in microseconds


def wait_gone(tid):
    """Return once kernel thread tid has left this process (or after a
    bounded wait, in which case the fork merely warns as it would)."""
    if not tid:
        return
    path = f"/proc/self/task/{tid}"
    deadline = time.monotonic() + _GONE_TIMEOUT
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.0002)
