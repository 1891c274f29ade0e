"""The benchmark suite: echo servers against gevent, eventlet, asyncio,
uvloop and plain threads, plus the engine microbenchmarks.

One command, from the repository root:

    python scripts/bench_suite.py [--quick] [--reps 3] [--duration 2] ...

It installs the `bench` extra (`pip install -e '.[bench]'`) when a peer is
missing, builds the C load generator (scripts/loadgen.c) and the hook-cost
library (scripts/hookcost.c) into build/bench/, runs everything, and writes
bench-results/results.{json,md} and one PNG per message size (bench-results/
is ignored by git: raw results are never committed; docs/benchmarks.md
holds the curated summary).

Servers (scripts/bench_servers/):
  threads            threaded_echo.py, a blocking thread-per-connection
                     program, on plain python
  interpose          the same file under `python -m interpose run`, where
                     each threading.Thread runs as a coroutine
  interpose-spawn    spawn_echo.py (interpose.spawn instead of Thread) under
                     `python -m interpose run`: the same handler without the
                     threading machinery, to show what that costs
  gevent-patched     threaded_echo.py after gevent.monkey.patch_all()
  eventlet-patched   threaded_echo.py after eventlet.monkey_patch()
  gevent-stream      gevent StreamServer
  asyncio-streams, asyncio-protocol, uvloop-streams, uvloop-protocol

Method: for each repetition, for each (connections, size) cell, every server
runs once, in turn (A B C ... A B C ...), so the machine's drift hits all of
them alike.  Each run starts a fresh server pinned to CPU 0 and the load
generator pinned to CPU 1; the load generator connects gradually, warms up,
then measures.  The server's CPU time (psutil, the whole process tree) and
RSS are sampled when the measurement window opens and closes.  The tables
give medians over the repetitions with min-max.

Idle memory: each server gets --idle-conns connections that do one round
trip and then stay silent; (RSS then - RSS before the first connection) /
connections.
"""
import argparse
import importlib.util
import json
import os
import platform
import resource
import select
import signal
import statistics
import subprocess
import sys
import time

from _benchutil import ROOT, env, pinned

SCRIPTS = os.path.join(ROOT, "scripts")
SERVERS_DIR = os.path.join(SCRIPTS, "bench_servers")
BUILD = os.path.join(ROOT, "build", "bench")
LOADGEN = os.path.join(BUILD, "loadgen")
HOOKCOST = os.path.join(BUILD, "libhookcost.so")
RESULTS = os.path.join(ROOT, "bench-results")
PEERS = ("gevent", "eventlet", "uvloop", "matplotlib", "psutil")
SERVER_CPU, LOAD_CPU = 0, 1


def _server_argv(name):
    py = sys.executable
    threaded = os.path.join(SERVERS_DIR, "threaded_echo.py")
    patched = os.path.join(SERVERS_DIR, "patched.py")
    aio = os.path.join(SERVERS_DIR, "asyncio_echo.py")
    return {
        "threads": [py, threaded],
        "interpose": [py, "-m", "interpose", "run", threaded],
        "interpose-spawn": [py, "-m", "interpose", "run",
                            os.path.join(SERVERS_DIR, "spawn_echo.py")],
        "gevent-patched": [py, patched, "gevent", threaded],
        "eventlet-patched": [py, patched, "eventlet", threaded],
        "gevent-stream": [py, os.path.join(SERVERS_DIR, "gevent_stream.py")],
        "asyncio-streams": [py, aio, "streams", "asyncio"],
        "asyncio-protocol": [py, aio, "protocol", "asyncio"],
        "uvloop-streams": [py, aio, "streams", "uvloop"],
        "uvloop-protocol": [py, aio, "protocol", "uvloop"],
    }[name]


ALL_SERVERS = ("threads", "interpose", "interpose-spawn", "gevent-patched",
               "eventlet-patched", "gevent-stream", "asyncio-streams",
               "asyncio-protocol", "uvloop-streams", "uvloop-protocol")


# ---- setup ----------------------------------------------------------------

def ensure_peers():
    """Installs the `bench` extra into this interpreter if a peer is
    missing (the suite's own dependencies)."""
    missing = [p for p in PEERS if importlib.util.find_spec(p) is None]
    if missing:
        print(f"installing the bench extra (missing: {', '.join(missing)})",
              file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e",
                        f"{ROOT}[bench]"], check=True)
        importlib.invalidate_caches()


def build_tools():
    """Compiles the load generator and the hook-cost library; warnings are
    errors."""
    os.makedirs(BUILD, exist_ok=True)
    flags = ["-O2", "-Wall", "-Wextra", "-Werror"]
    subprocess.run(["gcc", *flags, "-o", LOADGEN,
                    os.path.join(SCRIPTS, "loadgen.c")], check=True)
    subprocess.run(["gcc", *flags, "-shared", "-fPIC", "-o", HOOKCOST,
                    os.path.join(SCRIPTS, "hookcost.c")], check=True)


def _raise_nofile():
    """preexec_fn of every child: 10,000 connections need more fds than
    the usual soft limit of 1,024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def check_limits(max_conns):
    """Problems that would make a 10,000-connection cell fail for reasons
    that are not the server's."""
    problems = []
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < max_conns + 100:
        problems.append(f"RLIMIT_NOFILE hard limit {hard} < {max_conns + 100}"
                        " (raise it: ulimit -Hn)")
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            maps = int(f.read())
        # interpose: about 2 mappings per coroutine
        if maps < 2 * max_conns + 10000:
            problems.append(f"vm.max_map_count {maps} is too low for"
                            f" {max_conns} coroutines")
    except OSError:
        pass
    return problems


def machine_info():
    import psutil

    model = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    versions = {}
    for peer in ("gevent", "eventlet", "uvloop", "psutil"):
        try:
            from importlib.metadata import version
            versions[peer] = version(peer)
        except Exception:
            versions[peer] = None
    with open("/proc/sys/net/core/somaxconn") as f:
        somaxconn = int(f.read())
    return {"cpu_model": model, "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "somaxconn": somaxconn, "peers": versions}


# ---- one run --------------------------------------------------------------

def _pinned(argv, cpu):
    return pinned(argv, [cpu])


def _env():
    result = env()
    result["PYTHONWARNINGS"] = "ignore"  # eventlet's deprecation banner
    return result


class Server:
    """A server process, pinned to SERVER_CPU, in its own session."""

    def __init__(self, name):
        self.name = name
        # stderr to a file, not a pipe: a server that complains about every
        # connection must not block on a full pipe in the middle of a run.
        self.log_path = os.path.join(BUILD, f"server-{name}.log")
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                _pinned([*_server_argv(name), "127.0.0.1", "0"], SERVER_CPU),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                text=True, env=_env(), cwd=ROOT, start_new_session=True,
                preexec_fn=_raise_nofile)
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("listening on "):
            self.stop()
            with open(self.log_path) as log:
                raise RuntimeError(f"{name} did not start: {line!r}"
                                   f" {log.read()[-2000:]!r}")
        self.port = int(line.rsplit(":", 1)[1])

    def sample(self):
        """(CPU seconds, RSS bytes) of the server's process tree."""
        import psutil

        cpu = rss = 0
        root = psutil.Process(self.proc.pid)
        for p in [root, *root.children(recursive=True)]:
            t = p.cpu_times()
            cpu += t.user + t.system
            rss += p.memory_info().rss
        return cpu, rss

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.proc.stdout.close()


def _lines(proc, deadline):
    """Yields the JSON lines of proc's stdout until EOF or the deadline."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("load generator did not finish in time")
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            line = proc.stdout.readline()
            if not line:
                return
            yield json.loads(line)


def run_cell(name, conns, size, args):
    """One measurement of one server: the load generator's result plus the
    server's CPU µs per round trip and RSS."""
    server = Server(name)
    try:
        argv = [LOADGEN, "--port", str(server.port), "--conns", str(conns),
                "--size", str(size), "--duration", str(args.duration),
                "--warmup", str(args.warmup),
                "--connect-timeout", str(args.connect_timeout)]
        gen = subprocess.Popen(_pinned(argv, LOAD_CPU), stdout=subprocess.PIPE,
                               text=True, preexec_fn=_raise_nofile)
        deadline = time.monotonic() + args.connect_timeout + args.warmup + \
            args.duration + 60
        cpu0 = cpu1 = rss = None
        result = None
        try:
            for msg in _lines(gen, deadline):
                if msg.get("event") == "start":
                    cpu0, _ = server.sample()
                elif msg.get("event") == "end":
                    cpu1, rss = server.sample()
                else:
                    result = msg
        finally:
            gen.kill()
            gen.wait()
            gen.stdout.close()
    finally:
        server.stop()
    if result is None or cpu0 is None or cpu1 is None:
        raise RuntimeError(f"{name}: the load generator gave no result")
    trips = result["round_trips"]
    result["cpu_us_per_rt"] = (cpu1 - cpu0) * 1e6 / trips if trips else None
    result["server_cpu_s"] = cpu1 - cpu0
    result["rss_mib"] = rss / 2**20
    return result


def run_idle(name, conns, args):
    """RSS per idle connection: RSS with conns silent connections minus RSS
    before the first one, per connection."""
    server = Server(name)
    try:
        time.sleep(0.5)  # let start-up allocations settle
        _, rss0 = server.sample()
        argv = [LOADGEN, "--port", str(server.port), "--conns", str(conns),
                "--size", "64", "--idle",
                "--connect-timeout", str(args.connect_timeout)]
        gen = subprocess.Popen(_pinned(argv, LOAD_CPU), stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True,
                               preexec_fn=_raise_nofile)
        try:
            deadline = time.monotonic() + args.connect_timeout + 60
            lines = _lines(gen, deadline)
            msg = next(lines)
            time.sleep(1.0)  # the handlers are all parked in recv by now
            _, rss1 = server.sample()
            gen.stdin.close()
            result = next(lines)
        finally:
            gen.kill()
            gen.wait()
            gen.stdout.close()
    finally:
        server.stop()
    connected = msg["connected"]
    return {"conns": conns, "connected": connected,
            "errors": result["errors"], "rss0_mib": rss0 / 2**20,
            "rss1_mib": rss1 / 2**20,
            "kib_per_conn": (rss1 - rss0) / 1024 / connected if connected else None}


# ---- the whole suite ------------------------------------------------------

def summarize(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values),
            "max": max(values)}


def run_grid(args, log):
    runs = []
    cells = [(c, s) for s in args.sizes for c in args.conns]
    for rep in range(args.reps):
        for conns, size in cells:
            for name in args.servers:
                entry = {"server": name, "conns": conns, "size": size,
                         "rep": rep}
                try:
                    entry.update(run_cell(name, conns, size, args))
                    log(f"rep {rep + 1} {conns:>5} x {size:>5} B {name:17}"
                        f" {entry['rps']:>9,.0f} rt/s p99 {entry['p99_us']:>8,.0f}"
                        f" µs cpu {entry['cpu_us_per_rt'] or 0:6.1f} µs/rt"
                        f" stalled {entry['stalled']} errors {entry['errors']}")
                except Exception as e:  # a failed run is data, not the end
                    entry["failure"] = str(e)
                    log(f"rep {rep + 1} {conns} x {size} B {name}: FAILED {e}")
                runs.append(entry)
    return runs


def summarize_grid(runs):
    cells = {}
    for r in runs:
        cells.setdefault((r["server"], r["conns"], r["size"]), []).append(r)
    out = []
    for (name, conns, size), rs in cells.items():
        ok = [r for r in rs if "failure" not in r]
        row = {"server": name, "conns": conns, "size": size,
               "runs": len(rs), "failed_runs": len(rs) - len(ok)}
        for key in ("rps", "p50_us", "p99_us", "max_us", "cpu_us_per_rt",
                    "rss_mib"):
            row[key] = summarize([r[key] for r in ok])
        row["stalled_max"] = max((r["stalled"] for r in ok), default=None)
        row["errors_total"] = sum(r["errors"] for r in ok)
        row["unconnected_max"] = max((r["unconnected"] for r in ok),
                                     default=None)
        out.append(row)
    return out


def run_idle_all(args, log):
    runs = []
    for rep in range(args.idle_reps):
        for name in args.servers:
            try:
                r = run_idle(name, args.idle_conns, args)
                log(f"idle rep {rep + 1} {name:17} {r['kib_per_conn']:.2f} KiB/conn"
                    f" ({r['connected']} connected)")
            except Exception as e:
                r = {"failure": str(e)}
                log(f"idle rep {rep + 1} {name}: FAILED {e}")
            r.update(server=name, rep=rep)
            runs.append(r)
    summary = {}
    for name in args.servers:
        ok = [r for r in runs if r["server"] == name and "failure" not in r]
        summary[name] = summarize([r["kib_per_conn"] for r in ok])
    return runs, summary


def run_micro(args, log):
    engine_json = os.path.join(BUILD, "bench_engine.json")
    hook_json = os.path.join(BUILD, "bench_hookcost.json")
    subprocess.run([sys.executable, os.path.join(SCRIPTS, "bench_engine.py"),
                    *(["--quick"] if args.quick else []), "--json", engine_json],
                   check=True, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, os.path.join(SCRIPTS, "bench_hookcost.py"),
                    "--lib", HOOKCOST, "--reps", str(max(3, args.reps)),
                    "--json", hook_json],
                   check=True, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL)
    with open(engine_json) as f:
        engine = json.load(f)
    with open(hook_json) as f:
        hook = json.load(f)
    log("microbenchmarks done")
    return {"engine": engine["results"], "hookcost": hook}


def _int_list(text):
    return [int(x) for x in text.split(",")]


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Run from the repository's venv; it installs the bench extra"
               " (pip install -e '.[bench]') itself when a peer is missing.")
    parser.add_argument("--quick", action="store_true",
                        help="a small subset: 100 and 1000 connections, 64 B,"
                             " 1 s per run, 1,000 idle connections")
    parser.add_argument("--reps", type=int, default=3,
                        help="repetitions of the grid (default 3)")
    parser.add_argument("--duration", type=float, default=2.0,
                        help="measurement seconds per run (default 2)")
    parser.add_argument("--warmup", type=float, default=0.5,
                        help="seconds of load before measuring (default 0.5)")
    parser.add_argument("--conns", type=_int_list, default=[10, 100, 1000, 10000],
                        help="comma-separated connection counts")
    parser.add_argument("--sizes", type=_int_list, default=[64, 16384],
                        help="comma-separated message sizes in bytes")
    parser.add_argument("--servers", type=lambda s: s.split(","),
                        default=list(ALL_SERVERS),
                        help="comma-separated, of: " + ", ".join(ALL_SERVERS))
    parser.add_argument("--idle-conns", type=int, default=10000)
    parser.add_argument("--idle-reps", type=int, default=None,
                        help="repetitions of the idle-memory runs (default"
                             " --reps)")
    parser.add_argument("--connect-timeout", type=float, default=120.0,
                        help="seconds a run may take to open its connections")
    parser.add_argument("--skip", type=lambda s: s.split(","), default=[],
                        help="parts to leave out: grid, idle, micro")
    parser.add_argument("--out", default=RESULTS,
                        help="results folder (default bench-results/, ignored by"
                             " git)")
    args = parser.parse_args(argv)
    if args.quick:
        args.conns, args.sizes = [100, 1000], [64]
        args.duration, args.warmup, args.idle_conns = 1.0, 0.3, 1000
    if args.idle_reps is None:
        args.idle_reps = args.reps
    unknown = set(args.servers) - set(ALL_SERVERS)
    if unknown:
        parser.error(f"unknown servers: {', '.join(sorted(unknown))}")
    return args


def main(argv=None):
    args = parse_args(argv)
    ensure_peers()
    build_tools()
    problems = check_limits(max(args.conns + [args.idle_conns]))
    if problems:
        sys.exit("bench_suite: " + "; ".join(problems))

    def log(text):
        print(text, file=sys.stderr, flush=True)

    started = time.time()
    data = {"machine": machine_info(), "started": time.strftime(
        "%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "settings": {k: getattr(args, k) for k in (
            "reps", "duration", "warmup", "conns", "sizes", "servers",
            "idle_conns", "idle_reps", "quick")},
        "pinning": {"server_cpu": SERVER_CPU, "load_cpu": LOAD_CPU}}
    if "grid" not in args.skip:
        data["runs"] = run_grid(args, log)
        data["grid"] = summarize_grid(data["runs"])
    if "idle" not in args.skip:
        data["idle_runs"], data["idle"] = run_idle_all(args, log)
    if "micro" not in args.skip:
        data["micro"] = run_micro(args, log)
    data["minutes"] = round((time.time() - started) / 60, 1)

    sys.path.insert(0, SCRIPTS)
    import bench_report
    paths = bench_report.write(data, args.out)
    log("wrote " + ", ".join(os.path.relpath(p, ROOT) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
