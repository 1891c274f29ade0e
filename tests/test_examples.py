"""The libco examples redone in Python (examples/echo_server.py,
examples/echo_client.py), fork from the main coroutine, and the echo demo
(python -m interpose demo).

Every process is started in a session of its own and killed as a group in
a finally block; only 127.0.0.1 is used.
"""
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import psutil
import pytest

from support.snippets import ROOT
from support.processes import ProcessGroup, interpose_run as _interpose_run

# The examples of this checkout (ROOT is where the interpose package under
# test lives, which under scripts/asan-tests is a temporary copy).
EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "examples")
SERVER = os.path.join(EXAMPLES, "echo_server.py")
CLIENT = os.path.join(EXAMPLES, "echo_client.py")
TIME_LINE = re.compile(r"^time (\d+) Succ Cnt (\d+) Fail Cnt (\d+)$")
TOTAL_LINE = re.compile(r"^total Succ Cnt (\d+) Fail Cnt (\d+)$")
READY_TIMEOUT = 30

def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


@pytest.fixture
def group():
    g = ProcessGroup(env=_env(), cwd=ROOT)
    try:
        yield g
    finally:
        g.kill_all()


def _start_server(group, coroutines, processes, *, debug=False, stderr=None):
    env = _env(ECHO_SERVER_DEBUG="1") if debug else _env()
    proc = group.start(_interpose_run(SERVER, "127.0.0.1", 0, coroutines, processes),
                       env=env, stderr=stderr if stderr is not None else subprocess.PIPE)
    ready, _, _ = select.select([proc.stdout], [], [], READY_TIMEOUT)
    assert ready, "the server never printed its address"
    line = proc.stdout.readline()
    match = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\n", line)
    if match is None:
        proc.kill()
        raise AssertionError(f"unexpected first line {line!r}")
    return proc, int(match.group(1))


def _run_client(group, port, coroutines, processes, duration, timeout=60):
    proc = group.start(_interpose_run(CLIENT, "127.0.0.1", port, coroutines,
                                      processes, "--duration", duration))
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _parse_client_output(out):
    """(per-second (time, succ, fail) tuples, per-process (succ, fail) totals);
    fails on any other line."""
    seconds, totals = [], []
    for line in out.splitlines():
        m = TIME_LINE.match(line)
        if m:
            seconds.append(tuple(map(int, m.groups())))
            continue
        m = TOTAL_LINE.match(line)
        assert m, f"unexpected client output line {line!r}"
        totals.append(tuple(map(int, m.groups())))
    return seconds, totals


def _worker_pids(server, count):
    """The server's worker processes, once there are count of them."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        children = psutil.Process(server.pid).children()
        if len(children) >= count:
            return {c.pid for c in children}
        time.sleep(0.05)
    raise AssertionError(f"the server never had {count} workers")


def _round_trip(sock, payload):
    sock.sendall(payload)
    echo = b""
    while len(echo) < len(payload):
        chunk = sock.recv(len(payload) - len(echo))
        assert chunk, "the server closed the connection"
        echo += chunk
    assert echo == payload


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_thousand_client_coroutines_get_every_echo(group):
    """2 client processes x 500 coroutines against 2 server workers x 600
    coroutines for 2 s: every round trip succeeds, and the server accepted
    exactly one connection per client coroutine (nobody had to reconnect)."""
    with tempfile.TemporaryFile("w+") as server_err:
        server, port = _start_server(group, 600, 2, debug=True, stderr=server_err)
        workers = _worker_pids(server, 2)
        code, out, err = _run_client(group, port, 500, 2, 2)
        assert code == 0, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        seconds, totals = _parse_client_output(out)
        assert len(totals) == 2, out
        assert all(fail == 0 for _, _, fail in seconds), out
        assert all(fail == 0 for _, fail in totals), out
        assert all(succ > 0 for succ, _ in totals), out
        assert len(seconds) >= 2, out  # at least one report per process
        assert sum(s for _, s, _ in seconds) > 0
        assert sum(s for _, s, _ in seconds) <= sum(s for s, _ in totals)
        assert server.poll() is None, "the server died under load"
        server_err.seek(0)
        accepted = [line.split() for line in server_err if " accepted " in line]
        assert len(accepted) == 1000
        assert {int(words[1]) for words in accepted} <= workers


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_client_prints_libco_lines_and_counts_failures(group):
    """The per-second line is libco's `time <s> Succ Cnt <n> Fail Cnt <m>`;
    against a port nobody listens on, every attempt is a counted failure."""
    server, port = _start_server(group, 4, 1)
    t0 = int(time.time())
    code, out, err = _run_client(group, port, 2, 1, 1.5)
    assert code == 0, err
    seconds, totals = _parse_client_output(out)
    assert seconds and all(TIME_LINE.match(line) for line in out.splitlines()[:-1])
    assert out.splitlines()[-1] == f"total Succ Cnt {totals[0][0]} Fail Cnt 0"
    assert all(t0 - 1 <= t <= t0 + 5 for t, _, _ in seconds), (t0, seconds)
    assert totals[0][0] > 0

    with socket.socket() as s:  # a port with nothing listening on it
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    code, out, err = _run_client(group, dead_port, 2, 1, 1.5)
    assert code == 0, err
    seconds, totals = _parse_client_output(out)
    assert totals[0][0] == 0 and totals[0][1] > 0, out
    assert all(succ == 0 for _, succ, _ in seconds), out


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_server_forks_workers_that_share_the_listening_socket(group):
    """PROCESSES=2 forks two workers that both accept on the one socket:
    with one handler coroutine per worker, a second open connection can
    only be served by the other worker.  SIGTERM to the parent stops both."""
    with tempfile.TemporaryFile("w+") as server_err:
        server, port = _start_server(group, 1, 2, debug=True, stderr=server_err)
        workers = _worker_pids(server, 2)
        assert len(workers) == 2
        conns = []
        try:
            for i in range(2):
                conn = socket.create_connection(("127.0.0.1", port), timeout=20)
                conns.append(conn)
                _round_trip(conn, b"conn-%d!!" % i)
            for conn in conns:  # both still served, concurrently
                _round_trip(conn, b"x" * 10000)
        finally:
            for conn in conns:
                conn.close()
        server_err.seek(0)
        pids = [int(line.split()[1]) for line in server_err if " accepted " in line]
        assert len(pids) == 2 and set(pids) == workers, pids

        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=20) == 0
        deadline = time.monotonic() + 20
        while any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
                  for pid in workers):
            assert time.monotonic() < deadline, "the workers outlived the parent"
            time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_threads_variant_serves_with_plain_python(group):
    """--threads: the same server on OS threads, run with plain python."""
    proc = group.start([sys.executable, SERVER, "127.0.0.1", "0", "4", "1", "--threads"])
    ready, _, _ = select.select([proc.stdout], [], [], READY_TIMEOUT)
    assert ready
    port = int(proc.stdout.readline().rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=20) as conn:
        for i in range(20):
            _round_trip(conn, b"%08d" % i)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 0


FORK_SNIPPET = r'''
import os, socket, sys, time
import interpose

listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", 0))
listener.listen(128)
address = listener.getsockname()

def serve():
    while True:
        conn, _ = listener.accept()
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)

def round_trips(n):
    with socket.create_connection(address) as s:
        for i in range(n):
            s.sendall(b"%08d" % i)
            echo = b""
            while len(echo) < 8:
                echo += s.recv(8 - len(echo))
            assert echo == b"%08d" % i, echo
    return n

def pair_echo(n):
    a, b = socket.socketpair()
    def echo():
        while data := b.recv(4096):
            b.sendall(data)
        b.close()
    helper = interpose.spawn(echo)
    for i in range(n):
        a.sendall(b"p%07d" % i)
        assert a.recv(8) == b"p%07d" % i
    a.close()
    helper.join()
    return n

def load(k):
    return sum(c.join() for c in [interpose.spawn(round_trips, 50) for _ in range(k)])

servers = [interpose.spawn(serve, name=f"server-{i}") for i in range(4)]
sleeper = interpose.spawn(time.sleep, 30, name="sleeper")   # a timer across the fork
assert load(8) == 400
before = interpose.statistics()
assert before.coroutines_alive == 5, before

pid = os.fork()
if pid == 0:
    stats = interpose.statistics()
    assert stats.coroutines_alive == 0, stats      # only the forking coroutine
    assert interpose.current().name == "main"
    mine = [interpose.spawn(serve, name=f"child-server-{i}") for i in range(2)]
    assert load(8) == 400                          # new coroutines doing socket I/O
    assert interpose.spawn(pair_echo, 100).join() == 100
    time.sleep(0.05)                               # hooked: parks the main coroutine
    assert interpose.statistics().coroutines_alive == 2
    print("child ok", os.getpid(), flush=True)
    sys.exit(0)                                    # normal exit: atexit cancels mine

assert load(8) == 400                              # the parent carries on
assert interpose.spawn(pair_echo, 100).join() == 100
while True:                                        # waitpid is not hooked: poll
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        break
    time.sleep(0.01)
assert load(4) == 200
print("parent ok child-status", os.waitstatus_to_exitcode(status), flush=True)
'''


def _run_under_interpose(group, code, timeout=60):
    fd, path = tempfile.mkstemp(suffix=".py")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(textwrap.dedent(code))
        proc = group.start(_interpose_run(path))
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err
    finally:
        os.unlink(path)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_fork_from_the_main_coroutine(group):
    """The child of a fork from the main coroutine gets a fresh scheduler
    with none of the parent's coroutines, spawns new ones that do socket I/O
    (on the inherited listening socket and on new sockets) and exits 0; the
    parent's coroutines, timers and fds carry on."""
    code, out, err = _run_under_interpose(group, FORK_SNIPPET)
    assert code == 0, err[-3000:]
    lines = out.splitlines()
    assert len(lines) == 2, out + err
    assert lines[0].startswith("child ok ")
    assert lines[1] == "parent ok child-status 0"
    assert "Traceback" not in err, err[-3000:]


# A child touching a coroutine that did not survive the fork (regression
# tests for crashes and hangs found here: the engine resumed the dead
# coroutine's stack and deleted thread state).  Such a coroutine is
# finished in the child: wakes and cancels miss it, join() raises
# interpose.Cancelled at once.  Each snippet runs under `interpose run`; the
# parent checks the child's exit status (and the test checks stderr).
FORK_CHILD_STATUS = """
_, status = os.wait()
assert os.waitstatus_to_exitcode(status) == 0, os.waitstatus_to_exitcode(status)
"""
FORK_BUG_SNIPPETS = {
    # The child cancels a pre-fork coroutine parked on a socket: the engine
    # switches to the dead coroutine's stack and thread state (deleted by
    # CPython in the child): RuntimeError "cannot exit context", SIGSEGV.
    "cancel-parked-on-socket": """
a, b = socket.socketpair()
c = interpose.spawn(a.recv, 10)
interpose.sleep(0.05)
if os.fork() == 0:
    c.cancel()
    interpose.sleep(0.1)
    os._exit(0 if c.done() else 3)
""" + FORK_CHILD_STATUS,
    # The same, parked in sleep: abort "internal invariant broken at
    # timer.c:96" (its timer index points into the parent's heap).
    "cancel-parked-in-sleep": """
c = interpose.spawn(interpose.sleep, 100)
interpose.sleep(0.05)
if os.fork() == 0:
    c.cancel()
    interpose.sleep(0.1)
    os._exit(0 if c.done() else 3)
""" + FORK_CHILD_STATUS,
    # Setting an Event that a pre-fork coroutine waits on resumes the dead
    # coroutine: "cannot exit context", then "double free or corruption".
    "event-wakes-lost-coroutine": """
ev = interpose.Event()
c = interpose.spawn(ev.wait)
interpose.sleep(0.05)
if os.fork() == 0:
    ev.set()
    interpose.sleep(0.1)
    os._exit(0)
""" + FORK_CHILD_STATUS,
    # join() on a coroutine that did not survive the fork used to wait
    # forever; threading's join returns at once for threads lost in a fork.
    "join-lost-coroutine": """
c = interpose.spawn(interpose.sleep, 100)
interpose.sleep(0.05)
if os.fork() == 0:
    try:
        c.join(timeout=2)
    except TimeoutError:
        os._exit(3)
    except interpose.Cancelled:
        os._exit(0)
    os._exit(4)
""" + FORK_CHILD_STATUS,
    # Forked from a spawned coroutine that the parent was joining: the
    # child's uncaught exception is never reported (the parent's joiner
    # count came across the fork); with a thread, the traceback is printed.
    "exception-in-child-of-joined-coroutine": """
def body():
    if os.fork() == 0:
        raise ValueError("reported-in-child")
    interpose.sleep(0.3)
interpose.spawn(body).join()
""" + FORK_CHILD_STATUS,
}


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(FORK_BUG_SNIPPETS))
def test_child_touching_coroutines_lost_in_the_fork(group, name):
    code = "import os, socket, interpose\n" + FORK_BUG_SNIPPETS[name]
    rc, out, err = _run_under_interpose(group, code, timeout=30)
    assert rc == 0, err[-2000:]
    if name == "exception-in-child-of-joined-coroutine":
        assert "reported-in-child" in err, err
    else:
        assert "Traceback" not in err, err[-2000:]


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_demo_runs_echo_and_reports(group):
    """python -m interpose demo --seconds 2: per-second libco lines, then a
    summary with zero errors and the scheduler's statistics.  The lines come
    at wall-clock second boundaries, so the first may cover a sliver of a
    second before the clients' first round trip; 2 s hold a whole one."""
    proc = group.start([sys.executable, "-m", "interpose", "demo", "--seconds", "2"])
    out, err = proc.communicate(timeout=45)
    assert proc.returncode == 0, out + err
    lines = out.splitlines()
    per_second = [m for m in map(TIME_LINE.match, lines) if m]
    assert per_second, out
    assert all(int(m.group(3)) == 0 for m in per_second), out
    assert sum(int(m.group(2)) for m in per_second) > 0, out
    summary = next(line for line in lines if line.startswith("round trips: "))
    assert int(summary.split()[2]) > 0, summary
    assert "errors: 0" in lines, out
    assert "scheduler statistics:" in lines, out
    assert re.search(r"^  switches +\d+$", out, re.M), out
