"""N slow PostgreSQL queries at once through psycopg2 (libpq), each on
its own coroutine, with psycopg2 used exactly as in blocking code.

    python -m interpose run examples/postgres_concurrent.py DSN [N]
    python -m interpose run examples/postgres_concurrent.py \\
        "host=127.0.0.1 port=5432 user=postgres dbname=postgres" 10

Each of the N coroutines (default 10) connects, runs
``SELECT pg_sleep(0.5)`` and closes.  libpq does its own socket I/O in C;
under ``python -m interpose run`` its connect, poll, recv and send park the
coroutine instead of the thread, so the N queries take about as long as
one.  Prints one line per query, then ``N queries in T s``.  Run with plain
``python`` the same program takes N times as long: nothing parks.
"""
import sys
import time

import psycopg2

import interpose

SLEEP_S = 0.5


def slow_query(dsn, i):
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid(), pg_sleep(%s)", (SLEEP_S,))
            pid = cur.fetchone()[0]
        return f"query {i}: backend {pid} slept {SLEEP_S} s"
    finally:
        conn.close()


def main():
    dsn = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    t0 = time.monotonic()
    queries = [interpose.spawn(slow_query, dsn, i) for i in range(n)]
    for q in queries:
        print(q.join())
    print(f"{n} queries in {time.monotonic() - t0:.2f} s")


if __name__ == "__main__":
    main()
