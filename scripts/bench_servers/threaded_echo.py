"""An ordinary blocking echo server, one thread per connection.

The benchmark's "unmodified program": plain sockets and threading, nothing
that knows about interpose, gevent or eventlet.  scripts/bench_suite.py runs
this same file on plain threads, under `python -m interpose run`, and under
gevent's and eventlet's monkey-patching.

    python threaded_echo.py HOST PORT      (PORT 0: any free port)

Prints "listening on HOST:PORT" once it accepts connections.
"""
import socket
import sys
import threading


def handle(conn):
    with conn:
        while True:
            data = conn.recv(65536)
            if not data:
                return
            conn.sendall(data)


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((host, port))
    server.listen(4096)
    print(f"listening on {host}:{server.getsockname()[1]}", flush=True)
    while True:
        conn, _ = server.accept()
        # Every server in the suite sets TCP_NODELAY: echoing a 16 KiB
        # message in pieces would otherwise meet Nagle + delayed ACK stalls.
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
