"""The benchmark tools themselves: the C load generator counts round trips
and catches a corrupted echo; the suite's command line starts."""
import json
import os
import shutil
import socket
import subprocess
import sys
import threading

import pytest

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "scripts")

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


@pytest.fixture(scope="module")
def loadgen(tmp_path_factory):
    exe = tmp_path_factory.mktemp("loadgen") / "loadgen"
    subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(exe),
                    os.path.join(SCRIPTS, "loadgen.c")], check=True)
    return str(exe)


class EchoServer:
    """A thread-per-connection echo server in this process; with corrupt,
    it flips one bit of the 5th byte it ever echoes on each connection."""

    def __init__(self, corrupt=False):
        self.corrupt = corrupt
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self.listener.getsockname()[1]
        self.threads = []
        self.acceptor = threading.Thread(target=self._accept)
        self.acceptor.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # the listener was closed: the test is over
                return
            t = threading.Thread(target=self._serve, args=(conn,))
            t.start()
            self.threads.append(t)

    def _serve(self, conn):
        echoed = 0
        with conn:
            try:
                while data := conn.recv(65536):
                    if self.corrupt and echoed <= 4 < echoed + len(data):
                        data = bytearray(data)
                        data[4 - echoed] ^= 0x01
                    echoed += len(data)
                    conn.sendall(data)
            except ConnectionError:  # the load generator exits with data in flight
                return

    def close(self):
        # shutdown wakes the accept() blocked in the other thread; close
        # alone would leave it blocked.
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        self.acceptor.join()
        for t in self.threads:
            t.join()


def run_loadgen(loadgen, port, *extra):
    out = subprocess.run(
        [loadgen, "--port", str(port), "--conns", "10", "--size", "64",
         "--duration", "0.5", "--warmup", "0.1", *extra],
        capture_output=True, text=True, timeout=60, check=True).stdout
    lines = [json.loads(line) for line in out.splitlines()]
    assert [m.get("event") for m in lines[:2]] == ["start", "end"]
    return lines[-1]


@pytest.mark.slow
def test_loadgen_counts_round_trips_without_errors(loadgen):
    server = EchoServer()
    try:
        result = run_loadgen(loadgen, server.port)
    finally:
        server.close()
    assert result["round_trips"] > 0
    assert result["connected"] == 10
    assert result["errors"] == 0 and result["stalled"] == 0
    assert 0 < result["p50_us"] <= result["p99_us"] <= result["max_us"]


@pytest.mark.slow
def test_loadgen_reports_a_flipped_byte_as_an_error(loadgen):
    server = EchoServer(corrupt=True)
    try:
        result = run_loadgen(loadgen, server.port)
    finally:
        server.close()
    # Every connection's first echo is corrupted: each one fails on it, so
    # none completes a round trip.
    assert result["mismatches"] == 10
    assert result["errors"] == 10
    assert result["round_trips"] == 0


def test_loadgen_refuses_bad_usage(loadgen):
    proc = subprocess.run([loadgen, "--conns", "10"], capture_output=True,
                          text=True, timeout=10)
    assert proc.returncode == 2
    assert "usage: loadgen" in proc.stderr


def test_bench_suite_help_runs():
    proc = subprocess.run([sys.executable, os.path.join(SCRIPTS, "bench_suite.py"),
                           "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--quick" in proc.stdout


def _gitignored_dirs():
    with open(os.path.join(os.path.dirname(SCRIPTS), ".gitignore")) as f:
        return {line.strip().rstrip("/") for line in f
                if line.strip() and not line.startswith("#")}


def test_bench_suite_writes_raw_results_to_an_ignored_folder():
    # Raw results (results.json, results.md, the PNGs) are rewritten by every
    # run; they go to bench-results/, which git ignores, never under scripts/.
    proc = subprocess.run(
        [sys.executable, "-c",
         "import sys; sys.path.insert(0, sys.argv[1]); import bench_suite;"
         " print(bench_suite.parse_args([]).out)", SCRIPTS],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.strip()
    root = os.path.dirname(SCRIPTS)
    assert os.path.dirname(out) == root
    assert os.path.basename(out) in _gitignored_dirs()
    assert not os.path.exists(os.path.join(SCRIPTS, "results"))
