"""The one place on the Python side that knows CPython versions: which ones
interpose supports, how each refusal is worded, and the version-specific
facts the runtime acts on (native/pyver.c holds the engine's).

Supported: CPython 3.11, 3.12, 3.13, 3.14 from 3.14.1, and 3.15, with the
GIL.  When the oldest supported version moves up, delete its predicate and
every branch that tests it.
"""
import platform
import sys
import sysconfig

# 3.12 made the current thread state thread-local (PEP 684 work).
PY312 = sys.version_info[:2] >= (3, 12)
# 3.13 renamed _PyThreadState_UncheckedGet to PyThreadState_GetUnchecked,
# and threading starts threads through _thread.start_joinable_thread
# (interpose/_integrations/_threads.py picks _threads_313.py by it).
PY313 = sys.version_info[:2] >= (3, 13)
# 3.13 reports an exception that ends a _thread thread with
# PyErr_FormatUnraisable: the function's repr is in the message and the
# hook gets no object; 3.11 and 3.12 pass the function as the object.
THREAD_ERROR_NAMES_FUNCTION = PY313
# 3.12 made os.fork() warn in a process that /proc/self/stat counts as
# multi-threaded (gh-100228); interpose's helper threads must not count.
FORK_WARNS_WITH_THREADS = PY312
# 3.14 checks C recursion against the stack pointer (gh-130396), so each
# coroutine's thread state is told its own stack (native/pyver.c).  Its
# threading module names the OS thread after each Thread (gh-59705): for a
# converted thread, pthread_setname_np names the coroutine's ident instead
# (native/hooks_pthread.c), so the shared OS thread keeps its name.
PY314 = sys.version_info[:2] >= (3, 14)
# 3.14's threading.Condition.wait tests `timeout <= 0` where 3.11-3.13
# tested `timeout > 0`, so a NaN timeout no longer returns at once: it
# reaches lock.acquire(True, nan), which raises ValueError.  Event.wait,
# Condition.wait_for, Semaphore.acquire and queue.Queue's waits go through
# Condition.wait and inherit it (interpose/_integrations/_sync.py _wait_deadline).
NAN_TIMEOUT_WAITS = PY314

SUPPORTED_RANGE = ((3, 11), (3, 15))
# The trove classifiers pyproject.toml should list (tests/test_pyver.py
# checks that it does).
SUPPORTED_VERSIONS = ("3.11", "3.12", "3.13", "3.14", "3.15")
# 3.14.0 lacks the stack-protection API (gh-139653, in 3.14.1).
FIRST_314 = (3, 14, 1)

# The C-API function that reads the current thread state without failing
# when none is attached.
UNCHECKED_GET = (
    "PyThreadState_GetUnchecked" if PY313 else "_PyThreadState_UncheckedGet"
)
# C-API functions bound only where the interpreter has them; the library
# requires the ones its version needs (interpose_py_init says -ENOSYS).
OPTIONAL_API = ("PyUnstable_ThreadState_SetStackProtection",)

# The smallest coroutine stack, and why (the engine enforces it: invariant,
# equal to interpose_stack_minimum(), see ip__pyver_min_stack in pyver.c).
STACK_MINIMUM = 96 * 1024 if PY314 else 16 * 1024
STACK_MINIMUM_REASON = (
    "CPython 3.14 and later need 96 KiB of C stack per thread state for"
    " their recursion checks" if PY314 else "the engine's own minimum"
)


def _free_threaded():
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        return True
    is_gil_enabled = getattr(sys, "_is_gil_enabled", None)
    return is_gil_enabled is not None and not is_gil_enabled()


def unsupported_reason(version_info=None, implementation=None,
                       free_threaded=None):
    """Return why this interpreter cannot run interpose, as one line, or
    None.  The arguments stand in for this interpreter's (tests)."""
    info = tuple(sys.version_info[:3] if version_info is None else version_info[:3])
    impl = implementation or platform.python_implementation()
    gil_free = _free_threaded() if free_threaded is None else free_threaded
    version = ".".join(map(str, info))
    if impl != "CPython":
        return f"this is {impl} {version}; interpose needs CPython"
    low, high = SUPPORTED_RANGE
    if not low <= info[:2] <= high:
        return (
            f"this is CPython {version}; interpose supports {low[0]}.{low[1]} to"
            f" {high[0]}.{high[1]}. Run it with a supported interpreter"
            f" ({', '.join('python' + v for v in SUPPORTED_VERSIONS)})."
        )
    if info[:2] == FIRST_314[:2] and info < FIRST_314:
        return (
            f"this is CPython {version}; interpose needs 3.14.1 or later on 3.14:"
            f" {version} lacks PyUnstable_ThreadState_SetStackProtection, so"
            " coroutines would defeat its C stack checks (leaked objects, no"
            " RecursionError). Upgrade to 3.14.1 or later."
        )
    if gil_free:
        return (
            f"this is a free-threaded CPython build ({version}t), which interpose"
            " does not support:"
            " its coroutines share one thread state per OS thread at a time"
            " under the GIL. Use the default (GIL) build of the interpreter."
        )
    return None

# Where a _thread.lock keeps its semaphore: on 3.11 and 3.12 the object
# (lockobject in Modules/_threadmodule.c) holds a PyThread_type_lock, on
# Linux a malloc'ed sem_t, right after its header; 3.13 made the lock a
# PyMutex, which waits on a per-waiter semaphore, so no semaphore names the
# lock.  The deadlock report matches lock objects with the semaphore a
# coroutine waits on, where there is one.  Delete with 3.12 support.
LOCK_SEM_OFFSET = None if PY313 else 2 * 8
