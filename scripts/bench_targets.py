"""Issue #18's targets in one table, every peer measured in the same run.

    python scripts/bench_targets.py [--runs 3] [--reps 3]
                                    [--conns-idle 10000]
                                    [--spawn-n 20000] [--serial-n 10000]
                                    [--skip rt,idle,spawn] [--quick]

Runs the three measurements with the existing scripts' own functions and
prints, for each run, one row per target: interpose's median (with
min-max), each peer's median, the target, whether it is met and by how
much it is missed or kept, and the number of repetitions behind
interpose's median.  The issue asks for each result to hold in three
separate runs, so by default the whole measurement runs three times
(--runs) and a last table says, per target, in how many runs it held and
the worst run's ratio to the goal.

  CPU per round trip   bench_suite.run_grid, as `bench_suite.py --rt-table`:
                       interpose, uvloop Protocol, gevent patch_all and
                       threads, 64-byte messages at 100 and 1000
                       connections, server on CPU 0, load on CPU 1.
                       Target: interpose's server CPU µs per round trip
                       <= uvloop Protocol's.
  idle memory          bench_suite.run_idle_all, as `bench_memory.py
                       --no-breakdown`: RSS per idle connection at
                       --conns-idle connections.  Target: <= 6 KiB.
                       Below the table: bench_memory.program_floor, what
                       the program itself holds per connection with no
                       thread at all.
  spawn+join           bench_spawn.run_interleaved: CPU µs per spawn+join,
                       --spawn-n spawned then joined, and one at a time
                       --serial-n times, for interpose.spawn and for
                       threading.Thread under `interpose run`; gevent's
                       matching API (gevent.spawn, patched Thread) and
                       plain threads as peers.  Target: <= 10 µs.  Each
                       run is a fresh interpreter, not pinned (as
                       bench_spawn.py).

Each part interleaves its servers or variants (A B C ... A B C ...).  The
table goes to stdout and to bench-results/targets.md, the raw data of
every run to bench-results/targets-<time>.json (bench-results/ is ignored
by git: results are never committed).  One full run takes about 2 minutes
on a quiet 2-core machine, so the default three about 6; --quick (1 run,
1 repetition, 1 s windows, 1,000 idle connections, 2,000 spawns) about
half a minute.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_memory  # noqa: E402
import bench_report  # noqa: E402
import bench_spawn  # noqa: E402
import bench_suite  # noqa: E402

PARTS = ("rt", "idle", "spawn")
RT_CONNS = (100, 1000)
RT_SIZE = 64
KIB_TARGET = 6.0
SPAWN_US_TARGET = 10.0
# The table's peer columns, in order.
PEER_COLUMNS = ("uvloop Protocol", "gevent", "threads")
# interpose's spawn variant -> its peer in each column (None: no counterpart).
SPAWN_PEERS = {
    "interpose-spawn": (None, "gevent-spawn", "threads"),
    "interpose-thread": (None, "gevent-thread", "threads"),
}
SPAWN_LABELS = {"interpose-spawn": "interpose.spawn",
                "interpose-thread": "threading.Thread under interpose run"}


# ---- the table ---------------------------------------------------------------

def _grid_cell(data, server, conns):
    for row in data.get("grid", []):
        if (row["server"], row["conns"], row["size"]) == \
                (server, conns, RT_SIZE):
            return row
    return None


def _rt_rows(data):
    rows = []
    for conns in data["settings"]["rt_conns"]:
        def cpu(server):
            cell = _grid_cell(data, server, conns)
            return None if cell is None else cell["cpu_us_per_rt"]

        def ok_runs(server):
            cell = _grid_cell(data, server, conns)
            return None if cell is None else \
                (cell["runs"] - cell["failed_runs"], cell["runs"])

        uvloop = cpu("uvloop-protocol")
        rows.append({
            "target": f"server CPU µs per round trip, {conns:,} conns",
            "unit": "µs", "digits": 2,
            "ours": cpu("interpose"),
            "peers": [uvloop, cpu("gevent-patched"), cpu("threads")],
            "limit": None if uvloop is None else uvloop["median"],
            "limit_text": "≤ uvloop Protocol's",
            "ours_name": "interpose",
            "runs": {name: ok_runs(name)
                     for name in bench_suite.RT_TABLE_SERVERS},
        })
    return rows


def _idle_rows(data):
    runs = data.get("idle_runs", [])
    summary = data.get("idle", {})

    def ok_runs(server):
        mine = [r for r in runs if r["server"] == server]
        return (sum("failure" not in r for r in mine), len(mine)) if mine \
            else None

    return [{
        "target": f"RSS KiB per idle connection,"
                  f" {data['settings']['idle_conns']:,} conns",
        "unit": "KiB", "digits": 2,
        "ours": summary.get("interpose"),
        "peers": [summary.get("uvloop-protocol"),
                  summary.get("gevent-patched"), summary.get("threads")],
        "limit": KIB_TARGET, "limit_text": f"≤ {KIB_TARGET:g} KiB",
        "ours_name": "interpose",
        "runs": {name: ok_runs(name)
                 for name in bench_suite.RT_TABLE_SERVERS},
    }]


def _spawn_rows(data):
    s = data["settings"]
    by_key = {(e["variant"], e["pattern"]): e["runs"]
              for e in data.get("spawn", [])}

    def cpu(variant, pattern):
        runs = by_key.get((variant, pattern))
        if runs is None:
            return None
        return bench_suite.summarize([r["cpu_us"] for r in runs])

    rows = []
    for pattern, what in (("batch", f"{s['spawn_n']:,} spawned, then joined"),
                          ("serial", f"one at a time, {s['serial_n']:,}×")):
        for ours, peers in SPAWN_PEERS.items():
            if (ours, pattern) not in by_key:
                continue
            names = [ours, *(p for p in peers if p)]
            rows.append({
                "target": f"spawn+join CPU µs, {what} ({SPAWN_LABELS[ours]})",
                "unit": "µs", "digits": 1,
                "ours": cpu(ours, pattern),
                "peers": [None if p is None else cpu(p, pattern)
                          for p in peers],
                "limit": SPAWN_US_TARGET,
                "limit_text": f"≤ {SPAWN_US_TARGET:g} µs",
                "ours_name": ours,
                "runs": {n: (len(by_key[(n, pattern)]),) * 2
                         for n in names if (n, pattern) in by_key},
            })
    return rows


def target_rows(data):
    """The table's rows, from the saved data of a run: dicts with the
    target's text, interpose's and the peers' statistics, the limit and
    the runs each median rests on ({server: (succeeded, tried)}, None for
    a server that did not run)."""
    return _rt_rows(data) + _idle_rows(data) + _spawn_rows(data)


def _verdict(row):
    """(met cell, by-how-much cell)."""
    ours, limit = row["ours"], row["limit"]
    if ours is None or limit is None:
        return "—", "not measured"
    diff = ours["median"] - limit
    amount = f"{abs(diff):,.{row['digits']}f} {row['unit']}"
    ratio = f"{ours['median'] / limit:.2f}× the goal"
    if diff <= 0:
        return "yes", f"met, {amount} to spare ({ratio})"
    return "**no**", f"missed by {amount} ({ratio})"


def _runs_cell(row):
    """interpose's successful runs, and each server whose runs failed."""
    runs = {name: counts for name, counts in row["runs"].items() if counts}
    ours = runs.get(row["ours_name"], (0, 0))
    failed = [f"{name}: {tried - ok} failed"
              for name, (ok, tried) in runs.items() if ok < tried]
    return str(ours[0]) + (f" ({', '.join(failed)})" if failed else "")


def render_targets(data):
    """One markdown table, one row per target, with a line of context."""
    s = data["settings"]
    m = data["machine"]
    lines = [
        f"Run {data['started']}, {data['minutes']} min: {m['cpu_model']},"
        f" {m['cpus']} CPUs, Linux {m['kernel']}, CPython {m['python']}.",
        f"Round trips: {s['reps']} interleaved repetition(s), {RT_SIZE}-byte"
        f" messages, {s['duration']:g} s after {s['warmup']:g} s warm-up,"
        f" server on CPU {data['pinning']['server_cpu']}, load on CPU"
        f" {data['pinning']['load_cpu']}.  Idle memory:"
        f" {s['idle_reps']} repetition(s).  Spawn+join: {s['spawn_reps']}"
        f" repetition(s), process CPU time.  Medians; interpose's min–max in"
        f" brackets; gevent is patch_all (spawn rows: its matching API).",
        "",
        "| target | interpose | " + " | ".join(PEER_COLUMNS)
        + " | goal | met | by how much | runs |",
        "|---|---:|" + "---:|" * len(PEER_COLUMNS) + "---|---|---|---:|",
    ]
    for row in target_rows(data):
        d = row["digits"]
        ours = bench_report._range(row["ours"], d)
        peers = ["—" if p is None else f"{p['median']:,.{d}f}"
                 for p in row["peers"]]
        met, by = _verdict(row)
        lines.append(f"| {row['target']} | {ours} | " + " | ".join(peers)
                     + f" | {row['limit_text']} | {met} | {by} |"
                     f" {_runs_cell(row)} |")
    floor = data.get("idle_floor")
    if floor:
        lines += ["", f"Idle memory floor: with no thread, coroutine or"
                  f" stack at all, the program itself holds"
                  f" {list(floor.values())[-1]:.2f} KiB per connection (its"
                  f" socket, its threading.Thread and the buffer its blocked"
                  f" recv(65536) holds; `bench_memory.py --floor`)."]
    return "\n".join(lines)


def render_summary(runs):
    """One row per target across the separate runs: interpose's median in
    each, the goal, and whether the target held in every run."""
    n = len(runs)
    rows_per_run = [target_rows(data) for data in runs]
    lines = [
        f"### All {n} runs",
        "",
        "A target is met only if it holds in every run.",
        "",
        "| target | " + " | ".join(f"run {i}" for i in range(1, n + 1))
        + " | goal | held in | verdict |",
        "|---|" + "---:|" * n + "---|---:|---|",
    ]
    for index, first in enumerate(rows_per_run[0]):
        same = [rows[index] for rows in rows_per_run
                if index < len(rows) and rows[index]["target"] ==
                first["target"]]
        d = first["digits"]
        cells, held, worst = [], 0, None
        for row in same:
            ours, limit = row["ours"], row["limit"]
            if ours is None or limit is None:
                cells.append("—")
                continue
            ok = ours["median"] <= limit
            held += ok
            cells.append(f"{ours['median']:,.{d}f}"
                         f" ({'met' if ok else 'missed'})")
            ratio = ours["median"] / limit
            worst = ratio if worst is None else max(worst, ratio)
        cells += ["—"] * (n - len(cells))
        if worst is None:
            verdict = "not measured"
        elif held == n:
            verdict = "met in every run"
        else:
            verdict = (f"**missed** (worst run {worst:.2f}× the goal)")
        lines.append(f"| {first['target']} | " + " | ".join(cells)
                     + f" | {first['limit_text']} | {held} of {n} |"
                     f" {verdict} |")
    return "\n".join(lines)


# ---- the run -----------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a quick check: 1 repetition, 1 s windows, 1,000"
                             " idle connections, 2,000 spawns")
    parser.add_argument("--runs", type=int, default=None,
                        help="separate runs of the whole measurement; a"
                             " target is met only if it holds in each"
                             " (default 3; 1 with --quick)")
    parser.add_argument("--reps", type=int, default=3,
                        help="repetitions of every part (default 3)")
    parser.add_argument("--duration", type=float, default=2.0,
                        help="round-trip measurement seconds (default 2)")
    parser.add_argument("--warmup", type=float, default=0.5,
                        help="round-trip warm-up seconds (default 0.5)")
    parser.add_argument("--conns-idle", type=int, default=10000,
                        help="idle connections (default 10000)")
    parser.add_argument("--spawn-n", type=int, default=20000,
                        help="spawned, then joined (default 20000)")
    parser.add_argument("--serial-n", type=int, default=10000,
                        help="spawn+join one at a time (default 10000)")
    parser.add_argument("--skip", type=lambda t: t.split(","), default=[],
                        help="parts to leave out: " + ", ".join(PARTS))
    parser.add_argument("--connect-timeout", type=float, default=120.0,
                        help="seconds a run may take to open its connections")
    parser.add_argument("--out", default=bench_suite.RESULTS,
                        help="results folder (default bench-results/,"
                             " ignored by git)")
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.duration, args.warmup = 1, 1.0, 0.3
        args.conns_idle, args.spawn_n, args.serial_n = 1000, 2000, 1000
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    unknown = set(args.skip) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    if args.reps < 1 or args.runs < 1:
        parser.error("--reps and --runs must be at least 1")
    # The attributes bench_suite's runners read.
    args.servers = list(bench_suite.RT_TABLE_SERVERS)
    args.conns, args.sizes = list(RT_CONNS), [RT_SIZE]
    args.idle_conns, args.idle_reps = args.conns_idle, args.reps
    return args


def measure(args, log):
    """One run of every part not skipped: the saved data of that run."""
    started = time.time()
    data = {"machine": bench_suite.machine_info(),
            "started": time.strftime("%Y-%m-%d %H:%M UTC",
                                     time.gmtime(started)),
            "started_epoch": started,
            "settings": {"reps": args.reps, "duration": args.duration,
                         "warmup": args.warmup, "rt_conns": list(RT_CONNS),
                         "servers": args.servers,
                         "idle_conns": args.idle_conns,
                         "idle_reps": args.idle_reps,
                         "spawn_n": args.spawn_n, "serial_n": args.serial_n,
                         "spawn_reps": args.reps, "skip": args.skip},
            "pinning": {"server_cpu": bench_suite.SERVER_CPU,
                        "load_cpu": bench_suite.LOAD_CPU}}
    # Spawn+join first: it is the shortest part and stops on a failed run.
    if "spawn" not in args.skip:
        variants = sorted({v for ours, peers in SPAWN_PEERS.items()
                           for v in (ours, *peers) if v},
                          key=list(bench_spawn.VARIANTS).index)
        results = bench_spawn.run_interleaved(variants, args.spawn_n,
                                              args.serial_n, args.reps)
        data["spawn"] = [{"variant": v, "pattern": p, "runs": rs}
                         for (v, p), rs in results.items()]
    if "rt" not in args.skip:
        data["runs"] = bench_suite.run_grid(args, log)
        data["grid"] = bench_suite.summarize_grid(data["runs"])
    if "idle" not in args.skip:
        data["idle_runs"], data["idle"] = bench_suite.run_idle_all(args, log)
        data["idle_floor"] = bench_memory.program_floor(args.idle_conns)
    data["minutes"] = round((time.time() - started) / 60, 1)
    return data


def main(argv=None):
    args = parse_args(argv)
    bench_suite.ensure_peers()
    bench_suite.build_tools()
    problems = bench_suite.check_limits(max(*RT_CONNS, args.conns_idle))
    if problems:
        sys.exit("bench_targets: " + "; ".join(problems))

    def log(text):
        print(text, file=sys.stderr, flush=True)

    os.makedirs(args.out, exist_ok=True)
    runs = []
    for number in range(1, args.runs + 1):
        log(f"bench_targets: run {number} of {args.runs}")
        data = measure(args, log)
        runs.append(data)
        raw = os.path.join(args.out, time.strftime(
            "targets-%Y%m%d-%H%M%S.json", time.gmtime(data["started_epoch"])))
        with open(raw, "w") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
        log(f"wrote {os.path.relpath(raw, bench_suite.ROOT)}")

    parts = [f"### Run {i}\n\n{render_targets(data)}"
             for i, data in enumerate(runs, 1)]
    if len(runs) > 1:
        parts.append(render_summary(runs))
    table = "\n\n".join(parts)
    md = os.path.join(args.out, "targets.md")
    with open(md, "w") as f:
        f.write(table + "\n")
    log(f"wrote {os.path.relpath(md, bench_suite.ROOT)}")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
