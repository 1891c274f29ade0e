"""Unmodified threaded programs at scale under `python -m interpose run`:
http.server.ThreadingHTTPServer (examples/threaded_http_server.py) serving
1,000 concurrent keep-alive connections, a ThreadPoolExecutor +
urllib.request client, and a producer/consumer program of 1,000 threads
(queue.Queue, Condition, Event) that must print what it prints on OS threads.

Every process runs in a session of its own with stderr in a file (so a full
pipe can never stall it) and is killed as a group when the test ends, also on
failure; only 127.0.0.1 is used, as a literal (no resolver call in our own
code).  One OS thread means: /proc/PID/task has the main thread, interpose's
preemption monitor (docs/time-slicing.md), interpose's diagnostics thread
and at most RESOLVER_POOL_MAX threads of interpose's resolver pool (http.server's
server_bind calls socket.getfqdn and urllib calls getaddrinfo, even for
127.0.0.1), and every Python thread of the process reports the main
thread's native_id.
"""
import http.client
import json
import os
import re
import resource
import select
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest

from support.snippets import snippet_env
from support.processes import ProcessGroup, interpose_run as _interpose_run

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(os.path.dirname(HERE), "examples", "threaded_http_server.py")
READY_TIMEOUT = 30
# POOL_MAX in native/hooks_names.c: the resolver pool's worker threads.
RESOLVER_POOL_MAX = 4
# interpose's helpers: the preemption monitor (native/preempt.c) and the
# diagnostics thread (interpose/_diagnostics/_watch.py: `interpose ps`, the
# deadlock watcher), idle unless asked.
HELPER_THREADS = 2
ONE_OS_THREAD = 1 + RESOLVER_POOL_MAX + HELPER_THREADS


class Processes(ProcessGroup):
    """Children whose stderr goes to a file in directory (a full pipe can
    never stall them); proc.err_path names it."""

    def __init__(self, directory):
        super().__init__(env=snippet_env(None), cwd=directory)
        self.directory = directory

    def start(self, argv, *, name, stdin=subprocess.DEVNULL):
        err_path = os.path.join(self.directory, f"{name}.stderr")
        with open(err_path, "w") as err:
            proc = super().start(argv, stdin=stdin, stderr=err)
        proc.err_path = err_path
        return proc


@pytest.fixture
def procs(tmp_path):
    group = Processes(str(tmp_path))
    try:
        yield group
    finally:
        group.kill_all()


@pytest.fixture
def many_fds():
    """RLIMIT_NOFILE soft raised to the hard limit for the children (1,000
    client sockets and 1,000 server sockets on one machine), restored after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.fail(f"RLIMIT_NOFILE hard limit {hard} < 2048: this test needs"
                    " 2,048 fds (raise it with ulimit -Hn)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _stderr(proc):
    with open(proc.err_path) as f:
        return f.read()


def _readline(proc, timeout=READY_TIMEOUT):
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no output within {timeout} s; stderr:\n{_stderr(proc)}"
    return proc.stdout.readline()


def _start_server(procs):
    proc = procs.start(_interpose_run(SERVER, "127.0.0.1", 0), name="server")
    line = _readline(proc)
    match = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\n", line)
    assert match, f"unexpected first line {line!r}; stderr:\n{_stderr(proc)}"
    return proc, int(match.group(1))


def _stop_server(proc):
    """SIGINT (KeyboardInterrupt in serve_forever): status 0, nothing on
    stderr (a handler's exception would have been printed there)."""
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0, _stderr(proc)
    assert _stderr(proc) == ""


def _server_stats(port):
    """GET /stats from this (plain) process."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/stats")
        response = conn.getresponse()
        assert response.status == 200
        return json.loads(response.read())
    finally:
        conn.close()


def _os_threads(pid):
    try:
        return psutil.Process(pid).num_threads()
    except psutil.NoSuchProcess:
        return None


def _sample_while_running(proc, pids, timeout):
    """num_threads of each pid every 10 ms until proc exits; {pid: [counts]}."""
    samples = {pid: [] for pid in pids}
    for _ in range(int(timeout * 100)):
        for pid in pids:
            n = _os_threads(pid)
            if n is not None:
                samples[pid].append(n)
        try:
            proc.wait(timeout=0.01)
            return samples
        except subprocess.TimeoutExpired:
            pass
    raise AssertionError(f"process did not finish within {timeout} s")


def _script(tmp_path, name, code):
    path = tmp_path / name
    path.write_text(textwrap.dedent(code))
    return str(path)


# ---- a. 1,000 keep-alive connections ----------------------------------------

# One threading.Thread per connection; each sends REQUESTS requests on its
# keep-alive connection and checks each response byte for byte.  After every
# connection has had its first answer, all wait at a barrier; the main thread
# prints "open" and waits for a line on stdin before they go on, so the test
# can look at the server while all 1,000 connections are open.
KEEPALIVE_CLIENT = r'''
import socket
import sys
import threading

PORT, CLIENTS, REQUESTS = map(int, sys.argv[1:4])
opened = threading.Barrier(CLIENTS + 1)
go = threading.Event()
lock = threading.Lock()
answered = 0
errors = []


def request(sock, rfile, path, n):
    """One GET on the connection; its response must be exactly right."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    status = rfile.readline()
    if status != b"HTTP/1.1 200 OK\r\n":
        raise AssertionError(f"status line {status!r}")
    headers = {}
    while True:
        line = rfile.readline()
        if line == b"\r\n":
            break
        if not line.endswith(b"\r\n"):
            raise AssertionError(f"header line {line!r}")
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = rfile.read(int(headers["content-length"]))
    expected = f"{path[::-1]} {n}\n".encode()
    if body != expected:
        raise AssertionError(f"{path}: body {body!r}, expected {expected!r}")
    if headers.get("connection", "").lower() == "close":
        raise AssertionError(f"{path}: the server closes the connection")


def client(i):
    global answered
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with sock, sock.makefile("rb") as rfile:
            sock.connect(("127.0.0.1", PORT))
            for n in range(1, REQUESTS + 1):
                request(sock, rfile, f"/client/{i}/request/{n}?q={i * n}", n)
                with lock:
                    answered += 1
                if n == 1:
                    opened.wait()
                    go.wait()
    except BaseException as e:
        errors.append(f"client {i}: {e!r}")
        opened.abort()


threads = [threading.Thread(target=client, args=(i,), name=f"client-{i}")
           for i in range(CLIENTS)]
for t in threads:
    t.start()
try:
    opened.wait()
    print("open", flush=True)
    sys.stdin.readline()
except threading.BrokenBarrierError:
    pass
go.set()
for t in threads:
    t.join()
for e in errors[:20]:
    print(e, file=sys.stderr)
print(f"answered {answered} errors {len(errors)}", flush=True)
sys.exit(1 if errors else 0)
'''


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_threading_http_server_serves_1000_keepalive_clients_in_one_os_thread(
        procs, many_fds, tmp_path):
    clients, requests = 1000, 5
    server, port = _start_server(procs)
    client = procs.start(
        _interpose_run(_script(tmp_path, "keepalive_client.py", KEEPALIVE_CLIENT),
                       port, clients, requests),
        name="client", stdin=subprocess.PIPE)
    line = _readline(client, timeout=120)
    assert line == "open\n", f"client said {line!r}; stderr:\n{_stderr(client)}"

    # Every connection is open and has been answered once: 1,000 handler
    # threads (plus the main thread and the one answering /stats) ...
    threads_while_open = _os_threads(server.pid)
    stats = _server_stats(port)
    established = [c for c in psutil.Process(server.pid).net_connections("tcp")
                   if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port]
    assert stats["active"] == clients + 2, stats
    assert len(established) >= clients
    # ... on the server's one OS thread.
    assert stats["native_ids"] == [server.pid], stats
    assert stats["os_threads"] <= ONE_OS_THREAD, stats
    assert threads_while_open <= ONE_OS_THREAD

    client.stdin.write("go\n")
    client.stdin.close()
    samples = _sample_while_running(client, [server.pid], timeout=180)
    out = client.stdout.read()
    assert client.returncode == 0, f"{out}\n{_stderr(client)}"
    assert out == f"answered {clients * requests} errors 0\n"
    assert _stderr(client) == ""
    assert samples[server.pid] and max(samples[server.pid]) <= ONE_OS_THREAD, samples

    stats = _server_stats(port)
    assert stats["served"] == clients * requests + 2, stats  # + the two /stats
    assert stats["native_ids"] == [server.pid], stats
    _stop_server(server)


# ---- b. ThreadPoolExecutor + urllib.request ---------------------------------

EXECUTOR_CLIENT = r'''
import concurrent.futures
import json
import os
import sys
import threading
import urllib.request

PORT, REQUESTS = map(int, sys.argv[1:3])


def fetch(i):
    path = f"/urllib/{i}/" + "x" * (i % 7)
    with urllib.request.urlopen(f"http://127.0.0.1:{PORT}{path}") as response:
        status, body = response.status, response.read()
    # urllib sends "Connection: close": every request has a connection of
    # its own, so each is its connection's first.
    expected = f"{path[::-1]} 1\n".encode()
    if status != 200 or body != expected:
        raise AssertionError(f"{path}: {status} {body!r}, expected {expected!r}")
    return i


with concurrent.futures.ThreadPoolExecutor(max_workers=100) as pool:
    results = sorted(pool.map(fetch, range(REQUESTS)))
    seen = {
        "active": threading.active_count(),
        "native_ids": sorted({t.native_id for t in threading.enumerate()}),
        "os_threads": len(os.listdir("/proc/self/task")),
    }
assert results == list(range(REQUESTS))
print(f"correct {len(results)}")
print(json.dumps(seen), flush=True)
'''


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_thread_pool_urllib_client_gets_every_response_in_one_os_thread(
        procs, many_fds, tmp_path):
    requests = 1000
    server, port = _start_server(procs)
    client = procs.start(
        _interpose_run(_script(tmp_path, "executor_client.py", EXECUTOR_CLIENT),
                       port, requests),
        name="client")
    samples = _sample_while_running(client, [client.pid, server.pid], timeout=180)
    out = client.stdout.read()
    assert client.returncode == 0, f"{out}\n{_stderr(client)}"
    assert _stderr(client) == ""
    correct, seen = out.splitlines()
    assert correct == f"correct {requests}"
    seen = json.loads(seen)
    # Up to 100 workers and the main thread, all on the main OS thread.
    assert 2 <= seen["active"] <= 101, seen
    assert seen["native_ids"] == [client.pid], seen
    assert seen["os_threads"] <= ONE_OS_THREAD, seen
    for pid in (client.pid, server.pid):
        assert samples[pid] and max(samples[pid]) <= ONE_OS_THREAD, samples
    assert _server_stats(port)["served"] == requests + 1
    _stop_server(server)


# ---- c. producer/consumer across 1,000 threads ------------------------------

# 500 producers put 20 items each into a bounded queue (maxsize 10); 500
# consumers take them and add them to a Condition-protected total; a watcher
# waits on the Condition for the last item and sets the `finished` Event,
# after which the main thread stops the consumers with sentinels.  Everyone
# starts at once on the `start` Event.  stdout is deterministic; the number
# of OS threads right before `start` is set (every thread started, none
# finished) goes to the file named by THREADS_FILE, since it must differ.
PRODUCER_CONSUMER = r'''
import os
import queue
import threading

PRODUCERS = CONSUMERS = 500
ITEMS = 20
TOTAL = PRODUCERS * ITEMS

q = queue.Queue(maxsize=10)
start = threading.Event()
finished = threading.Event()
cond = threading.Condition()
consumed = 0
total = 0
received = [[] for _ in range(CONSUMERS)]


def producer(p):
    start.wait()
    for j in range(ITEMS):
        q.put((p, j, p * 1000 + j))


def consumer(c):
    global consumed, total
    start.wait()
    while True:
        item = q.get()
        if item is None:
            q.task_done()
            return
        received[c].append(item)
        with cond:
            consumed += 1
            total += item[2]
            cond.notify_all()
        q.task_done()


def watcher():
    with cond:
        cond.wait_for(lambda: consumed == TOTAL)
    finished.set()


threads = [threading.Thread(target=producer, args=(p,)) for p in range(PRODUCERS)]
threads += [threading.Thread(target=consumer, args=(c,)) for c in range(CONSUMERS)]
threads.append(threading.Thread(target=watcher))
for t in threads:
    t.start()
print("threads before start", threading.active_count())
# The program's OS threads, not interpose's diagnostics thread.
names = [open(f"/proc/self/task/{t}/comm").read().strip()
         for t in os.listdir("/proc/self/task")]
with open(os.environ["THREADS_FILE"], "w") as f:
    f.write(str(sum(n != "interpose-diag" for n in names)))
start.set()
for t in threads[:PRODUCERS]:
    t.join()
finished.wait()
for _ in range(CONSUMERS):
    q.put(None)
q.join()
for t in threads:
    t.join()

items = sorted(item for got in received for item in got)
expected = sorted((p, j, p * 1000 + j) for p in range(PRODUCERS) for j in range(ITEMS))
in_order = all([i for i in got if i[0] == p] == sorted(i for i in got if i[0] == p)
               for got in received for p in {i[0] for i in got})
print("consumed", consumed, "total", total)
print("every item exactly once", items == expected)
print("each producer's items in order at each consumer", in_order)
print("sum", sum(item[2] for item in items), "expected", sum(i[2] for i in expected))
print("queue empty", q.empty(), "threads after join", threading.active_count())
'''


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_producer_consumer_1000_threads_same_output_as_os_threads(tmp_path):
    path = _script(tmp_path, "producer_consumer.py", PRODUCER_CONSUMER)
    results = {}
    for mode, argv in (("interpose", _interpose_run(path)),
                       ("threads", [sys.executable, path])):
        threads_file = tmp_path / f"{mode}.threads"
        env = snippet_env({"THREADS_FILE": str(threads_file)})
        proc = subprocess.run(argv, capture_output=True, text=True, env=env,
                              timeout=180, cwd=str(tmp_path),
                              stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, f"{mode}: {proc.stdout}\n{proc.stderr}"
        assert proc.stderr == "", mode
        results[mode] = proc.stdout, int(threads_file.read_text())
    (out, os_threads), (plain_out, plain_os_threads) = (
        results["interpose"], results["threads"])
    assert out == plain_out
    assert out.splitlines() == [
        "threads before start 1002",
        "consumed 10000 total 2495095000",
        "every item exactly once True",
        "each producer's items in order at each consumer True",
        "sum 2495095000 expected 2495095000",
        "queue empty True threads after join 1",
    ]
    assert os_threads == 2  # the program's OS thread and the preemption monitor
    assert plain_os_threads == 1002  # the measure does see OS threads
