"""Coroutine dumps: every coroutine of every scheduler in the process, with
its name, id, state, Python stack and what it waits for, in one text format
shared by interpose.dump(), `interpose ps PID`, the SIGQUIT dump, the
deadlock report and the blocking monitor.

A dump runs with the GIL held and never parks: it may be taken from a
helper OS thread while every coroutine is parked, or from a signal handler
in the main coroutine.  It reads the engine's snapshot (diag.c) and adds
what only Python knows: thread names, the wait that a Python-level park
stands for (read off its stack), socket addresses, and which lock object a
coroutine waits for and which coroutine holds it.
"""
import _thread
import dataclasses
import os
import re
import sys
import threading
import time
import traceback

from .._core import _compat
from .._core import _native
from .._core import _sched
from .._core._time import format_ms, format_seconds, ns_to_seconds
from .._integrations import _sync

_lib = _native.lib

STATES = {_native.RUNNABLE: "runnable", _native.RUNNING: "running",
          _native.PARKED: "parked"}
# The runtime's own source directories: the interpose package and its
# subpackages (this module lives in _diagnostics/); not _boot/.
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_RUNTIME_DIRS = frozenset([_PACKAGE_DIR] + [
    os.path.join(_PACKAGE_DIR, sub)
    for sub in ("_core", "_integrations", "_diagnostics")])


def _in_package(path):
    return os.path.dirname(os.path.abspath(path)) in _RUNTIME_DIRS
_LOCK_TYPES = (_thread.LockType, _thread.RLock)


@dataclasses.dataclass
class CoroutineView:
    """One coroutine as a dump shows it."""

    id: int
    name: str
    state: str
    tid: int  # the OS thread its scheduler runs on
    sched: int  # the engine's scheduler handle
    is_main: bool
    waits_for: str  # empty unless parked
    timeout_ns: int  # when its park times out (clock_ns), or -1
    deadline_ns: int
    cancelled: bool
    run_ns: int
    max_turn_ns: int
    turns: int
    wait_kind: int
    wait_sem: int  # the semaphore of a lock wait, or 0
    held: tuple  # semaphores it took
    frame: object  # innermost frame or None
    ident: int = 0  # its threading ident (a thread's main coroutine: the thread's)
    wait_lock: object = None  # the lock object it waits for, where found
    join_ident: int = 0  # the ident of the thread it joins, or 0
    owner: "CoroutineView | None" = None  # holder of the lock it waits for


# ---- names ------------------------------------------------------------------

def _os_thread_names():
    """native id -> Thread.name for OS threads that one Thread stands for
    (converted threads share their OS thread's native id: left out)."""
    names, seen = {}, set()
    for thread in threading.enumerate():
        tid = thread.native_id
        if tid in seen:
            names.pop(tid, None)
        elif tid is not None:
            names[tid] = thread.name
        seen.add(tid)
    return names


def _names(idents=None):
    """handle -> name from the Python runtime, and sched handle -> the OS
    thread's name.  A thread's main coroutine is named after the OS thread
    (its Thread's current name with native threads), else 'main'.  idents,
    if given, gets handle -> threading ident."""
    by_handle, by_sched = {}, {}
    idents = {} if idents is None else idents
    by_tid = _os_thread_names()
    active = dict(threading._active)
    for ident, sched in list(_sched._schedulers.items()):
        thread = threading._active.get(ident)
        name = sched.name
        if thread is not None and by_tid.get(thread.native_id) == thread.name:
            name = thread.name
        if sched.native:
            by_sched[sched.native] = name
        for handle, coro in list(sched.live.items()):
            # A converted thread's ident is its coroutine's pthread_self()
            # (native/hooks_pthread.c): its Thread has the current name.
            thread = None
            if coro._thread:
                idents[handle] = _lib.coro_thread_ident(handle) or 0
                thread = active.get(idents[handle] or -1)
            by_handle[handle] = thread.name if thread is not None else coro.name
        if sched.main is not None:
            by_handle.setdefault(sched.main._handle,
                                 "main" if name == "MainThread" else name)
            idents.setdefault(sched.main._handle, ident)
    return by_handle, by_sched


# ---- wait reasons -----------------------------------------------------------

def _fd_kind(fd):
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def _pidfd_pid(fd):
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("Pid:"):
                    return line.split()[1]
    except OSError:
        pass
    return "?"


def describe_fd(fd, events):
    """'recv fd 7 from 127.0.0.1:5000' and the like."""
    kind = _fd_kind(fd)
    reading = events & _native.READABLE
    if kind.startswith("socket:"):
        peer = _native.fd_address(fd, True)
        if peer is not None:
            return (f"recv fd {fd} from {peer}" if reading
                    else f"send fd {fd} to {peer}")
        own = _native.fd_address(fd, False) or "?"
        return (f"accept fd {fd} on {own}" if reading
                else f"connect fd {fd} from {own}")
    if kind == "anon_inode:[pidfd]":
        return f"waitpid for child {_pidfd_pid(fd)} (pidfd {fd})"
    verb = "read" if reading else "write"
    if events == _native.READABLE | _native.WRITABLE:
        verb = "read/write"
    return f"{verb} fd {fd} ({kind or 'closed'})"


def _lock_key(obj):
    """The key a wait for lock object obj records, or None (see _compat)."""
    field = _compat.lock_key_field(obj)
    if field is None:
        return None
    address, is_key = field
    return address if is_key else _native.address_at(address)


def _find_lock(frame, key):
    """(name, lock) of the lock object whose key is key, searched in the
    innermost frame's locals, their attributes and its globals, or None."""
    if not key or frame is None:
        return None
    candidates = []
    try:
        for name, value in list(frame.f_locals.items()):
            candidates.append((name, value))
            attrs = getattr(value, "__dict__", None)
            if isinstance(attrs, dict):
                for attr, inner in list(attrs.items()):
                    candidates.append((f"{name}.{attr}", inner))
        candidates.extend(list(frame.f_globals.items()))
    except Exception:  # a dump never fails on what it inspects
        return None
    for name, value in candidates:
        if type(value) in _LOCK_TYPES and _lock_key(value) == key:
            return name, value
    return None


def _join_target(frame):
    """(name, ident) of the thread a join waits for, or None: Thread.join
    (3.13+) and Thread._wait_for_tstate_lock (3.11, 3.12) of a native
    thread, interpose's _Handle.join (3.13+) of a converted one."""
    if frame is None or frame.f_code.co_name not in (
            "_wait_for_tstate_lock", "join"):
        return None
    target = frame.f_locals.get("self")
    if isinstance(target, threading.Thread):
        return target.name, target.ident or 0
    if type(target).__name__ == "_Handle" and isinstance(
            getattr(target, "ident", None), int):
        thread = threading._active.get(target.ident)
        name = thread.name if thread is not None else str(target.ident)
        return name, target.ident
    return None


def _runtime_frame(frame):
    """The innermost frame of the Python runtime's own wait (interpose's own
    sources, the wait queue skipped), or None."""
    while frame is not None:
        path = frame.f_code.co_filename
        if (_in_package(path)
                and getattr(frame.f_code, "co_qualname", None) != "WaitQueue.wait"):
            return frame
        frame = frame.f_back
    return None


def _describe_park(frame):
    f = _runtime_frame(frame)
    if f is None:
        return "a park of the runtime"
    qualname = getattr(f.f_code, "co_qualname", f.f_code.co_name)
    local = f.f_locals
    me = local.get("self")
    if qualname == "Coroutine.join" and me is not None:
        return f"join coroutine {me.id} {me.name!r}"
    if qualname == "_Handle.join" and me is not None:
        return f"join thread {me.ident}"
    if qualname == "sleep":
        return "sleep"
    if qualname == "_wait_fd" and isinstance(local.get("fd"), int):
        return describe_fd(local["fd"], local.get("events", 1))
    if me is not None and type(me).__module__ == _sync.__name__:
        return f"{qualname} on interpose.{type(me).__name__} at {id(me):#x}"
    return qualname


def _describe_lock(info, frame):
    """(text, lock object or None, joined ident or 0) of a lock wait."""
    found = _find_lock(frame, info.wait_key)
    name, lock = found if found is not None else (None, None)
    code = frame.f_code.co_name if frame is not None else "?"
    label = f"lock {name!r}" if name else "lock"
    text = f"{label} (semaphore {info.wait_obj or 0:#x}) in {code}()"
    target = _join_target(frame)
    if target is None:
        return text, lock, 0
    return f"join thread {target[0]!r}: {text}", lock, target[1]


def _describe(info, frame):
    kind = info.wait_kind
    if kind == _native.WAIT_FD:
        return describe_fd(info.wait_fd, info.wait_events)
    if kind == _native.WAIT_POLL:  # the caller's events are unknown: say reading
        first = describe_fd(info.wait_fd, _native.READABLE)
        if info.wait_events == 1:
            return f"poll: {first}"
        return f"poll on {info.wait_events} fds, the first: {first}"
    if kind == _native.WAIT_LOCK:
        return _describe_lock(info, frame)[0]
    if kind == _native.WAIT_SLEEP:
        return "sleep"
    if kind == _native.WAIT_RESOLVE:
        return "name lookup (resolver thread)"
    if kind == _native.WAIT_YIELD:
        return "its turn (time slice used up)"
    if kind == _native.WAIT_PARK:
        return _describe_park(frame)
    return "?"


# ---- snapshot ---------------------------------------------------------------

def snapshot():
    """(coroutines, schedulers): CoroutineViews grouped by scheduler order,
    and the engine's SchedInfo list."""
    scheds = _native.diag_scheds()
    raw = _native.diag_coros()
    idents = {}
    by_handle, _ = _names(idents)
    views = []
    for info, frame in raw:
        state = STATES.get(info.state, f"state {info.state}")
        name = by_handle.get(info.handle) or info.name.decode("utf-8", "replace")
        parked = info.state == _native.PARKED
        lock_wait = parked and info.wait_kind == _native.WAIT_LOCK
        lock, joins = None, 0
        if lock_wait:
            waits_for, lock, joins = _describe_lock(info, frame)
        else:
            waits_for = _describe(info, frame) if parked else ""
        views.append(CoroutineView(
            id=info.id, name=name, state=state, tid=info.tid,
            sched=info.sched, is_main=bool(info.is_main),
            waits_for=waits_for,
            timeout_ns=info.timer_ns, deadline_ns=info.deadline_ns,
            cancelled=bool(info.cancelled), run_ns=info.run_ns,
            max_turn_ns=info.max_turn_ns, turns=info.turns,
            wait_kind=info.wait_kind if parked else 0,
            wait_sem=(info.wait_obj or 0) if lock_wait else 0,
            held=tuple(h for h in info.held if h), frame=frame,
            ident=idents.get(info.handle, 0), wait_lock=lock, join_ident=joins,
        ))
    _link_owners(views)
    order = {s.sched: i for i, s in enumerate(scheds)}
    views.sort(key=lambda v: (order.get(v.sched, 1 << 30), not v.is_main, v.id))
    return views, scheds


_RLOCK_OWNER = re.compile(r"^<locked \S+ object owner=(\d+) ")


def _rlock_owner(lock):
    """The ident of the thread holding RLock lock, or 0.  RLock records its
    owner on every version; its repr shows it (no memory is read)."""
    match = _RLOCK_OWNER.match(repr(lock))
    return int(match.group(1)) if match else 0


def _semaphore_holder(v, views):
    """The one coroutine that took v's semaphore last and has not posted it
    since, when the semaphore's value is 0 (taken); else None.  Two
    claimants (a lock released by another coroutine than its taker leaves a
    stale claim) give no owner rather than a wrong one."""
    holders = [o for o in views if o is not v and v.wait_sem in o.held]
    if len(holders) == 1 and _native.sem_value(v.wait_sem) == 0:
        return holders[0]
    return None


def _link_owners(views):
    """Sets owner on each lock waiter whose holder is known for sure:
    * a join waits for the joined thread's coroutine;
    * an RLock is held by the thread its owner field names;
    * a Lock, on 3.11 and 3.12 only, by the coroutine that took its
      semaphore (sem_trywait/sem_wait hooks, diag.c).  From 3.13 a Lock
      records no holder anywhere (see _compat.LOCK_OWNERS_KNOWN): none."""
    by_ident = {v.ident: v for v in views if v.ident}
    for v in views:
        if v.wait_kind != _native.WAIT_LOCK:
            continue
        owner = None
        if v.join_ident:
            owner = by_ident.get(v.join_ident)
        elif type(v.wait_lock) is _thread.RLock:
            owner = by_ident.get(_rlock_owner(v.wait_lock))
        elif _compat.LOCK_OWNERS_KNOWN and v.wait_sem:
            owner = _semaphore_holder(v, views)
        if owner is not None and owner is not v:
            v.owner = owner
            v.waits_for += f", held by coroutine {owner.id} {owner.name!r}"


# ---- formatting -------------------------------------------------------------

def _user_stack(frame):
    """The stack of frame without the runtime's own frames (interpose/*.py:
    a coroutine's bootstrap, the dump itself), oldest first."""
    if frame is None:
        return []
    entries = traceback.extract_stack(frame)
    return [e for e in entries
            if not _in_package(e.filename)]


def format_coroutine(v, now_ns=None):
    """The dump's lines for one coroutine (ends with a newline)."""
    now_ns = _lib.clock_ns() if now_ns is None else now_ns
    head = f"coroutine {v.id} {v.name!r}{' (main)' if v.is_main else ''} {v.state}"
    if v.waits_for:
        head += f": {v.waits_for}"
    extras = [f"ran {format_ms(ns_to_seconds(v.run_ns))} in {v.turns} turns,"
              f" longest {format_ms(ns_to_seconds(v.max_turn_ns))}"]
    if v.state == "running":  # a turn is counted when it ends
        extras[0] += ", besides the current turn"
    if v.timeout_ns >= 0:
        extras.append(f"times out in {format_seconds(ns_to_seconds(max(0, v.timeout_ns - now_ns)))}")
    if v.deadline_ns >= 0:
        extras.append(f"deadline in {format_seconds(ns_to_seconds(v.deadline_ns - now_ns))}")
    if v.cancelled:
        extras.append("cancelled")
    lines = [head, "  " + "; ".join(extras)]
    stack = _user_stack(v.frame)
    if stack:
        lines.append("  Traceback (most recent call last):")
        for entry in traceback.format_list(stack):
            lines.extend("  " + line for line in entry.rstrip("\n").split("\n"))
    elif v.state == "runnable":
        lines.append("  (not started yet)")
    return "\n".join(lines) + "\n"


def _thread_title(tid, sched_name, sched_info):
    kind = "main thread" if sched_info is not None and sched_info.is_main_thread else "thread"
    return f"OS {kind} {tid} ({sched_name or '?'})"


def format_dump(views, scheds, title="interpose dump"):
    """The whole dump as text."""
    _, by_sched = _names()
    now_ns = _lib.clock_ns()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    out = [f"{title}: pid {os.getpid()}, {len(scheds)} scheduler(s),"
           f" {len(views)} coroutine(s), {stamp} UTC\n"]
    info_of = {s.sched: s for s in scheds}
    current = None
    for v in views:
        if v.sched != current:
            current = v.sched
            s = info_of.get(v.sched)
            count = sum(1 for w in views if w.sched == v.sched)
            stuck = ", stuck" if s is not None and s.stuck else ""
            out.append(f"\n=== scheduler on {_thread_title(v.tid, by_sched.get(v.sched), s)}:"
                       f" {count} coroutine(s), {s.switches if s else '?'} switches{stuck} ===\n")
        out.append("\n" + format_coroutine(v, now_ns))
    return "".join(out)


def dump_text(title="interpose dump"):
    views, scheds = snapshot()
    try:
        return format_dump(views, scheds, title)
    finally:
        for v in views:  # frames keep whole stacks alive: let them go now
            v.frame = v.wait_lock = None


def dump(file=None):
    """Write every coroutine of every scheduler in this process, with its
    Python stack and what it waits for, to file (default sys.stderr)."""
    text = dump_text()
    file = sys.stderr if file is None else file
    file.write(text)
    flush = getattr(file, "flush", None)
    if flush is not None:
        flush()
