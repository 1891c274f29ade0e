"""Idiomatic gevent echo server: gevent.server.StreamServer.

    python gevent_stream.py HOST PORT
"""
import socket
import sys

from gevent.server import StreamServer


def handle(conn, _address):
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        data = conn.recv(65536)
        if not data:
            return
        conn.sendall(data)


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    server = StreamServer((host, port), handle, backlog=4096)
    server.start()
    print(f"listening on {host}:{server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
