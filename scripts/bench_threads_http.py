"""ThreadingHTTPServer throughput and latency: interpose coroutines vs. plain
OS threads.

The same unmodified program, examples/threaded_http_server.py
(http.server.ThreadingHTTPServer, HTTP/1.1 keep-alive, a thread per
connection), runs as

  interpose  `python -m interpose run examples/threaded_http_server.py`
             (every connection's thread is a coroutine, one OS thread)
  threads    `python examples/threaded_http_server.py`
             (plain python, one OS thread per connection)

against wrk (Debian package `wrk`):

    wrk --latency -t1 -c N -d SECONDS http://127.0.0.1:PORT/bench

for each N in --connections (default 100 and 1000).  A fresh server is
started for every run.  The runs are interleaved (interpose, threads,
interpose, threads, ...) for --reps repetitions so drift of the machine hits
both alike.  When taskset exists and there are at least two CPUs, the server
is pinned to the first CPU and wrk to the second.  RLIMIT_NOFILE is raised
to its hard limit for both (N client sockets, N server sockets).

A run's figures are wrk's "Requests/sec" and the 99% line of its latency
distribution; wrk's socket errors (connect, read, write, timeout) and
non-2xx responses are summed as "errors".  wrk's --timeout is set to
WRK_TIMEOUT_S, longer than any run: with its default of 2 s, wrk would leave
every slower response out of the latency distribution (counting it as a
"timeout" error), and p99 would hide the slowest responses.  The
connection set-up is part of the measured time: wrk opens all N connections
at the start, and ThreadingHTTPServer accepts them one at a time in its
serve_forever loop, which competes with the connections already being
served (the GIL with threads, the run queue with interpose), so under load
some connections wait seconds for their first response; a connection that
gets no response within the run does not appear in wrk's figures at all.
So after wrk ends, the script asks the server (GET /stats) when it first
answered each connection (CLOCK_MONOTONIC, the same in both processes) and
reports how many connections had an answer before wrk ended ("connections
answered") and how long after wrk's start the last of them had its first
answer ("all answered after").  The table shows the median and the range over the repetitions and
interpose / threads of the medians (for p99, lower is better).

    python scripts/bench_threads_http.py [--seconds 10] [--reps 3] [--connections 100,1000] [--json]
"""
import argparse
import http.client
import json
import os
import platform
import re
import resource
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import _benchutil
from _benchutil import ROOT, env, kill_group, pinned

SERVER = os.path.join(ROOT, "examples", "threaded_http_server.py")
VARIANTS = ("interpose", "threads")
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}
# wrk leaves a response slower than its --timeout (default 2 s) out of the
# latency distribution and counts it as a "timeout" error instead, so p99
# would hide the slowest responses: the timeout is set longer than any run.
WRK_TIMEOUT_S = 300








def _server_argv(variant):
    if variant == "interpose":
        return [sys.executable, "-m", "interpose", "run", SERVER, "127.0.0.1", "0"]
    return [sys.executable, SERVER, "127.0.0.1", "0"]




def _latency_ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if m is None:
        raise ValueError(f"unknown latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out):
    """{"rps", "p99_ms", "errors", "requests"} from wrk --latency output."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    requests = re.search(r"^\s+(\d+) requests in", out, re.M)
    if not (rps and p99 and requests):
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    kinds = dict.fromkeys(("connect", "read", "write", "timeout", "non2xx"), 0)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        for kind, n in zip(("connect", "read", "write", "timeout"), sock.groups()):
            kinds[kind] = int(n)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        kinds["non2xx"] = int(non2xx.group(1))
    return {"rps": float(rps.group(1)), "p99_ms": _latency_ms(p99.group(1)),
            "errors": sum(kinds.values()), "error_kinds": kinds,
            "requests": int(requests.group(1))}


def run_once(variant, connections, seconds, cpus):
    """wrk's figures for one fresh server."""
    server_cpus, wrk_cpus = cpus
    # The server's stderr goes to a file: wrk ends by resetting its
    # connections, and http.server prints a traceback for each reset.
    err = tempfile.TemporaryFile("w+")
    server = subprocess.Popen(
        pinned(_server_argv(variant), server_cpus), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=err, text=True,
        env=env(), start_new_session=True, cwd=ROOT,
    )
    try:
        ready, _, _ = select.select([server.stdout], [], [], 30)
        line = server.stdout.readline() if ready else ""
        m = re.fullmatch(r"listening on [\d.]+:(\d+)\n", line)
        if m is None:
            err.seek(0)
            raise RuntimeError(f"{variant} server did not start (first line {line!r});"
                               f" stderr:\n{err.read()[-3000:]}")
        url = f"http://127.0.0.1:{m.group(1)}/bench"
        started = time.monotonic()
        wrk = subprocess.run(
            pinned(["wrk", "--latency", "-t1", "-c", str(connections),
                     "-d", f"{seconds}s", "--timeout", f"{WRK_TIMEOUT_S}s", url],
                    wrk_cpus),
            stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=seconds + 60,
        )
        ended = time.monotonic()
        if wrk.returncode != 0:
            raise RuntimeError(f"wrk failed ({wrk.returncode}):\n{wrk.stderr}")
        result = parse_wrk(wrk.stdout)
        # Once wrk has gone, the server still answers the connections it
        # had not accepted yet: count only first answers given while wrk ran.
        firsts = [t for t in _stats(int(m.group(1)))["first_answers"] if t <= ended]
        result["answered"] = len(firsts)
        result["all_answered_s"] = (max(firsts) - started
                                    if len(firsts) >= connections else None)
        return result
    finally:
        kill_group(server)
        server.stdout.close()
        err.close()


def _stats(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", "/stats")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def _raise_nofile(connections):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2 * connections + 100:
        sys.exit(f"RLIMIT_NOFILE hard limit {hard} is too low for {connections} connections")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _machine():
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": model, "cpus": os.cpu_count(),
            "python": platform.python_version(), "kernel": platform.release()}


def summarize(runs):
    """{connections: {variant: {key: {median, min, max}}, "ratio": {...}}}."""
    summary = {}
    for connections, by_variant in runs.items():
        entry = {}
        for variant, results in by_variant.items():
            entry[variant] = {}
            for key in ("rps", "p99_ms"):
                values = [r[key] for r in results]
                entry[variant][key] = {"median": statistics.median(values),
                                       "min": min(values), "max": max(values)}
            entry[variant]["errors"] = sum(r["errors"] for r in results)
            answered = [r["answered"] for r in results]
            entry[variant]["answered"] = {"min": min(answered), "max": max(answered)}
            ramp = [r["all_answered_s"] for r in results]
            entry[variant]["all_answered_s"] = (
                None if None in ramp else statistics.median(ramp))
        entry["ratio"] = {
            key: entry["interpose"][key]["median"] / entry["threads"][key]["median"]
            for key in ("rps", "p99_ms")
        }
        summary[connections] = entry
    return summary


def _seconds(value):
    return "not within a run" if value is None else f"{value:.2f} s"


def table(summary, args):
    lines = [
        "| server | connections | requests/s (median) | min – max"
        " | p99 latency (median) | min – max | connections answered (min – max)"
        " | all answered after (median) | wrk errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    names = {"interpose": "`interpose run`, coroutines", "threads": "plain python, OS threads"}
    for connections, entry in summary.items():
        for variant in VARIANTS:
            e = entry[variant]
            lines.append(
                f"| {names[variant]} | {connections:,} | {e['rps']['median']:,.0f} |"
                f" {e['rps']['min']:,.0f} – {e['rps']['max']:,.0f} |"
                f" {e['p99_ms']['median']:.1f} ms |"
                f" {e['p99_ms']['min']:.1f} – {e['p99_ms']['max']:.1f} ms |"
                f" {e['answered']['min']:,} – {e['answered']['max']:,} |"
                f" {_seconds(e['all_answered_s'])} | {e['errors']} |")
    lines.append("")
    for connections, entry in summary.items():
        lines.append(f"{connections:,} connections: interpose / threads ="
                     f" **{entry['ratio']['rps']:.2f}×** requests/s,"
                     f" {entry['ratio']['p99_ms']:.2f}× p99 latency")
    m = _machine()
    lines.append("")
    lines.append(f"({m['cpu']}, {m['cpus']} CPUs, CPython {m['python']}, Linux {m['kernel']};"
                 f" wrk -t1, {args.seconds:g} s per run, {args.reps} interleaved repetitions,"
                 f" a fresh server per run.)")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10,
                        help="per run, whole seconds (default 10)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--connections", default="100,1000",
                        help="comma-separated connection counts (default 100,1000)")
    parser.add_argument("--json", action="store_true", help="print JSON, not a table")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        parser.exit(2, "bench_threads_http: needs the HTTP load tool wrk:"
                       " apt-get install wrk\n")
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install wrk")
    counts = [int(c) for c in args.connections.split(",")]
    _raise_nofile(max(counts))
    cpus = _benchutil.cpus()
    seconds = args.seconds = max(1, round(args.seconds))
    runs = {c: {v: [] for v in VARIANTS} for c in counts}
    for rep in range(args.reps):
        for connections in counts:
            for variant in VARIANTS:
                result = run_once(variant, connections, seconds, cpus)
                runs[connections][variant].append(result)
                print(f"rep {rep + 1}/{args.reps} {connections:5} connections {variant:9}:"
                      f" {result['rps']:,.0f} requests/s, p99 {result['p99_ms']:.1f} ms,"
                      f" {result['answered']} connections answered, {result['errors']} errors"
                      + "".join(f", {k} {n}" for k, n in result["error_kinds"].items() if n),
                      file=sys.stderr, flush=True)
    summary = summarize(runs)
    if args.json:
        print(json.dumps({"machine": _machine(), "pinned": cpus[0] is not None,
                          "seconds": seconds, "reps": args.reps,
                          "runs": runs, "summary": summary}, indent=2))
    else:
        print(table(summary, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
