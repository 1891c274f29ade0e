"""libco's example_echocli in Python: PROCESSES processes x COROUTINES client
coroutines hammering an echo server, written as plain blocking socket code.

    python -m interpose run examples/echo_client.py HOST PORT COROUTINES PROCESSES [--duration S]

SIGPIPE is ignored, as in the original.  The program forks PROCESSES
processes; each runs COROUTINES coroutines (interpose.spawn) that connect,
write 8 bytes, read the 8-byte echo, and repeat on the same connection; after
any failure (connect refused, reset, EOF, wrong echo) the coroutine counts a
failure, closes, and reconnects.  Each process prints, once a second,

    time <unix-seconds> Succ Cnt <n> Fail Cnt <m>

with the round trips completed and the failures counted during that second
(the same line libco's example prints; <unix-seconds> is the second the
counts belong to).  By default it runs until killed, like the original;
``--duration S`` stops every process after S seconds, and each then prints
``total Succ Cnt <N> Fail Cnt <M>``.  SIGINT/SIGTERM to the parent stop the
children too.

Two deviations from libco's example, both for a fair measurement: a read
collects the whole 8-byte echo (TCP may split it; the original counted any
non-empty read as a success), and a coroutine whose connection failed waits
10 ms before reconnecting (the original retries at once, which against a
dead server is a busy loop that never lets the once-a-second report run).
"""
import argparse
import errno
import os
import signal
import socket
import sys
import time

import interpose

PAYLOAD = b"sarlmol\0"  # char str[8] = "sarlmol" in the original
RETRY_DELAY = 0.01


class Counters:
    __slots__ = ("succ", "fail", "total_succ", "total_fail")

    def __init__(self):
        self.succ = self.fail = self.total_succ = self.total_fail = 0

    def add_succ(self):
        self.succ += 1
        self.total_succ += 1

    def add_fail(self):
        self.fail += 1
        self.total_fail += 1


def say(line):
    """One line in one write(): the processes share stdout, and print()
    writes the newline separately when stdout is unbuffered."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def recv_exactly(sock, n):
    """The next n bytes, or fewer if the peer closed first."""
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def client(host, port, counters, running):
    """One client coroutine: connect, then 8-byte round trips forever;
    reconnect after any failure."""
    sock = None
    while running[0]:
        try:
            if sock is None:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.connect((host, port))
            sock.sendall(PAYLOAD)
            if recv_exactly(sock, len(PAYLOAD)) != PAYLOAD:
                raise ConnectionError("short or wrong echo")
        except OSError as e:
            if e.errno == errno.ECANCELED:  # interpose.Cancelled: we are stopped
                raise
            if not running[0]:
                break
            counters.add_fail()
            if sock is not None:
                sock.close()
                sock = None
            time.sleep(RETRY_DELAY)
        else:
            counters.add_succ()
    if sock is not None:
        sock.close()


def reporter(counters):
    """Once a second: the counts of the second that just ended."""
    while True:
        now = time.time()
        second = int(now)
        time.sleep(second + 1 - now)
        say(f"time {second} Succ Cnt {counters.succ} Fail Cnt {counters.fail}")
        counters.succ = counters.fail = 0


def process_main(host, port, coroutines, duration):
    counters = Counters()
    running = [True]
    clients = [interpose.spawn(client, host, port, counters, running, name=f"client-{i}")
               for i in range(coroutines)]
    report = interpose.spawn(reporter, counters, name="reporter")
    if duration is None:
        for c in clients:
            c.join()
        return 0
    time.sleep(duration)
    running[0] = False
    report.cancel()
    for c in clients:
        try:
            c.join(timeout=2)
        except TimeoutError:  # parked on a server that stopped answering
            c.cancel()
    say(f"total Succ Cnt {counters.total_succ} Fail Cnt {counters.total_fail}")
    return 0


def parse(argv):
    parser = argparse.ArgumentParser(
        description="echo load generator: PROCESSES x COROUTINES clients")
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("coroutines", type=int, help="client coroutines per process")
    parser.add_argument("processes", type=int, help="processes")
    parser.add_argument("--duration", type=float, default=None,
                        help="stop after this many seconds (default: run forever)")
    args = parser.parse_args(argv)
    if args.coroutines < 1 or args.processes < 1:
        parser.error("COROUTINES and PROCESSES must be at least 1")
    if args.duration is not None and args.duration <= 0:
        parser.error("--duration must be positive")
    return args


def _exit_quietly(signum, frame):
    raise SystemExit(0)


def main(argv=None):
    args = parse(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    sys.stdout.flush()
    children = set()
    stopping = []

    def stop(signum, frame):
        stopping.append(signum)
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM if len(stopping) == 1 else signal.SIGKILL)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for _ in range(args.processes):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, _exit_quietly)
            signal.signal(signal.SIGINT, _exit_quietly)
            status = 1
            try:
                status = process_main(args.host, args.port, args.coroutines, args.duration)
            except SystemExit as e:
                status = e.code if isinstance(e.code, int) else 0
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(status)
        children.add(pid)

    failed = 0
    while children:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        children.discard(pid)
        if os.waitstatus_to_exitcode(status) != 0 and not stopping:
            failed = 1
    return failed


if __name__ == "__main__":
    sys.exit(main())
