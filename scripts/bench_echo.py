"""Echo server throughput: interpose coroutines vs. plain OS threads.

The same program, examples/echo_server.py, runs twice per repetition:

  interpose  `python -m interpose run examples/echo_server.py HOST 0 N 1`
             (one worker process, N handler coroutines)
  threads    `python examples/echo_server.py HOST 0 N 1 --threads`
             (plain python, one worker process, N handler threads)

each against the same load generator, examples/echo_client.py under
interpose (P processes x C connections, 8-byte round trips), for --seconds
seconds.  The runs are interleaved (A B A B ...) for --reps repetitions so
drift of the machine hits both alike.  When taskset exists and there are at
least two CPUs, the server is pinned to the first CPU and the load generator
to the others, so they do not compete for one core.

A run's score is the mean over the whole seconds of the client's
once-a-second reports (the first, partial second is dropped; the reports of
all client processes for one second are summed).  The table shows the
median and the range over the repetitions, and interpose / threads of the
medians.

    python scripts/bench_echo.py [--seconds 5] [--reps 3] [--json]
"""
import argparse
import json
import os
import platform
import re
import resource
import select
import statistics
import subprocess
import sys

import _benchutil
from _benchutil import ROOT, env, kill_group, pinned

SERVER = os.path.join(ROOT, "examples", "echo_server.py")
CLIENT = os.path.join(ROOT, "examples", "echo_client.py")
TIME_LINE = re.compile(r"^time (\d+) Succ Cnt (\d+) Fail Cnt (\d+)$")
TOTAL_LINE = re.compile(r"^total Succ Cnt (\d+) Fail Cnt (\d+)$")










def _server_argv(variant, coroutines):
    common = [SERVER, "127.0.0.1", "0", str(coroutines), "1"]
    if variant == "interpose":
        return [sys.executable, "-m", "interpose", "run", *common]
    return [sys.executable, *common, "--threads"]


def run_once(variant, args, cpus):
    """Round trips per second of one run."""
    server_cpus, client_cpus = cpus
    server = subprocess.Popen(
        pinned(_server_argv(variant, args.server_coroutines), server_cpus),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
        env=env(), start_new_session=True, cwd=ROOT,
    )
    client = None
    try:
        ready, _, _ = select.select([server.stdout], [], [], 30)
        if not ready:
            raise RuntimeError(f"{variant} server never printed its address")
        line = server.stdout.readline()
        m = re.fullmatch(r"listening on [\d.]+:(\d+)\n", line)
        if m is None:
            raise RuntimeError(f"{variant} server said {line!r}")
        port = m.group(1)
        server_cpu0 = _tree_cpu(server.pid)
        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        client = subprocess.Popen(
            pinned([sys.executable, "-m", "interpose", "run", CLIENT, "127.0.0.1",
                     port, str(args.client_connections), str(args.client_processes),
                     "--duration", str(args.seconds)], client_cpus),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=env(), start_new_session=True, cwd=ROOT,
        )
        out, err = client.communicate(timeout=args.seconds + 60)
        children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        server_cpu = _tree_cpu(server.pid)
        # per second of load (the client start-up, ~0.2 s, counts in the
        # load generator's CPU but not in the divisor: an upper bound)
        server_cpu = (server_cpu - server_cpu0) / args.seconds if server_cpu is not None else None
        client_cpu = (children1.ru_utime + children1.ru_stime - children0.ru_utime
                      - children0.ru_stime) / args.seconds
        if client.returncode != 0:
            raise RuntimeError(f"the load generator failed:\n{err[-2000:]}")
    finally:
        if client is not None:
            kill_group(client)
        kill_group(server)
        server.stdout.close()
    per_second, totals = {}, []
    for line in out.splitlines():
        if m := TIME_LINE.match(line):
            t, succ, fail = map(int, m.groups())
            per_second[t] = per_second.get(t, 0) + succ
        elif m := TOTAL_LINE.match(line):
            totals.append((int(m.group(1)), int(m.group(2))))
    failures = sum(f for _, f in totals)
    whole = [per_second[t] for t in sorted(per_second)[1:]]  # drop the partial first
    if whole:
        rate = sum(whole) / len(whole)
    else:
        rate = sum(s for s, _ in totals) / args.seconds
    return {"rate": rate, "failures": failures, "seconds": len(whole),
            "server_cpu": server_cpu, "client_cpu": client_cpu}


def _tree_cpu(pid):
    """CPU seconds used so far by pid and its descendants (None without
    psutil)."""
    try:
        import psutil
    except ImportError:
        return None
    total = 0.0
    try:
        root = psutil.Process(pid)
        for p in [root, *root.children(recursive=True)]:
            t = p.cpu_times()
            total += t.user + t.system
    except psutil.Error:
        pass
    return total


def _median_of(results, key):
    values = [r[key] for r in results if r[key] is not None]
    return statistics.median(values) if values else None


def _cores(value):
    return "–" if value is None else f"{value:.2f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5, help="per run (default 5)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--json", action="store_true", help="print JSON, not a table")
    parser.add_argument("--server-coroutines", type=int, default=100,
                        help="handler coroutines / threads of the server (default 100)")
    parser.add_argument("--client-processes", type=int, default=2,
                        help="load generator processes (default 2)")
    parser.add_argument("--client-connections", type=int, default=50,
                        help="connections (coroutines) per load generator process"
                             " (default 50)")
    args = parser.parse_args(argv)
    connections = args.client_processes * args.client_connections
    if connections > args.server_coroutines:
        parser.error(f"{connections} connections need at least as many server"
                     " handlers (each serves one connection at a time)")
    cpus = _benchutil.cpus()
    variants = ("interpose", "threads")
    runs = {v: [] for v in variants}
    for rep in range(args.reps):
        for variant in variants:
            result = run_once(variant, args, cpus)
            runs[variant].append(result)
            if not args.json:
                print(f"rep {rep + 1}/{args.reps} {variant:9}: {result['rate']:,.0f}"
                      f" round trips/s, {result['failures']} failures, CPU cores"
                      f" used: server {_cores(result['server_cpu'])},"
                      f" load {_cores(result['client_cpu'])}", file=sys.stderr, flush=True)
    summary = {}
    for v in variants:
        rates = [r["rate"] for r in runs[v]]
        summary[v] = {"median": statistics.median(rates), "min": min(rates),
                      "max": max(rates), "rates": rates,
                      "failures": sum(r["failures"] for r in runs[v]),
                      "server_cpu": _median_of(runs[v], "server_cpu"),
                      "client_cpu": _median_of(runs[v], "client_cpu")}
    ratio = summary["interpose"]["median"] / summary["threads"]["median"]
    setup = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "server_cpus": cpus[0], "client_cpus": cpus[1],
        "seconds": args.seconds, "reps": args.reps,
        "server_handlers": args.server_coroutines,
        "client": f"{args.client_processes} processes x {args.client_connections}"
                  " connections (interpose)",
    }
    if args.json:
        print(json.dumps({"setup": setup, "results": summary,
                          "ratio_interpose_over_threads": ratio}, indent=2))
        return 0
    pin = (f"server on CPU {','.join(map(str, cpus[0]))}, load on CPU"
           f" {','.join(map(str, cpus[1]))}" if cpus[0] else "not pinned")
    print(f"Echo round trips/s, 8-byte messages over 127.0.0.1; server: 1 process x"
          f" {args.server_coroutines} handlers; load: {setup['client']};"
          f" {args.seconds:g} s per run, {args.reps} interleaved repetitions; {pin};"
          f" CPython {setup['python']}, {setup['cpus']} CPUs.\n")
    print("| server | round trips/s (median) | min – max | failures |"
          " server CPU (cores) | load CPU (cores) |")
    print("|---|---:|---:|---:|---:|---:|")
    names = {"interpose": f"interpose run, {args.server_coroutines} coroutines",
             "threads": f"plain python, {args.server_coroutines} threads"}
    for v in variants:
        s = summary[v]
        print(f"| {names[v]} | {s['median']:,.0f} | {s['min']:,.0f} – {s['max']:,.0f}"
              f" | {s['failures']} | {_cores(s['server_cpu'])} | {_cores(s['client_cpu'])} |")
    print(f"\ninterpose / threads (medians): **{ratio:.2f}x**")
    return 0


if __name__ == "__main__":
    sys.exit(main())
