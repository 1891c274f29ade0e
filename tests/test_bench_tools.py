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


def test_rt_table_gives_ratios_and_the_miss():
    sys.path.insert(0, SCRIPTS)
    import bench_report

    def stat(v):
        return {"median": v, "min": v, "max": v}

    def row(server, conns, cpu, rps):
        return {"server": server, "conns": conns, "size": 64, "runs": 3,
                "failed_runs": 0, "rps": stat(rps), "cpu_us_per_rt": stat(cpu),
                "user_us_per_rt": stat(cpu / 4), "sys_us_per_rt": stat(cpu * 3 / 4)}

    data = {"machine": {"cpu_model": "x", "cpus": 2, "memory_gib": 1,
                        "kernel": "k", "python": "3", "peers": {}},
            "started": "now", "minutes": 1, "pinning": {"server_cpu": 0,
                                                        "load_cpu": 1},
            "settings": {"reps": 3, "duration": 2, "warmup": 0.5,
                         "conns": [100, 1000], "sizes": [64],
                         "servers": ["interpose", "uvloop-protocol"]},
            "grid": [row("interpose", 100, 5.0, 120000),
                     row("uvloop-protocol", 100, 4.0, 150000),
                     row("interpose", 1000, 6.0, 90000),
                     row("uvloop-protocol", 1000, 8.0, 100000)]}
    table = bench_report.render_rt_table(data)
    assert "| 100 | uvloop Protocol | 4.00 (4.00–4.00) | 1.0 · 3.0 |" in table
    assert "1.25× | 0.80× |" in table  # interpose's CPU and rt/s ÷ uvloop's
    assert "5.00 vs 4.00; missed by 1.00 µs (25%) | **no** |" in table
    assert "6.00 vs 8.00 | yes |" in table


def test_targets_table_gives_each_target_its_peers_and_the_miss():
    sys.path.insert(0, SCRIPTS)
    import bench_targets

    def stat(v):
        return {"median": v, "min": v - 0.5, "max": v + 0.5}

    def rt_row(server, conns, cpu, failed=0):
        return {"server": server, "conns": conns, "size": 64, "runs": 3,
                "failed_runs": failed, "cpu_us_per_rt": stat(cpu)}

    def spawn(variant, pattern, *cpus):
        return {"variant": variant, "pattern": pattern,
                "runs": [{"cpu_us": c, "wall_us": c} for c in cpus]}

    servers = ["interpose", "uvloop-protocol", "gevent-patched", "threads"]
    data = {"machine": {"cpu_model": "x", "cpus": 2, "kernel": "k",
                        "python": "3"},
            "started": "now", "minutes": 1,
            "pinning": {"server_cpu": 0, "load_cpu": 1},
            "settings": {"reps": 3, "duration": 2, "warmup": 0.5,
                         "rt_conns": [100, 1000], "servers": servers,
                         "idle_conns": 10000, "idle_reps": 3,
                         "spawn_n": 20000, "serial_n": 10000,
                         "spawn_reps": 3},
            "grid": [rt_row("interpose", 100, 5.0),
                     rt_row("uvloop-protocol", 100, 4.0),
                     rt_row("gevent-patched", 100, 11.0),
                     rt_row("threads", 100, 9.0, failed=1),
                     rt_row("interpose", 1000, 6.0),
                     rt_row("uvloop-protocol", 1000, 8.0),
                     rt_row("gevent-patched", 1000, 15.0),
                     rt_row("threads", 1000, 20.0)],
            "idle_runs": [{"server": s, "rep": r} for s in servers
                          for r in range(3)],
            "idle": {"interpose": stat(18.0), "uvloop-protocol": stat(1.4),
                     "gevent-patched": stat(11.5), "threads": stat(20.5)},
            "spawn": [spawn("interpose-spawn", "batch", 12.0, 11.0, 13.0),
                      spawn("gevent-spawn", "batch", 13.0, 13.0, 13.0),
                      spawn("threads", "batch", 48.0, 47.0, 49.0),
                      spawn("interpose-spawn", "serial", 6.0, 6.5, 5.5),
                      spawn("gevent-spawn", "serial", 11.0, 11.0, 11.0),
                      spawn("threads", "serial", 40.0, 40.0, 40.0)],
            "idle_floor": {"socket": 0.2, "socket+thread": 2.4,
                           "socket+thread+buffer": 6.5}}
    lines = bench_targets.render_targets(data).splitlines()
    assert lines[-1].startswith("Idle memory floor: with no thread,")
    assert " holds 6.50 KiB per connection " in lines[-1]
    rows = [line for line in lines if line.startswith("| ") and "---" not in line]
    assert rows[0] == ("| target | interpose | uvloop Protocol | gevent | threads"
                       " | goal | met | by how much | runs |")
    assert rows[1:] == [
        "| server CPU µs per round trip, 100 conns | 5.00 (4.50–5.50) | 4.00"
        " | 11.00 | 9.00 | ≤ uvloop Protocol's | **no** | missed by 1.00 µs"
        " (1.25× the goal) | 3 (threads: 1 failed) |",
        "| server CPU µs per round trip, 1,000 conns | 6.00 (5.50–6.50) | 8.00"
        " | 15.00 | 20.00 | ≤ uvloop Protocol's | yes | met, 2.00 µs to spare"
        " (0.75× the goal) | 3 |",
        "| RSS KiB per idle connection, 10,000 conns | 18.00 (17.50–18.50)"
        " | 1.40 | 11.50 | 20.50 | ≤ 6 KiB | **no** | missed by 12.00 KiB"
        " (3.00× the goal) | 3 |",
        "| spawn+join CPU µs, 20,000 spawned, then joined (interpose.spawn)"
        " | 12.0 (11.0–13.0) | — | 13.0 | 48.0 | ≤ 10 µs | **no** | missed by"
        " 2.0 µs (1.20× the goal) | 3 |",
        "| spawn+join CPU µs, one at a time, 10,000× (interpose.spawn)"
        " | 6.0 (5.5–6.5) | — | 11.0 | 40.0 | ≤ 10 µs | yes | met, 4.0 µs to"
        " spare (0.60× the goal) | 3 |",
    ]
    # A part left out (--skip) leaves its target unmeasured, not met.
    del data["idle"], data["idle_runs"], data["idle_floor"]
    idle = [line for line in bench_targets.render_targets(data).splitlines()
            if "idle connection" in line]
    assert idle == ["| RSS KiB per idle connection, 10,000 conns | — | — | —"
                    " | — | ≤ 6 KiB | — | not measured | 0 |"]


def test_bench_targets_summary_needs_every_run_to_hold():
    sys.path.insert(0, SCRIPTS)
    import bench_targets

    def run(cpu_ours, cpu_uvloop):
        stat = lambda v: {"median": v, "min": v, "max": v}  # noqa: E731
        return {"settings": {"rt_conns": [100], "idle_conns": 10000,
                             "spawn_n": 20000, "serial_n": 10000},
                "grid": [{"server": s, "conns": 100, "size": 64, "runs": 3,
                          "failed_runs": 0, "cpu_us_per_rt": stat(v)}
                         for s, v in (("interpose", cpu_ours),
                                      ("uvloop-protocol", cpu_uvloop))]}

    lines = bench_targets.render_summary(
        [run(5.0, 5.5), run(6.0, 5.0), run(4.0, 4.5)]).splitlines()
    rows = [line for line in lines if line.startswith("| ") and "---" not in line]
    assert rows[0] == "| target | run 1 | run 2 | run 3 | goal | held in | verdict |"
    assert rows[1] == ("| server CPU µs per round trip, 100 conns | 5.00 (met)"
                       " | 6.00 (missed) | 4.00 (met) | ≤ uvloop Protocol's"
                       " | 2 of 3 | **missed** (worst run 1.20× the goal) |")
    assert rows[2].endswith("| 0 of 3 | not measured |")
    lines = bench_targets.render_summary([run(5.0, 5.5), run(4.0, 4.5)])
    assert "| 2 of 2 | met in every run |" in lines


def test_bench_targets_quick_settings_scale_every_part_down():
    sys.path.insert(0, SCRIPTS)
    import bench_targets

    args = bench_targets.parse_args(["--quick"])
    assert (args.runs, args.reps, args.idle_conns, args.spawn_n) == \
        (1, 1, 1000, 2000)
    assert bench_targets.parse_args([]).runs == 3
    assert bench_targets.parse_args(["--quick", "--runs", "2"]).runs == 2
    args = bench_targets.parse_args(["--reps", "2", "--conns-idle", "500"])
    assert (args.reps, args.idle_reps, args.idle_conns) == (2, 2, 500)
    assert args.servers == ["interpose", "uvloop-protocol", "gevent-patched",
                            "threads"]


@pytest.mark.timeout(120)
def test_memory_floor_measures_what_the_program_itself_holds():
    # The blocked recv(65536)'s buffer is made as CPython's sock_recv makes
    # it: only its header page is resident.  A buffer written in full (64
    # KiB) or not allocated at all (0) would fall outside these bounds.
    proc = subprocess.run(
        [sys.executable, os.path.join(SCRIPTS, "bench_memory.py"), "--floor",
         "--conns", "1000"], capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split("|")[1].strip(): float(line.split("|")[2].strip(" *"))
            for line in proc.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| part")}
    buffer = rows["the buffer its blocked recv(65536) holds (header page)"]
    assert 3.0 < buffer < 6.0, proc.stdout
    assert 0 < rows["its socket object"] < 1.0, proc.stdout
    assert 0.5 < rows["its threading.Thread, not started"] < 5.0, proc.stdout
    assert rows["**program floor**"] == pytest.approx(sum(
        v for k, v in rows.items() if not k.startswith("**")), abs=0.02)


def test_memory_floor_refuses_no_connections():
    proc = subprocess.run(
        [sys.executable, os.path.join(SCRIPTS, "bench_memory.py"), "--floor",
         "--conns", "0"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1].endswith("--conns must be at least 1")
