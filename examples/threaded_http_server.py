"""An ordinary http.server.ThreadingHTTPServer (a thread per connection,
HTTP/1.1 keep-alive) that knows nothing of interpose.

    python -m interpose run examples/threaded_http_server.py [HOST [PORT]]
    python examples/threaded_http_server.py [HOST [PORT]]

(the first runs every thread as a coroutine in one OS thread, the second on
OS threads).

HOST defaults to 127.0.0.1 and PORT to 0 (a free port).  Once listening the
server prints ``listening on HOST:PORT`` (the real port) on stdout; SIGINT
stops it, and it exits with status 0.

``GET /stats`` answers a JSON object describing the process at that moment:

    {"active": threading.active_count(),
     "native_ids": the sorted distinct Thread.native_id of threading.enumerate(),
     "os_threads": the number of entries in /proc/self/task,
     "served": GET requests answered so far,
     "first_answers": for each connection that has had an answer, the
                      time.monotonic() of its first (in order)}

The counter and the list are updated under one threading.Lock.
CLOCK_MONOTONIC is the same in every process of the machine, so a load
generator can tell which connections were first answered while it ran.

Any other ``GET PATH`` answers ``200`` with the body ``PATH[::-1] + " " + N
+ "\\n"``, where N counts the requests answered on this connection (1 for
its first), with Content-Length, so a client can predict every byte of the
body.  tests/test_threads_http.py and scripts/bench_threads_http.py use it;
request logging is off (one stderr line per request would dominate).
"""
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_served = 0
_first_answers = []
_served_lock = threading.Lock()


def _stats():
    return {
        "active": threading.active_count(),
        "native_ids": sorted({t.native_id for t in threading.enumerate()}),
        "os_threads": len(os.listdir("/proc/self/task")),
        "served": _served,
        "first_answers": list(_first_answers),
    }


class Handler(BaseHTTPRequestHandler):
    """One instance per connection: self.requests counts its requests."""

    protocol_version = "HTTP/1.1"
    # The headers and the body go out in two send() calls.  With Nagle's
    # algorithm on, the body waits for the peer's (delayed, ~40 ms) ACK of
    # the headers, which caps a keep-alive connection at ~25 requests/s
    # whatever the server does: a real server turns it off.
    disable_nagle_algorithm = True

    def setup(self):
        super().setup()
        self.requests = 0

    def do_GET(self):
        global _served
        self.requests += 1
        with _served_lock:
            _served += 1
            if self.requests == 1:
                _first_answers.append(time.monotonic())
        if self.path == "/stats":
            body = json.dumps(_stats()).encode()
            content_type = "application/json"
        else:
            body = f"{self.path[::-1]} {self.requests}\n".encode()
            content_type = "text/plain"
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


class Server(ThreadingHTTPServer):
    # 1,000 clients connect at once: the default backlog of 5 would make
    # most of them wait for SYN retransmissions.
    request_queue_size = 1024


def main(argv):
    host = argv[1] if len(argv) > 1 else "127.0.0.1"
    port = int(argv[2]) if len(argv) > 2 else 0
    with Server((host, port), Handler) as httpd:
        host, port = httpd.socket.getsockname()[:2]
        sys.stdout.write(f"listening on {host}:{port}\n")
        sys.stdout.flush()
        try:
            httpd.serve_forever()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
