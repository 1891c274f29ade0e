"""N slow MariaDB/MySQL queries at once through mysqlclient (MariaDB
Connector/C), each on its own coroutine, with MySQLdb used exactly as in
blocking code.

    python -m interpose run examples/mariadb_concurrent.py HOST PORT USER [N]
    python -m interpose run examples/mariadb_concurrent.py 127.0.0.1 3306 root 10

Each of the N coroutines (default 10) connects (empty password), runs
``SELECT SLEEP(0.5)`` and closes.  Connector/C reads and writes its socket
with blocking calls of its own; under ``python -m interpose run`` they
park the coroutine, so the N queries take about as long as one.  Prints
one line per query, then ``N queries in T s``.
"""
import sys
import time

import MySQLdb

import interpose

SLEEP_S = 0.5


def slow_query(host, port, user, i):
    conn = MySQLdb.connect(host=host, port=port, user=user)
    try:
        cur = conn.cursor()
        cur.execute("SELECT CONNECTION_ID(), SLEEP(%s)", (SLEEP_S,))
        conn_id = cur.fetchone()[0]
        cur.close()
        return f"query {i}: connection {conn_id} slept {SLEEP_S} s"
    finally:
        conn.close()


def main():
    host, port, user = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 10
    t0 = time.monotonic()
    queries = [interpose.spawn(slow_query, host, port, user, i) for i in range(n)]
    for q in queries:
        print(q.join())
    print(f"{n} queries in {time.monotonic() - t0:.2f} s")


if __name__ == "__main__":
    main()
