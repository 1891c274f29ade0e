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

# Which lock a coroutine waits for (interpose/_diagnostics/_dump.py): the
# engine records a key per lock wait (native/pyver.c ip__pyver_lock_key), and
# lock_key_field gives the same key for a lock object, so the dump finds
# the waited-for lock among the objects the waiting frame can see.
# Objects (lockobject and rlockobject in Modules/_threadmodule.c;
# PyObject_HEAD is 16 bytes):
#   3.11, 3.12  Lock and RLock hold a PyThread_type_lock (on Linux a
#               malloc'ed sem_t) right after the header: the key is that
#               pointer, the semaphore the waiter sleeps on.
#   3.13        Lock is { PyObject_HEAD; PyMutex lock; }: waiters park on
#               the PyMutex, the key is its address.  RLock still holds a
#               sem_t pointer (as 3.12).
#   3.14, 3.15  RLock is { PyObject_HEAD; _PyRecursiveMutex lock; }, whose
#               first field is a PyMutex: the key is its address, as Lock's.
# A wrong layout gives keys that match no wait: no name, never a wrong one.
_LOCK_FIELD = 2 * 8
_KEY_IS_FIELD_ADDRESS = {  # type name -> key = field's address (else: its value)
    "lock": PY313,
    "RLock": PY314,
}
# Whether the engine knows the holder of a threading.Lock: 3.11 and 3.12
# take an uncontended lock with sem_trywait, which the library hooks; from
# 3.13 PyMutex takes it with one atomic compare-and-swap in CPython and
# stores no owner, so nothing outside the interpreter can tell who holds it
# (docs/diagnostics.md).  RLock records its owner on every version.
LOCK_OWNERS_KNOWN = not PY313


def lock_key_field(obj):
    """(address, is_key) for lock object obj: the address of the field its
    key comes from and whether that address is the key (else the pointer
    stored there is); None for anything but a _thread.lock or RLock."""
    import _thread

    kind = type(obj)
    if kind is _thread.LockType:
        return id(obj) + _LOCK_FIELD, _KEY_IS_FIELD_ADDRESS["lock"]
    if kind is _thread.RLock:
        return id(obj) + _LOCK_FIELD, _KEY_IS_FIELD_ADDRESS["RLock"]
    return None
