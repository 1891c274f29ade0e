"""The no-argument demo of the hooks (python -m interpose demo): an echo
server and its clients in one process, all plain blocking socket code on
coroutines, on an ephemeral loopback port for a few seconds.

It needs the preloaded library (the demo command re-executes itself under
it); in a process without the hooks, the first blocking call would block the
whole thread.
"""
import errno
import socket
import time

from ._core import _errors
from ._core import _sched
from ._core import _statistics

PAYLOAD = b"sarlmol\0"


class _Counts:
    __slots__ = ("succ", "fail", "total_succ", "total_fail", "errors")

    def __init__(self):
        self.succ = self.fail = self.total_succ = self.total_fail = 0
        self.errors = []


def _serve(listener):
    while True:
        conn, _ = listener.accept()
        try:
            while True:
                data = conn.recv(4096)
                if not data:
                    break
                conn.sendall(data)
        except ConnectionError:
            pass
        finally:
            conn.close()


def _client(address, counts, running):
    sock = None
    while running[0]:
        try:
            if sock is None:
                sock = socket.create_connection(address)
            sock.sendall(PAYLOAD)
            echo = b""
            while len(echo) < len(PAYLOAD):
                chunk = sock.recv(len(PAYLOAD) - len(echo))
                if not chunk:
                    raise ConnectionError("the server closed the connection")
                echo += chunk
            if echo != PAYLOAD:
                raise ConnectionError(f"wrong echo {echo!r}")
        except OSError as e:
            if e.errno == errno.ECANCELED:
                raise
            counts.fail += 1
            counts.total_fail += 1
            if len(counts.errors) < 5:
                counts.errors.append(repr(e))
            if sock is not None:
                sock.close()
                sock = None
            time.sleep(0.01)
        else:
            counts.succ += 1
            counts.total_succ += 1
    if sock is not None:
        sock.close()


def _reporter(counts, out):
    while True:
        now = time.time()
        second = int(now)
        time.sleep(second + 1 - now)
        out(f"time {second} Succ Cnt {counts.succ} Fail Cnt {counts.fail}")
        counts.succ = counts.fail = 0


def main(seconds=3, clients=100, out=print):
    """Run the echo demo; return the exit status (0: no failed round trip)."""
    if seconds <= 0 or clients < 1:
        out("interpose demo: --seconds must be positive and --clients at least 1")
        return 2
    counts = _Counts()
    running = [True]

    def body():
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1024)
        address = listener.getsockname()
        out(f"echo server on {address[0]}:{address[1]}: {clients} server coroutines,"
            f" {clients} client coroutines, {seconds:g} s; plain blocking"
            " sockets (accept, connect, sendall, recv) on coroutines")
        servers = [_sched.spawn(_serve, listener, name=f"server-{i}")
                   for i in range(clients)]
        reporter = _sched.spawn(_reporter, counts, out, name="reporter")
        t0 = time.monotonic()
        workers = [_sched.spawn(_client, address, counts, running, name=f"client-{i}")
                   for i in range(clients)]
        time.sleep(seconds)  # a hooked sleep: parks the main coroutine
        running[0] = False
        for w in workers:
            w.join()
        elapsed = time.monotonic() - t0
        for c in (reporter, *servers):
            c.cancel()
        for c in (reporter, *servers):
            try:
                c.join()
            except _errors.Cancelled:
                pass
        listener.close()
        return elapsed

    elapsed = _sched.run(body)
    stats = _statistics.statistics()
    out(f"round trips: {counts.total_succ} in {elapsed:.2f} s"
        f" = {counts.total_succ / elapsed:,.0f} round trips/s")
    out(f"errors: {counts.total_fail}")
    for e in counts.errors:
        out(f"  {e}")
    out("scheduler statistics:")
    for field in ("coroutines_created", "coroutines_alive", "switches", "parks",
                  "timeouts", "epoll_waits"):
        out(f"  {field:20} {getattr(stats, field)}")
    return 0 if counts.total_fail == 0 and counts.total_succ > 0 else 1
