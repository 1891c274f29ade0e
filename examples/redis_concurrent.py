"""N slow redis commands at once through redis-py (with hiredis when it
is installed), each on its own coroutine, with the ordinary blocking API.

    python -m interpose run examples/redis_concurrent.py HOST PORT [N]
    python -m interpose run examples/redis_concurrent.py 127.0.0.1 6379 10

Each of the N coroutines (default 10) opens its own client, waits in
``BLPOP`` for up to 0.5 s on a list nobody pushes to (the server answers
at the timeout without blocking other clients, which ``DEBUG SLEEP`` would),
and closes.  Under ``python -m interpose run`` the socket calls park the
coroutine, so the N commands take about as long as one.  Prints the parser
in use, one line per command, then ``N commands in T s``.
"""
import sys
import time

import redis

import interpose

WAIT_S = 0.5


def slow_command(host, port, i):
    client = redis.Redis(host=host, port=port)
    try:
        popped = client.blpop([f"interpose-example-{i}"], timeout=WAIT_S)
        return f"command {i}: BLPOP returned {popped} after {WAIT_S} s"
    finally:
        client.close()


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    print("hiredis parser:", redis.utils.HIREDIS_AVAILABLE)
    t0 = time.monotonic()
    commands = [interpose.spawn(slow_command, host, port, i) for i in range(n)]
    for c in commands:
        print(c.join())
    print(f"{n} commands in {time.monotonic() - t0:.2f} s")


if __name__ == "__main__":
    main()
