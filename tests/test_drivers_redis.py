"""redis-py, with hiredis's C parser and with its pure-Python parser,
against a private redis-server: BLPOPs on coroutines overlap, and the
failure paths raise redis-py's usual errors.

redis-py does its socket I/O in Python either way; hiredis only parses
replies, so both parsers must behave the same under the preload.  The
server is started once for this module (tests/support/servers.py) and stopped at
its end; a missing redis-server fails the tests.
"""
import pytest

from support import servers
from support.drivers import check_cooperation, check_failures_same

DRIVER = r'''
import redis
from redis._parsers import _HiredisParser, _RESP2Parser

PARSER = {"hiredis": _HiredisParser, "python": _RESP2Parser}[ARGS["parser"]]

def connect(port=None, **params):
    pool = redis.ConnectionPool(host="127.0.0.1", port=port or ARGS["port"],
                                parser_class=PARSER, protocol=2, **params)
    return redis.Redis(connection_pool=pool)

def close(client):
    # A pool passed in is the caller's to disconnect.
    client.close()
    client.connection_pool.disconnect()
'''

# BLPOP on a list nobody pushes to: the server holds the reply for its
# timeout without blocking other clients (DEBUG SLEEP would block them all).
SLOW = r'''
def slow(i, seconds):
    client = connect()
    try:
        client.set(f"key{i}", i)
        if seconds:
            assert client.blpop([f"empty{i}"], timeout=seconds) is None
        conn = client.connection_pool.get_connection()
        assert type(conn._parser) is PARSER, conn._parser
        client.connection_pool.release(conn)
        return int(client.get(f"key{i}"))
    finally:
        close(client)

def expected(i):
    return i
'''

FAILURES = r'''
def refused():
    connect(ARGS["refused_port"]).ping()

def connect_timeout():
    # The blackhole completes the TCP handshake but never answers: the
    # first command's reply times out.
    connect(BLACKHOLE_PORT, socket_connect_timeout=1, socket_timeout=1).ping()

def socket_timeout():
    client = connect(socket_timeout=0.3)
    try:
        client.blpop(["nothing"], timeout=30)
    finally:
        close(client)

def killed_mid_command():
    client = connect()
    admin = connect()
    client_id = client.client_id()
    finish = background(client.blpop, ["nothing"], 30)
    try:
        wait_until(lambda: any(c["id"] == str(client_id) and c["cmd"] == "blpop"
                               for c in admin.client_list()))
        # Let the command wait a while first, so the ticker's progress
        # shows that the waiting driver did not hold the thread.
        time.sleep(0.2)
        admin.client_kill_filter(_id=client_id)
        finish()
    finally:
        close(client)
        close(admin)

case("refused", refused)
case("connect_timeout", connect_timeout, lasts=True)
case("socket_timeout", socket_timeout, lasts=True)
case("killed", killed_mid_command, lasts=True)
client = connect()
print("after", client.incrby("after", 42))
client.delete("after")
close(client)
'''

PARSERS = ["hiredis", "python"]


@pytest.fixture(scope="module")
def redis_server():
    with servers.redis() as info:
        yield info


@pytest.mark.slow
@pytest.mark.parametrize("parser", PARSERS)
def test_redis_blocking_pops_on_coroutines_overlap(redis_server, parser):
    check_cooperation(DRIVER + SLOW,
                      {"port": redis_server["port"], "parser": parser})


@pytest.mark.slow
@pytest.mark.parametrize("parser", PARSERS)
def test_redis_failures_raise_the_drivers_errors(redis_server, parser):
    lines = check_failures_same(
        DRIVER + FAILURES,
        {"port": redis_server["port"], "parser": parser,
         "refused_port": servers.closed_port()})
    print("\n".join(lines))
    assert lines[0] == "refused ConnectionError", lines
    assert lines[1] == "connect_timeout TimeoutError ticked True", lines
    assert lines[2] == "socket_timeout TimeoutError ticked True", lines
    assert lines[3] == "killed ConnectionError ticked True", lines
    assert lines[-1] == "after 42", lines
