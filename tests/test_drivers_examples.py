"""The driver examples (examples/*_concurrent.py) run under
`python -m interpose run` against the test servers: every query answers,
and N of them take well under the time of N one after another.

Each server is started for this module (tests/support/servers.py) and stopped at
its end.
"""
import os
import re
import subprocess
import sys

import pytest

from support import servers
from support.snippets import snippet_env

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "examples")
N = 8
SLOW_S = 0.5
TOTAL = re.compile(r"^(\d+) (queries|commands|requests) in (\d+\.\d+) s$")


@pytest.fixture(scope="module")
def pg():
    with servers.postgres() as info:
        yield info


@pytest.fixture(scope="module")
def mariadb():
    with servers.mariadb() as info:
        yield info


@pytest.fixture(scope="module")
def redis_server():
    with servers.redis() as info:
        yield info


@pytest.fixture(scope="module")
def https():
    with servers.http_server(tls=True) as info:
        yield info


def _run_example(name, *args):
    # The snippets' environment: no interpose preload inherited, the
    # sanitizer runtimes of scripts/asan-tests kept first.
    proc = subprocess.run(
        [sys.executable, "-m", "interpose", "run",
         os.path.join(EXAMPLES, name), *map(str, args)],
        capture_output=True, text=True, timeout=60, env=snippet_env(None))
    assert proc.returncode == 0 and proc.stderr == "", proc
    lines = proc.stdout.splitlines()
    match = TOTAL.match(lines[-1])
    assert match and int(match.group(1)) == N, lines
    # Serial would take N * 0.5 s = 4 s; overlapped about 0.5 s.
    assert float(match.group(3)) < N * SLOW_S / 2, lines
    return lines[:-1]


def _numbered(lines, word, pattern):
    assert [line.split(":")[0] for line in lines] == [f"{word} {i}" for i in range(N)], lines
    assert all(re.fullmatch(pattern, line.split(": ", 1)[1]) for line in lines), lines


@pytest.mark.slow
def test_postgres_example_overlaps_queries(pg):
    lines = _run_example("postgres_concurrent.py", pg["dsn"], N)
    _numbered(lines, "query", r"backend \d+ slept 0\.5 s")
    assert len({line.split()[3] for line in lines}) == N  # N backends


@pytest.mark.slow
def test_psycopg3_example_overlaps_queries_in_c_mode(pg):
    lines = _run_example("psycopg3_concurrent.py", pg["dsn"], N)
    assert lines[0] in ("psycopg implementation: binary",
                        "psycopg implementation: c"), lines
    _numbered(lines[1:], "query", r"backend \d+ slept 0\.5 s")


@pytest.mark.slow
def test_mariadb_example_overlaps_queries(mariadb):
    lines = _run_example("mariadb_concurrent.py", mariadb["host"],
                         mariadb["port"], mariadb["user"], N)
    _numbered(lines, "query", r"connection \d+ slept 0\.5 s")


@pytest.mark.slow
def test_redis_example_overlaps_commands(redis_server):
    lines = _run_example("redis_concurrent.py", redis_server["host"],
                         redis_server["port"], N)
    assert lines[0] == "hiredis parser: True", lines
    _numbered(lines[1:], "command", r"BLPOP returned None after 0\.5 s")


@pytest.mark.slow
def test_curl_example_overlaps_https_requests(https):
    lines = _run_example("curl_concurrent.py", https["url"] + "/slow?s=0.5", N,
                         "--cacert", https["cafile"])
    _numbered(lines, "request", r"HTTP 200, \d+ bytes")
