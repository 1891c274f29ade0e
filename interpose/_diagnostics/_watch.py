"""The diagnostics thread: one real OS thread per process that serves
`interpose ps PID` on a control socket and watches for deadlocks.

It has no scheduler, so its blocking calls (poll) really block, and it takes the
GIL only to answer a request or to examine a stuck scheduler: it works
while every coroutine is parked, and costs nothing while it waits.

The control socket is a Unix socket in the abstract namespace,
"\\0interpose-PID": nothing to clean up when the process dies, and no
signal taken from the program.  The abstract namespace has no file
permissions, so each connection's credentials (SO_PEERCRED) are checked:
only the same user (or root) gets an answer.  Requests are one line:
"dump" (the coroutine dump) or "stats" (interpose.statistics() as text).

Settings: INTERPOSE_CONTROL=0 turns the socket off; INTERPOSE_DEADLOCK=off
turns the watcher off, =exit makes a deadlock end the process with status
70 after the report (default: report and keep waiting);
INTERPOSE_DEADLOCK_LOG=PATH also appends every report to PATH.
"""
import _thread
import os
import select
import socket
import struct
import sys
import threading

from . import _deadlock
from . import _dump
from .._integrations import _forkwarn
from .._core import _native
from .._core._time import ns_to_seconds
from .._integrations import _signals

_lib = _native.lib
# The OS thread's name (ps -L, /proc/PID/task/TID/comm): tests and tools
# that count a program's own threads leave it out.
THREAD_NAME = "interpose-diag"
_started = False
_sockets = []  # [listener, eventfd] while running


def control_address(pid):
    return "\0interpose-" + str(pid)


def start(control=True, deadlock="report"):
    """Start the thread (once per process) per the settings."""
    global _started
    if _started or (not control and deadlock == "off"):
        return
    _forkwarn.install()
    listener = None
    if control:
        listener = _internal_socket()
        try:
            listener.bind(control_address(os.getpid()))
            listener.listen(16)
        except OSError as e:
            listener.close()
            listener = None
            sys.stderr.write(f"interpose: no control socket for `interpose ps`: {e}\n")
    evfd = -1
    if deadlock != "off":
        evfd = _signals._move_internal(os.eventfd(0, os.EFD_CLOEXEC))
        _lib.diag_set_notify_fd(evfd)
    _sockets[:] = [listener, evfd]

    # Wait until the thread runs, so that it is counted among interpose's
    # own threads (helper_tids) before the program starts.
    running = _thread.allocate_lock()
    running.acquire()
    watcher = _Watcher(listener, evfd, deadlock)
    # A thread of the engine's, not of _thread: _thread._count() and
    # threading.enumerate() stay what the program's threads make them.
    r = _lib.diag_start_thread(lambda: watcher.run(running), THREAD_NAME.encode())
    if r != 0:
        sys.stderr.write(f"interpose: no diagnostics thread: {os.strerror(-r)}\n")
        return
    running.acquire()
    os.register_at_fork(after_in_child=_after_fork_in_child)
    _started = True


def _internal_socket():
    """A Unix stream socket whose fd is above the engine's internal floor,
    so that the program's own fds keep the numbers plain Python gives them
    (native/fdtable.c)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    fd = _signals._move_internal(sock.detach())
    return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=fd)


def _after_fork_in_child():
    """The thread did not survive the fork: let go of its fds (the
    listener's name belongs to the parent)."""
    global _started
    _lib.diag_set_notify_fd(-1)
    listener, evfd = _sockets
    if listener is not None:
        listener.close()
    if evfd >= 0:
        os.close(evfd)
    _sockets[:] = [None, -1]
    _started = False


class _Watcher:
    def __init__(self, listener, evfd, mode):
        self.listener = listener
        self.evfd = evfd
        self.mode = mode
        self.check_at = None  # when to confirm stuck schedulers
        self.first = {}  # sched -> switches when it was seen stuck
        self.reported = set()  # (sched, switches) already reported
        self.examined = 0  # confirmed stuck schedulers examined (tests read it)

    def run(self, running):
        _deadlock.helper_tids.add(threading.get_native_id())
        running.release()
        poller = select.poll()
        listen_fd = self.listener.fileno() if self.listener is not None else -1
        for fd in (listen_fd, self.evfd):
            if fd >= 0:
                poller.register(fd, select.POLLIN)
        while True:
            if self.evfd >= 0:
                _lib.diag_arm()
                if self.check_at is None:
                    self.note_stuck()
            timeout_ms = None
            if self.check_at is not None:
                timeout_ms = max(0, round((self.check_at - _now()) * 1000 + 0.5))
            ready = {fd for fd, _ in poller.poll(timeout_ms)}
            if self.evfd in ready:
                os.read(self.evfd, 8)
                if self.check_at is None:
                    self.note_stuck()
            if listen_fd in ready:
                self.serve()
            if self.check_at is not None and _now() >= self.check_at:
                self.check_at = None
                self.examine()

    def note_stuck(self):
        stuck = {s.sched: s.switches for s in _native.diag_scheds() if s.stuck}
        if stuck:
            self.first = stuck
            self.check_at = _now() + _deadlock.CONFIRM_S

    def examine(self):
        scheds = _native.diag_scheds()
        stuck = [s for s in scheds
                 if s.stuck and self.first.get(s.sched) == s.switches]
        self.first = {}
        if not stuck or all((s.sched, s.switches) in self.reported for s in stuck):
            return
        self.examined += 1
        # Every scheduler must be stuck or another thread could wake them;
        # _deadlock counts the OS threads, schedulers included.
        if not _deadlock.deadlocked(stuck):
            return
        exiting = self.mode == "exit"
        text = _deadlock.report(stuck, exiting)
        # Still stuck with the same switch count: the analysis raced with
        # nothing (no switch happened while it ran).
        now = {s.sched: s for s in _native.diag_scheds()}
        if any(not now.get(s.sched) or not now[s.sched].stuck
               or now[s.sched].switches != s.switches for s in stuck):
            return
        for s in stuck:
            self.reported.add((s.sched, s.switches))
        _append_log(text)  # first: once stderr shows it, a test may end us
        _write_stderr(text)
        if exiting:
            os._exit(_deadlock.EXIT_STATUS)

    def serve(self):
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            try:
                creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                        struct.calcsize("3i"))
                _, uid, _ = struct.unpack("3i", creds)
                if uid not in (os.geteuid(), 0):
                    conn.sendall(b"interpose: refused: another user\n")
                    return
                conn.settimeout(5)
                request = conn.recv(64).strip()
                conn.sendall(self.answer(request).encode("utf-8", "replace"))
            except OSError:
                pass  # the client went away


    def answer(self, request):
        """The text a control request gets."""
        if request == b"dump":
            return _dump.dump_text()
        if request == b"stats":
            from . import _stats

            return _stats.format_all()
        if request == b"watch":
            return (f"deadlock watcher: mode {self.mode}, examined"
                    f" {self.examined}, reported {len(self.reported)}\n")
        return f"interpose: unknown request {request!r}\n"


def _append_log(text):
    """INTERPOSE_DEADLOCK_LOG=PATH: also append each report to PATH (with
    the command line), for operators, and for checking that a whole test
    suite produced no false report."""
    path = os.environ.get("INTERPOSE_DEADLOCK_LOG")
    if not path:
        return
    try:
        with open(path, "a") as f:
            f.write(f"=== {' '.join(sys.argv)}\n{text}")
    except OSError as e:
        _write_stderr(f"interpose: cannot append to INTERPOSE_DEADLOCK_LOG: {e}\n")


def _now():
    return ns_to_seconds(_lib.clock_ns())


def _write_stderr(text):
    """Write to fd 2 directly: sys.stderr may be buffered behind a lock
    that a deadlocked coroutine holds."""
    data = text.encode("utf-8", "replace")
    while data:
        try:
            n = os.write(2, data)
        except InterruptedError:
            continue
        except OSError:
            return
        data = data[n:]


def request(pid, what=b"dump", timeout=10):
    """Send a control request to process pid and return its answer (text);
    raises OSError with a clear message when it cannot."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    with sock:
        try:
            sock.connect(control_address(pid))
        except (ConnectionRefusedError, FileNotFoundError):
            raise OSError(
                f"process {pid} has no interpose control socket: it does not"
                " run under interpose (python -m interpose run / env), it"
                " started with INTERPOSE_CONTROL=0, or it is a forked child"
            ) from None
        sock.sendall(what + b"\n")
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks).decode("utf-8", "replace")
