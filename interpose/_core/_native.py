"""Loads libinterpose.so and declares every foreign function, once.

Functions that may park the calling coroutine are bound through ctypes.CDLL,
which releases the GIL around the call: that detaches the coroutine's thread
state, which is what makes switching stacks safe.  Functions that need the
GIL (they create thread states or touch Python objects) or are too short to
be worth releasing it are bound through ctypes.PyDLL.
"""
import errno
import hashlib
import os
import sys

from . import _compat
from ._ctypes_import import ctypes  # libffi's fd above the floor (see there)
from . import _settings
from . import _unloadable
from ._errors import NativeLibraryError

ABI_VERSION = 3  # must equal INTERPOSE_ABI_VERSION in native/interpose.h

# The package's directory (this module lives in its _core/), where the
# build puts the library.
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY_PATH = os.path.join(PACKAGE_DIR, "libinterpose.so")
_SOURCE_DIR = os.path.join(os.path.dirname(PACKAGE_DIR), "native")

PARK_TIMEOUT = 1  # INTERPOSE_PARK_TIMEOUT
READABLE = 1
WRITABLE = 2
# INTERPOSE_WAIT_*: why a parked coroutine waits (CoroInfo.wait_kind).
WAIT_PARK, WAIT_FD, WAIT_POLL, WAIT_LOCK, WAIT_SLEEP, WAIT_RESOLVE, WAIT_YIELD = range(1, 8)
# CoroInfo.state (enum ip_coro_state in native/internal.h).
RUNNABLE, RUNNING, PARKED = 1, 2, 3

_REBUILD = (
    "Rebuild it: 'pip install .' (or, in a source checkout, 'pip install -e .'"
    " or 'make -C native')."
)


class Stats(ctypes.Structure):
    _fields_ = [
        ("created", ctypes.c_uint64),
        ("alive", ctypes.c_uint64),
        ("switches", ctypes.c_uint64),
        ("parks", ctypes.c_uint64),
        ("timeouts", ctypes.c_uint64),
        ("epoll_waits", ctypes.c_uint64),
        ("preemptions", ctypes.c_uint64),
    ]


class CoroInfo(ctypes.Structure):
    """interpose_coro_info_t."""
    _fields_ = [
        ("handle", ctypes.c_void_p),
        ("sched", ctypes.c_void_p),
        ("id", ctypes.c_uint64),
        ("tid", ctypes.c_int32),
        ("state", ctypes.c_int32),
        ("wait_kind", ctypes.c_int32),
        ("wait_fd", ctypes.c_int32),
        ("wait_events", ctypes.c_int32),
        ("cancelled", ctypes.c_int32),
        ("is_main", ctypes.c_int32),
        ("shield", ctypes.c_int32),
        ("wait_obj", ctypes.c_void_p),
        ("wait_key", ctypes.c_void_p),
        ("timer_ns", ctypes.c_int64),
        ("deadline_ns", ctypes.c_int64),
        ("run_ns", ctypes.c_uint64),
        ("max_turn_ns", ctypes.c_uint64),
        ("turns", ctypes.c_uint64),
        ("held", ctypes.c_void_p * 4),
        ("frame", ctypes.c_void_p),
        ("name", ctypes.c_char * 64),
    ]


LATENCY_BUCKETS = 48


class SchedInfo(ctypes.Structure):
    """interpose_sched_info_t."""
    _fields_ = [
        ("sched", ctypes.c_void_p),
        ("tid", ctypes.c_int32),
        ("is_main_thread", ctypes.c_int32),
        ("stuck", ctypes.c_int32),
        ("alive", ctypes.c_int32),
        ("switches", ctypes.c_uint64),
        ("max_turn_ns", ctypes.c_uint64),
        ("latency", ctypes.c_uint64 * LATENCY_BUCKETS),
    ]


_p = ctypes.c_void_p
_i = ctypes.c_int
_i64 = ctypes.c_int64
_u64 = ctypes.c_uint64
_sz = ctypes.c_size_t

# name: (restype, argtypes, gil_held)
SIGNATURES = {
    "interpose_abi_version": (_i, [], True),
    "interpose_build_id": (ctypes.c_char_p, [], True),
    "interpose_preloaded": (_i, [], True),
    "interpose_py_bind": (_i, [ctypes.c_char_p, _p], True),
    "interpose_py_init": (_i, [ctypes.c_ulong, _p], True),
    "interpose_coro_spawn": (
        _p,
        [ctypes.py_object, _sz, ctypes.c_char_p, ctypes.POINTER(_u64),
         ctypes.POINTER(_i)],
        True,
    ),
    "interpose_sched_ensure": (_i, [], True),
    "interpose_coro_current": (_p, [], True),
    "interpose_coro_id": (_u64, [_p], True),
    "interpose_coro_prepare": (_i64, [], True),
    "interpose_coro_park": (_i, [_i64], False),
    "interpose_coro_unpark": (_i, [_p, _u64, _i], True),
    "interpose_coro_cancel": (_i, [_p, _u64], True),
    "interpose_coro_set_deadline": (_i, [_i64, ctypes.POINTER(_i64)], True),
    "interpose_coro_shield": (_i, [_i], True),
    "interpose_coro_set_hooks": (_i, [_i], True),
    "interpose_wait_fd": (_i, [_i, _i, _i64], False),
    "interpose_sched_stats": (_i, [ctypes.POINTER(Stats)], True),
    "interpose_sched_set_signal_fd": (_i, [_i], True),
    "interpose_sched_interrupt_main": (_i, [], True),
    "interpose_sched_runnable": (_i, [], True),
    "interpose_sched_defer_signal": (_i, [_i], True),
    "interpose_coro_run_next": (_i, [_p], True),
    "interpose_sched_set_signal_forward": (_i, [_i], True),
    "interpose_sched_self": (_p, [ctypes.POINTER(_u64)], True),
    "interpose_sched_probe": (
        _p, [_p, _u64, ctypes.POINTER(_u64), ctypes.POINTER(_p), ctypes.POINTER(_u64)],
        True),
    "interpose_sched_forget_root": (_i, [], True),
    "interpose_sched_destroy": (_i, [], True),
    "interpose_fd_internal_floor": (_i, [], True),
    "interpose_clock_ns": (_i64, [], True),
    "interpose_stack_default": (_sz, [], True),
    "interpose_stack_minimum": (_sz, [], True),
    "interpose_stack_maximum": (_sz, [], True),
    "interpose_stack_set_default": (_i, [_sz], True),
    "interpose_stack_set_guard": (_i, [_i], True),
    "interpose_stack_guard": (_i, [], True),
    "interpose_diag_coros": (
        ctypes.c_long, [ctypes.POINTER(CoroInfo), _sz, _i], True),
    "interpose_diag_scheds": (ctypes.c_long, [ctypes.POINTER(SchedInfo), _sz], True),
    "interpose_diag_fd_addr": (_i, [_i, _i, ctypes.c_char_p, _sz], True),
    "interpose_diag_set_notify_fd": (_i, [_i], True),
    "interpose_diag_arm": (_i, [], True),
    "interpose_diag_resolver_threads": (_i, [], True),
    "interpose_diag_start_thread": (_i, [ctypes.py_object, ctypes.c_char_p], True),
    "interpose_thread_idents_enable": (_i, [], True),
    "interpose_coro_thread_ident": (ctypes.c_size_t, [_p], True),
    "interpose_thread_os_ident": (ctypes.c_size_t, [], True),
    "interpose_preempt_start": (_i, [], True),
    # Released: the monitor may be waiting for the GIL as it is told to stop.
    "interpose_preempt_stop": (_i, [], False),
    "interpose_preempt_set_interval": (_i, [_i64], True),
    "interpose_preempt_monitor_tid": (_i, [], False),
    "interpose_coro_set_preemptible": (_i, [_p, _i], True),
}

# The C-API entry points the engine calls, by the name the library knows
# them under, and the symbol that provides each on this interpreter.
PY_API = {
    "PyThreadState_New": "PyThreadState_New",
    "PyThreadState_Get": "PyThreadState_Get",
    "PyThreadState_Clear": "PyThreadState_Clear",
    "PyThreadState_DeleteCurrent": "PyThreadState_DeleteCurrent",
    "PyThreadState_Delete": "PyThreadState_Delete",
    "PyEval_RestoreThread": "PyEval_RestoreThread",
    "PyEval_SaveThread": "PyEval_SaveThread",
    "PyObject_CallNoArgs": "PyObject_CallNoArgs",
    "Py_IncRef": "Py_IncRef",
    "Py_DecRef": "Py_DecRef",
    "PyErr_WriteUnraisable": "PyErr_WriteUnraisable",
    "PyThreadState_GetUnchecked": _compat.UNCHECKED_GET,
    "PyObject_GetArenaAllocator": "PyObject_GetArenaAllocator",
    "PyObject_SetArenaAllocator": "PyObject_SetArenaAllocator",
    "PyErr_SetInterruptEx": "PyErr_SetInterruptEx",
    "PyThreadState_GetFrame": "PyThreadState_GetFrame",
    "PyInterpreterState_ThreadHead": "PyInterpreterState_ThreadHead",
    "PyThreadState_Next": "PyThreadState_Next",
    "PyGILState_GetThisThreadState": "PyGILState_GetThisThreadState",
    "PyGILState_Ensure": "PyGILState_Ensure",
    "PyGILState_Release": "PyGILState_Release",
    "PyInterpreterState_Head": "PyInterpreterState_Head",
    "PyInterpreterState_Next": "PyInterpreterState_Next",
    "PyUnstable_ThreadState_SetStackProtection":
        "PyUnstable_ThreadState_SetStackProtection",
}


def source_build_id():
    """SHA-256 of native/ in a source checkout (as the Makefile computes it),
    or None for an installed package, which ships no sources."""
    if not os.path.isdir(_SOURCE_DIR):
        return None
    digest = hashlib.sha256()
    for name in sorted(os.listdir(_SOURCE_DIR)):
        if name.endswith((".c", ".h", ".S")):
            with open(os.path.join(_SOURCE_DIR, name), "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


class _Functions:
    """Attribute access to the bound foreign functions."""

    def __init__(self, cdll, pydll):
        for name, (restype, argtypes, gil_held) in SIGNATURES.items():
            fn = getattr(pydll if gil_held else cdll, name)
            fn.restype = restype
            fn.argtypes = argtypes
            setattr(self, name[len("interpose_"):], fn)
        for name, ctype in _VALUE_OUT.items():
            setattr(self, name, _value_out(getattr(self, name), ctype))


# Functions that return 0 or -errno and their value through a last
# out-parameter (never an in-band sentinel): bound as calls that return
# the value or raise OSError.  Each call gets its own out-variable: the
# GIL is held across the foreign call (PyDLL) but not up to the read of
# the value, so between the two another OS thread, or a coroutine that
# preempts this one at a bytecode boundary, could overwrite a shared one.
# Not for the calls of every park: an out-parameter costs about 0.3 us per
# call there (interpose_coro_current and _prepare need none, see
# interpose.h).
_VALUE_OUT = {
    "coro_set_deadline": _i64,  # the previous deadline (-1: none)
}


def _value_out(fn, ctype):
    byref = ctypes.byref

    def call(*args):
        out = ctype()
        r = fn(*args, byref(out))
        if r < 0:
            raise OSError(-r, os.strerror(-r))
        return out.value

    call.__name__ = fn.__name__
    return call


def _load():
    reason = _compat.unsupported_reason()
    if reason:
        raise NativeLibraryError(f"interpose: {reason}")
    try:
        # Parsed here, the one parser; the library gets the bytes below.
        stack_size = _settings.get("INTERPOSE_STACK_SIZE")
        stack_guard = _settings.get("INTERPOSE_STACK_GUARD")
    except _settings.SettingError as e:
        raise _settings.SettingError(f"interpose: {e}") from None
    if not os.path.exists(LIBRARY_PATH):
        raise NativeLibraryError(
            f"interpose: the native library {LIBRARY_PATH} is missing. {_REBUILD}"
        )
    try:
        cdll = ctypes.CDLL(LIBRARY_PATH)
        pydll = ctypes.PyDLL(LIBRARY_PATH)
    except OSError as e:
        raise NativeLibraryError(
            f"interpose: cannot load {LIBRARY_PATH}: {e}. {_REBUILD}"
        ) from None
    missing = [n for n in SIGNATURES if not hasattr(cdll, n)]
    if missing:
        raise NativeLibraryError(
            f"interpose: {LIBRARY_PATH} was built from older sources (it lacks"
            f" {', '.join(missing)}). {_REBUILD}"
        )
    fns = _Functions(cdll, pydll)
    abi = fns.abi_version()
    if abi != ABI_VERSION:
        raise NativeLibraryError(
            f"interpose: {LIBRARY_PATH} has ABI version {abi}, this package"
            f" needs {ABI_VERSION}: it was built from other sources. {_REBUILD}"
        )
    built = fns.build_id().decode()
    expected = source_build_id()
    if expected is not None and built != expected:
        raise NativeLibraryError(
            f"interpose: {LIBRARY_PATH} was built from older sources than"
            f" {_SOURCE_DIR} (library {built[:12]}, sources {expected[:12]})."
            f" {_REBUILD}"
        )
    _bind_python(fns)
    if stack_size is not None and fns.stack_set_default(stack_size) != 0:
        raise _settings.SettingError(  # the library's limits (stack.c) disagree
            f"interpose: INTERPOSE_STACK_SIZE={stack_size} is outside"
            f" {fns.stack_minimum()}..{fns.stack_maximum()} bytes")
    if stack_guard == "mprotect":
        fns.stack_set_guard(0)
    return fns


class SubinterpreterError(NativeLibraryError):
    """interpose was imported in a subinterpreter; it serves the main one."""


def _check_main_interpreter():
    """Refuse a subinterpreter: the engine keeps one interpreter's state
    (the thread states it creates belong to it), and the main interpreter's
    runtime must not be replaced under its coroutines."""
    api = ctypes.pythonapi
    for name in ("PyInterpreterState_Get", "PyInterpreterState_Main"):
        getattr(api, name).restype = ctypes.c_void_p
    if api.PyInterpreterState_Get() != api.PyInterpreterState_Main():
        raise SubinterpreterError(
            "interpose: cannot be used in a subinterpreter: it runs in the main"
            " interpreter only (code and threads of a subinterpreter run as"
            " plain Python, without coroutines)"
        )


def _bind_python(fns):
    _check_main_interpreter()
    api = ctypes.pythonapi
    for name, symbol in PY_API.items():
        fn = getattr(api, symbol, None)
        if fn is None and name in _compat.OPTIONAL_API:
            continue  # the library requires it where the version needs it
        if fn is None:
            raise NativeLibraryError(f"interpose: this interpreter lacks {symbol}")
        address = ctypes.cast(fn, ctypes.c_void_p).value
        if fns.py_bind(name.encode(), address) != 0:
            raise NativeLibraryError(f"interpose: the library does not know {name}")
    get_interp = api.PyInterpreterState_Get
    get_interp.restype = ctypes.c_void_p
    r = fns.py_init(sys.hexversion, get_interp())
    if r != 0:
        why = _INIT_ERRORS.get(-r, os.strerror(-r))
        raise NativeLibraryError(
            f"interpose: the native library refused this interpreter"
            f" ({sys.version.split()[0]}): {why}"
        )


# interpose_py_init's errors, as the one line a user reads.
_INIT_ERRORS = {
    errno.ENOENT: "CPython's gilstate key (what PyGILState_GetThisThreadState"
                  " reads) was not found, so C callbacks into Python could not"
                  " follow coroutines",
    errno.ENOSYS: "it lacks PyUnstable_ThreadState_SetStackProtection, which"
                  " CPython 3.14 and later need to run coroutines on stacks of"
                  " their own",
    errno.ENOTSUP: "unsupported version or thread state layout",
    errno.EXDEV: "the library already serves another interpreter of this"
                 " process",
}


def _started_as_command_line():
    """Whether this process is `python -m interpose ...` or the `interpose`
    script, which import this package before their own code can run.

    While -m locates the module, sys.argv[0] is "-m" (documented for the -m
    option); sys.orig_argv then names the module.  The console script is
    __main__ itself, a file named interpose.  Never while the boot hook runs
    (it reports for itself, and site must not see SystemExit)."""
    frame = sys._getframe()
    while frame is not None:
        if frame.f_globals.get("__name__") == "sitecustomize":
            return False
        frame = frame.f_back
    if sys.argv[:1] == ["-m"]:
        orig = getattr(sys, "orig_argv", [])
        for i, arg in enumerate(orig[1:-1], 1):
            if arg == "-m":
                return orig[i + 1] in ("interpose", "interpose.__main__")
        return False
    main_file = getattr(sys.modules.get("__main__"), "__file__", None) or ""
    return os.path.basename(main_file) == "interpose"


try:
    lib = _load()
except (NativeLibraryError, _settings.SettingError) as e:
    if not _started_as_command_line():
        raise
    # The command line reports the reason in one line (or, for `info`, in
    # its report) instead of the traceback of a failed package import.
    sys.exit(_unloadable.report(str(e)))

_check_signals = ctypes.pythonapi.PyErr_CheckSignals
_check_signals.restype = ctypes.c_int
_check_signals.argtypes = []


def check_signals():
    """Run pending Python signal handlers now (raises what they raise)."""
    _check_signals()


_type_modified = ctypes.pythonapi.PyType_Modified
_type_modified.restype = None
_type_modified.argtypes = [ctypes.py_object]


def type_modified(tp):
    """Tell CPython that tp's dict changed (invalidates method caches)."""
    _type_modified(tp)


_decref = ctypes.pythonapi.Py_DecRef
_decref.restype = None
_decref.argtypes = [ctypes.c_void_p]


def sched_self():
    """(handle, incarnation) of the calling thread's scheduler, for probe."""
    incarnation = _u64()
    return lib.sched_self(ctypes.byref(incarnation)), incarnation.value


def probe(sched, incarnation):
    """(switch count, live spawned coroutines, running coroutine's handle or
    None, its innermost frame or None) of a scheduler from sched_self();
    (0, 0, None, None) once that scheduler is gone.  The engine reads the
    frame itself, with the GIL held throughout, because a thread state
    handed back to Python could be deleted before Python used it."""
    switches = _u64()
    coro = _p()
    alive = _u64()
    ref = lib.sched_probe(sched, incarnation, ctypes.byref(switches),
                          ctypes.byref(coro), ctypes.byref(alive))
    frame = None
    if ref:
        frame = ctypes.cast(ref, ctypes.py_object).value  # a reference of ours
        _decref(ref)  # the probe's own (PyThreadState_GetFrame's new one)
    return switches.value, alive.value, coro.value, frame


def statistics_raw():
    stats = Stats()
    if lib.sched_stats(ctypes.byref(stats)) != 0:
        return None
    return stats


def spawn_raw(body, stack_size, name):
    """Return (handle, id); raise OSError(errno) on failure."""
    cid = ctypes.c_uint64()
    err = ctypes.c_int()
    handle = lib.coro_spawn(
        body, stack_size, name.encode("utf-8", "replace"), ctypes.byref(cid),
        ctypes.byref(err),
    )
    if not handle:
        raise OSError(-err.value, os.strerror(-err.value))
    return handle, cid.value


_decref = ctypes.pythonapi.Py_DecRef
_decref.restype = None
_decref.argtypes = [ctypes.c_void_p]


def diag_coros(frames=True):
    """Every live coroutine of every scheduler: a list of (CoroInfo, frame or
    None; always None without frames).  The garbage collector is paused meanwhile: the engine reads the
    frames with no lock but the GIL, which a finalizer could give away."""
    import gc

    enabled = gc.isenabled()
    gc.disable()
    try:
        cap = 64
        while True:
            buf = (CoroInfo * cap)()
            n = lib.diag_coros(buf, cap, 1 if frames else 0)
            if n < 0:
                return []
            if n <= cap:
                break
            _release_frames(buf, cap)
            cap = n + 16
    finally:
        if enabled:
            gc.enable()
    out = []
    for info in buf[:n]:
        frame = None
        if info.frame:
            frame = ctypes.cast(info.frame, ctypes.py_object).value
            _decref(info.frame)  # the engine's reference; frame holds one
            info.frame = None
        out.append((info, frame))
    return out


def _release_frames(buf, n):
    for info in buf[:n]:
        if info.frame:
            _decref(info.frame)
            info.frame = None


def diag_scheds():
    """Every scheduler: a list of SchedInfo."""
    cap = 8
    while True:
        buf = (SchedInfo * cap)()
        n = lib.diag_scheds(buf, cap)
        if n <= cap:
            return list(buf[:n])
        cap = n + 4


def fd_address(fd, peer):
    """The peer's (peer true) or own address of socket fd as text, or None."""
    buf = ctypes.create_string_buffer(256)
    if lib.diag_fd_addr(fd, 1 if peer else 0, buf, len(buf)) != 0:
        return None
    return buf.value.decode("utf-8", "replace")


def address_at(address):
    """The pointer stored at address (reads the process's memory)."""
    return ctypes.c_void_p.from_address(address).value


_libc = ctypes.CDLL(None)
_sem_getvalue = _libc.sem_getvalue
_sem_getvalue.restype = ctypes.c_int
_sem_getvalue.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]


_setname = _libc.pthread_setname_np
_setname.restype = ctypes.c_int
_setname.argtypes = [ctypes.c_ulong, ctypes.c_char_p]


def name_os_thread(ident, name):
    """Give the OS thread behind a _thread ident (its pthread_t) the name
    that ps, top and /proc/PID/task/TID/comm show (15 bytes at most)."""
    _setname(ident, name.encode()[:15])


def sem_value(sem):
    """The value of the semaphore at address sem (0: a lock that is held)."""
    value = ctypes.c_int()
    if _sem_getvalue(sem, ctypes.byref(value)) != 0:
        return None
    return value.value
