"""CPU time per echo round trip inside one interpose process: a client and a
server coroutine on one thread, 8-byte messages over loopback TCP.  Each
round trip is four coroutine turns and two fd wakes, so it shows what the
engine adds per turn (e.g. the statistics counters of issue #16) with far
less noise than a throughput benchmark on a shared machine: it counts the
process's CPU time, not the wall clock.

    taskset -c 1 python -m interpose run scripts/bench_pingpong_cpu.py [N]

prints nanoseconds of CPU per round trip.  To compare two builds, run it
alternately from both trees (PYTHONPATH=TREE) several times and compare the
medians and the paired differences (docs/diagnostics.md has a run).
"""
import socket
import sys
import threading
import time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 100000
WARMUP = 1000


def main():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()

    def serve():
        conn, _ = srv.accept()
        with conn:
            while True:
                data = conn.recv(8)
                if not data:
                    return
                conn.sendall(data)

    server = threading.Thread(target=serve)
    server.start()
    client = socket.create_connection(srv.getsockname())
    message = b"x" * 8
    for _ in range(WARMUP):
        client.sendall(message)
        client.recv(8)
    t0 = time.process_time()
    for _ in range(N):
        client.sendall(message)
        client.recv(8)
    t1 = time.process_time()
    client.close()
    server.join()
    srv.close()
    print(f"{(t1 - t0) / N * 1e9:.0f}")


if __name__ == "__main__":
    main()
