"""The one place that knows which Python versions interpose supports."""
import platform
import sys
import sysconfig

# 3.12 made the current thread state thread-local (PEP 684 work).
PY312 = sys.version_info[:2] >= (3, 12)
# 3.13 renamed _PyThreadState_UncheckedGet to PyThreadState_GetUnchecked.
PY313 = sys.version_info[:2] >= (3, 13)

SUPPORTED_RANGE = ((3, 11), (3, 13))

# The C-API function that reads the current thread state without failing
# when none is attached.
UNCHECKED_GET = (
    "PyThreadState_GetUnchecked" if PY313 else "_PyThreadState_UncheckedGet"
)


def unsupported_reason():
    """Return why this interpreter cannot run interpose, or None."""
    version = ".".join(map(str, sys.version_info[:3]))
    if platform.python_implementation() != "CPython":
        return (
            f"interpose needs CPython; this is {platform.python_implementation()}"
            f" {version}"
        )
    low, high = SUPPORTED_RANGE
    if not low <= sys.version_info[:2] <= high:
        return (
            f"interpose supports CPython {low[0]}.{low[1]} to {high[0]}.{high[1]};"
            f" this is {version}. Run it with a supported interpreter"
            " (python3.11, python3.12 or python3.13)."
        )
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        return (
            f"interpose does not support free-threaded CPython builds ({version}t):"
            " its coroutine switching relies on the GIL. Use a default build."
        )
    return None

# Where a _thread.lock keeps its semaphore: on 3.11 and 3.12 the object
# (lockobject in Modules/_threadmodule.c) holds a PyThread_type_lock, on
# Linux a malloc'ed sem_t, right after its header; 3.13 made the lock a
# PyMutex, which waits on a per-waiter semaphore, so no semaphore names the
# lock.  The deadlock report matches lock objects with the semaphore a
# coroutine waits on, where there is one.  Delete with 3.12 support.
LOCK_SEM_OFFSET = None if PY313 else 2 * 8
