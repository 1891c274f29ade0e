"""libpq through psycopg2 (psycopg2-binary's bundled libpq) and psycopg 3
in its C mode, against a private PostgreSQL: slow queries on coroutines
overlap, and the failure paths raise the drivers' usual errors.

The server is started once for this module (tests/support/servers.py) and
stopped at its end; a missing PostgreSQL fails the tests.
"""
import json

import pytest

from support import servers
from support.snippets import check_ok, run_hooked
from support.drivers import check_cooperation, check_failures_same

# Each driver's connect(**params) and query(conn, sql, params) -> rows, the
# only code that differs between the two.
PSYCOPG2 = r'''
import psycopg2 as driver

def connect(dsn, **params):
    return driver.connect(dsn, **params)

def query(conn, sql, params=()):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()

def backend_pid(conn):
    return conn.get_backend_pid()
'''

PSYCOPG3 = r'''
import psycopg as driver
# The C implementation (psycopg-binary or psycopg-c), not the pure-Python
# one that uses Python sockets: this test is about libpq's own I/O.
assert driver.pq.__impl__ in ("binary", "c"), driver.pq.__impl__

def connect(dsn, **params):
    return driver.connect(dsn, **params)

def query(conn, sql, params=()):
    return conn.execute(sql, params).fetchall()

def backend_pid(conn):
    return conn.info.backend_pid
'''

DRIVERS = {"psycopg2": PSYCOPG2, "psycopg3": PSYCOPG3}

SLOW = r'''
def slow(i, seconds):
    conn = connect(ARGS["dsn"])
    try:
        return query(conn, "SELECT pg_sleep(%s), %s", (seconds, i))[0][1]
    finally:
        conn.close()

def expected(i):
    return i
'''

FAILURES = r'''
def refused():
    connect(ARGS["refused_dsn"])

def connect_timeout():
    # The blackhole accepts the TCP connection and never answers the
    # startup packet; libpq's minimum connect_timeout is 2 s.
    connect(f"host=127.0.0.1 port={BLACKHOLE_PORT} user=postgres "
            "dbname=postgres connect_timeout=2")

def statement_timeout():
    conn = connect(ARGS["dsn"], options="-c statement_timeout=300")
    try:
        query(conn, "SELECT pg_sleep(30)")
    finally:
        conn.close()

def _during_query(act):
    """Run a 30 s query in a coroutine (thread), do act(conn, admin, pid)
    once the server runs it, and return the query's outcome."""
    conn = connect(ARGS["dsn"])
    admin = connect(ARGS["dsn"])
    admin.autocommit = True
    pid = backend_pid(conn)
    finish = background(query, conn, "SELECT pg_sleep(30)")
    try:
        wait_until(lambda: query(
            admin, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s"
            " AND state = 'active' AND query LIKE 'SELECT pg_sleep%%'",
            (pid,))[0][0] == 1)
        # Let the query wait a while first, so the ticker's progress shows
        # that the waiting driver did not hold the thread.
        time.sleep(0.2)
        act(conn, admin, pid)
        finish()
    finally:
        conn.close()
        admin.close()

def killed_mid_query():
    _during_query(lambda conn, admin, pid: query(
        admin, "SELECT pg_terminate_backend(%s)", (pid,)))

def cancelled():
    # The driver's cancel: libpq opens a second connection of its own
    # (PQcancel) from this coroutine while the query waits in another.
    _during_query(lambda conn, admin, pid: conn.cancel())

case("refused", refused)
case("connect_timeout", connect_timeout, lasts=True)
case("statement_timeout", statement_timeout, lasts=True)
case("killed", killed_mid_query, lasts=True)
case("cancelled", cancelled, lasts=True)
# The server is still fine for new connections afterwards.
conn = connect(ARGS["dsn"])
print("after", query(conn, "SELECT 40 + 2")[0][0])
conn.close()
'''


@pytest.fixture(scope="module")
def pg():
    with servers.postgres() as info:
        yield info


@pytest.mark.slow
@pytest.mark.parametrize("driver", sorted(DRIVERS))
def test_postgres_slow_queries_on_coroutines_overlap(pg, driver):
    check_cooperation(DRIVERS[driver] + SLOW, {"dsn": pg["dsn"]})


@pytest.fixture(scope="module")
def pg_tls():
    with servers.postgres(tls=True) as info:
        yield info


# Over TLS libpq reads and writes through OpenSSL, whose socket BIO calls
# read/write: the data hooks, not recv/send.
TLS_CHECK = r'''
_plain_slow = slow

def slow(i, seconds):
    conn = connect(ARGS["dsn"])
    try:
        assert query(conn, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") == [(True,)]
    finally:
        conn.close()
    return _plain_slow(i, seconds)
'''


@pytest.mark.slow
@pytest.mark.parametrize("driver", sorted(DRIVERS))
def test_postgres_slow_queries_over_tls_overlap(pg_tls, driver):
    check_cooperation(DRIVERS[driver] + SLOW + TLS_CHECK, {"dsn": pg_tls["dsn"]})


@pytest.mark.slow
@pytest.mark.parametrize("driver", sorted(DRIVERS))
def test_postgres_failures_raise_the_drivers_errors(pg, driver):
    refused_dsn = (f"host=127.0.0.1 port={servers.closed_port()} "
                   "user=postgres dbname=postgres")
    lines = check_failures_same(DRIVERS[driver] + FAILURES,
                                {"dsn": pg["dsn"], "refused_dsn": refused_dsn})
    print("\n".join(lines))
    assert lines[0] == "refused OperationalError", lines
    assert lines[1].endswith("ticked True") and "no error" not in lines[1], lines
    assert lines[2] == "statement_timeout QueryCanceled ticked True", lines
    assert lines[3].endswith("ticked True") and "no error" not in lines[3], lines
    assert lines[4] == "cancelled QueryCanceled ticked True", lines
    assert lines[-1] == "after 42", lines


# Where the name lookup of a connect runs.  psycopg2 calls PQconnectdb with
# the GIL released, so libpq's getaddrinfo reaches the names hook as a
# parkable call and runs on interpose's resolver threads (one is still
# alive right after the connect: they linger 2 s).  psycopg 3 calls
# PQconnectPoll with the GIL held, where no hook may switch; it resolves
# the host itself first with socket.getaddrinfo (GIL released, so on the
# resolver threads) and hands libpq the address, whose lookup inside
# PQconnectPoll is numeric and never waits.  Either way the lookup never
# blocks the thread.
LOOKUP = r'''
import psutil
me = psutil.Process()
threads0 = me.num_threads()
conn = connect(f"host={ARGS['name']} port={ARGS['port']} user=postgres dbname=postgres")
resolver_threads = me.num_threads() - threads0
print("result", query(conn, "SELECT 1")[0][0])
conn.close()
print("lookup on", "resolver threads" if resolver_threads > 0 else "the calling thread")
'''


@pytest.mark.slow
@pytest.mark.parametrize("driver", sorted(DRIVERS))
def test_postgres_name_lookup_runs_on_the_resolver_threads(pg, driver):
    args = {"name": servers.loopback_name(), "port": pg["port"]}
    code = (f'import json\nARGS = json.loads(r"""{json.dumps(args)}""")\n'
            + DRIVERS[driver] + LOOKUP)
    lines = check_ok(run_hooked(code), "hooked")
    assert lines == ["result 1", "lookup on resolver threads"], lines
