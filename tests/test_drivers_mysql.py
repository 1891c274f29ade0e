"""MariaDB Connector/C through mysqlclient (MySQLdb), against a private
mariadbd: slow queries on coroutines overlap, and the failure paths raise
the driver's usual errors.

The server is started once for this module (tests/support/servers.py) and
stopped at its end; a missing MariaDB fails the tests.
"""
import pytest

from support import servers
from support.drivers import check_cooperation, check_failures_same

DRIVER = r'''
import MySQLdb

def connect(port=None, **params):
    return MySQLdb.connect(host="127.0.0.1", port=port or ARGS["port"],
                           user="root", **params)

def query(conn, sql, params=None):
    cur = conn.cursor()
    try:
        cur.execute(sql, params)
        return cur.fetchall()
    finally:
        cur.close()
'''

SLOW = r'''
def slow(i, seconds):
    conn = connect()
    try:
        return query(conn, "SELECT SLEEP(%s), %s", (seconds, i))[0][1]
    finally:
        conn.close()

def expected(i):
    return i
'''

FAILURES = r'''
def refused():
    connect(ARGS["refused_port"])

def connect_timeout():
    connect(BLACKHOLE_PORT, connect_timeout=1)

def read_timeout():
    conn = connect(read_timeout=1)
    try:
        query(conn, "SELECT SLEEP(30)")
    finally:
        conn.close()

def killed_mid_query():
    conn = connect()
    admin = connect()
    thread_id = conn.thread_id()
    finish = background(query, conn, "SELECT SLEEP(30)")
    try:
        wait_until(lambda: query(
            admin, "SELECT COUNT(*) FROM information_schema.PROCESSLIST"
            " WHERE ID = %s AND INFO LIKE 'SELECT SLEEP%%'", (thread_id,))[0][0] == 1)
        # Let the query wait a while first, so the ticker's progress shows
        # that the waiting driver did not hold the thread.
        time.sleep(0.2)
        query(admin, f"KILL {thread_id}")
        finish()
    finally:
        conn.close()
        admin.close()

case("refused", refused)
case("connect_timeout", connect_timeout, lasts=True)
case("read_timeout", read_timeout, lasts=True)
case("killed", killed_mid_query, lasts=True)
conn = connect()
print("after", query(conn, "SELECT 40 + 2")[0][0])
conn.close()
'''


@pytest.fixture(scope="module")
def mariadb():
    with servers.mariadb() as info:
        yield info


@pytest.mark.slow
def test_mysqlclient_slow_queries_on_coroutines_overlap(mariadb):
    check_cooperation(DRIVER + SLOW, {"port": mariadb["port"]})


@pytest.mark.slow
def test_mysqlclient_failures_raise_the_drivers_errors(mariadb):
    lines = check_failures_same(
        DRIVER + FAILURES,
        {"port": mariadb["port"], "refused_port": servers.closed_port()})
    print("\n".join(lines))
    # CR_CONN_HOST_ERROR (2002: cannot connect), CR_SERVER_LOST (2013).
    assert lines[0] == "refused OperationalError 2002", lines
    assert lines[1].startswith("connect_timeout OperationalError 20"), lines
    assert lines[1].endswith("ticked True"), lines
    assert lines[2] == "read_timeout OperationalError 2013 ticked True", lines
    assert lines[3] == "killed OperationalError 2013 ticked True", lines
    assert lines[-1] == "after 42", lines
