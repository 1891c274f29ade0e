"""libco's example_echosvr in Python: an echo server of PROCESSES worker
processes x COROUTINES coroutines, written as plain blocking socket code.

    python -m interpose run examples/echo_server.py HOST PORT COROUTINES PROCESSES
    python examples/echo_server.py HOST PORT COROUTINES PROCESSES --threads

The parent creates the listening socket (SO_REUSEADDR, backlog 1024), prints
``listening on HOST:PORT`` (PORT 0 picks a free port; the line names the
real one), forks PROCESSES workers that share the socket and waits for them;
SIGINT or SIGTERM to the parent stops the workers (a second one kills them).
Each worker runs COROUTINES handlers, each an accept loop: accept, then read
up to 4096 bytes and send them back with sendall until EOF, close, accept
the next.  A handler serves one connection at a time, so a worker holds at
most COROUTINES connections open at once (as in libco's example).

The handlers are created with interpose.spawn, and their accept/recv/sendall
are ordinary blocking calls: run under ``python -m interpose run`` they park
the handler coroutine instead of the process.

``--threads``: the identical program with threading.Thread in place of
interpose.spawn (one OS thread per handler).  That is the plain-threads
baseline that scripts/bench_echo.py compares against: run it with plain
``python``, not under ``interpose run``.

Debugging: with ECHO_SERVER_DEBUG=1 in the environment every worker writes
``worker <pid> accepted <host>:<port>`` to stderr for each connection (the
tests use it to see that every worker serves).
"""
import argparse
import os
import signal
import socket
import sys
import threading

DEBUG = os.environ.get("ECHO_SERVER_DEBUG") == "1"


def serve(conn):
    """Echo everything back until the peer closes."""
    while True:
        data = conn.recv(4096)
        if not data:
            return
        conn.sendall(data)


def handler(listener):
    """One handler: an accept loop, one connection at a time."""
    while True:
        try:
            conn, peer = listener.accept()
        except ConnectionError:  # aborted before we got to it
            continue
        if DEBUG:
            sys.stderr.write(f"worker {os.getpid()} accepted {peer[0]}:{peer[1]}\n")
            sys.stderr.flush()
        try:
            serve(conn)
        except ConnectionError:  # reset by the peer, broken pipe
            pass
        finally:
            conn.close()


def _exit_quietly(signum, frame):
    raise SystemExit(0)


def worker(listener, coroutines, threads):
    """A worker process: COROUTINES handlers sharing the listening socket."""
    signal.signal(signal.SIGTERM, _exit_quietly)
    signal.signal(signal.SIGINT, _exit_quietly)
    if threads:
        workers = [threading.Thread(target=handler, args=(listener,), daemon=True)
                   for _ in range(coroutines)]
        for t in workers:
            t.start()
    else:
        import interpose

        workers = [interpose.spawn(handler, listener, name=f"handler-{i}")
                   for i in range(coroutines)]
    for w in workers:  # handlers run until the worker is told to stop
        w.join()


def parse(argv):
    parser = argparse.ArgumentParser(
        description="echo server: PROCESSES workers x COROUTINES handlers")
    parser.add_argument("host")
    parser.add_argument("port", type=int, help="0 picks a free port")
    parser.add_argument("coroutines", type=int, help="handlers per worker")
    parser.add_argument("processes", type=int, help="worker processes")
    parser.add_argument("--threads", action="store_true",
                        help="OS threads instead of coroutines (run with plain python)")
    args = parser.parse_args(argv)
    if args.coroutines < 1 or args.processes < 1:
        parser.error("COROUTINES and PROCESSES must be at least 1")
    return args


def main(argv=None):
    args = parse(sys.argv[1:] if argv is None else argv)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((args.host, args.port))
    listener.listen(1024)
    host, port = listener.getsockname()[:2]
    sys.stdout.write(f"listening on {host}:{port}\n")  # one write()
    sys.stdout.flush()
    sys.stderr.flush()

    children = set()
    stopping = []

    def stop(signum, frame):
        # First signal: ask the workers to stop; later ones: kill them.
        sig = signal.SIGTERM if not stopping else signal.SIGKILL
        stopping.append(signum)
        for pid in list(children):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for _ in range(args.processes):
        pid = os.fork()
        if pid == 0:
            status = 0
            try:
                worker(listener, args.coroutines, args.threads)
            except SystemExit as e:
                status = e.code if isinstance(e.code, int) else 0
            except BaseException:
                import traceback

                traceback.print_exc()
                status = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(status)
        children.add(pid)
    listener.close()  # the workers hold it

    failed = 0
    while children:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        children.discard(pid)
        code = os.waitstatus_to_exitcode(status)
        if code != 0 and not stopping:
            sys.stderr.write(f"echo_server: worker {pid} exited with status {code}\n")
            failed = 1
    return failed


if __name__ == "__main__":
    sys.exit(main())
