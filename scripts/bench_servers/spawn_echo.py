"""threaded_echo.py with interpose.spawn in place of threading.Thread.

Run under `python -m interpose run`; the handlers are coroutines whatever
`interpose run` does with threading.Thread.  The suite labels it
"interpose (spawn)" to keep it apart from the unmodified program.

    python -m interpose run spawn_echo.py HOST PORT
"""
import socket
import sys

import interpose


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
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        interpose.spawn(handle, conn)


if __name__ == "__main__":
    main()
