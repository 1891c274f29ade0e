"""N slow PostgreSQL queries at once through psycopg 3 in its C mode
(libpq through psycopg-binary), each on its own coroutine, with the
ordinary blocking psycopg API.

    python -m interpose run examples/psycopg3_concurrent.py DSN [N]
    python -m interpose run examples/psycopg3_concurrent.py \\
        "host=127.0.0.1 port=5432 user=postgres dbname=postgres" 10

Each of the N coroutines (default 10) connects, runs
``SELECT pg_sleep(0.5)`` and closes.  psycopg 3 waits for libpq's socket
with poll; under ``python -m interpose run`` that parks the coroutine, so
the N queries take about as long as one.  Prints the implementation
(``binary`` or ``c``), one line per query, then ``N queries in T s``.
"""
import sys
import time

import psycopg

import interpose

SLEEP_S = 0.5


def slow_query(dsn, i):
    with psycopg.connect(dsn) as conn:
        pid = conn.execute("SELECT pg_backend_pid(), pg_sleep(%s)",
                           (SLEEP_S,)).fetchone()[0]
    return f"query {i}: backend {pid} slept {SLEEP_S} s"


def main():
    dsn = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    print(f"psycopg implementation: {psycopg.pq.__impl__}")
    t0 = time.monotonic()
    queries = [interpose.spawn(slow_query, dsn, i) for i in range(n)]
    for q in queries:
        print(q.join())
    print(f"{n} queries in {time.monotonic() - t0:.2f} s")


if __name__ == "__main__":
    main()
