"""Spawn+join cost against plain threads and gevent (monkey-patched),
measured in the same run.

    python scripts/bench_spawn.py [--n 20000] [--serial-n 10000] [--reps 3]

Two patterns, each in a fresh interpreter per repetition, repetitions
interleaved across the variants (A B C ... A B C ...):

  batch   spawn n trivial bodies, then join them all (n alive at once)
  serial  spawn one and join it, serial-n times: the steady-state rate,
          with the stacks and thread states of finished ones reused

Variants: interpose.spawn coroutines and threading.Thread converted to
coroutines (both under `python -m interpose run`), plain OS threads, and
threading.Thread after gevent.monkey.patch_all() (greenlets).  The figure
is the process's CPU time (user + system) per spawn+join, which a busy
shared machine disturbs far less than wall time; wall time is printed
next to it.  Medians with min-max; ratios are interpose's median over the
peer's.  Raw output goes to bench-results/ (ignored by git).
"""
import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _benchutil import ROOT, env  # noqa: E402

OUT = os.path.join(ROOT, "bench-results")

# variant -> (argv prefix, body kind)
VARIANTS = {
    "interpose-spawn": (["-m", "interpose", "run"], "spawn"),
    "interpose-thread": (["-m", "interpose", "run"], "thread"),
    "threads": ([], "thread"),
    "gevent-thread": ([], "gevent-thread"),
    "gevent-spawn": ([], "gevent-spawn"),
}


def _trivial():
    return None


def child(kind, pattern, n):
    """Runs in the measured interpreter; prints {cpu_us, wall_us}."""
    if kind.startswith("gevent"):
        from gevent import monkey
        monkey.patch_all()
    import threading

    if kind == "spawn":
        import interpose

        def start():
            return interpose.spawn(_trivial)
    elif kind == "gevent-spawn":
        import gevent

        def start():
            return gevent.spawn(_trivial)
    else:
        def start():
            t = threading.Thread(target=_trivial)
            t.start()
            return t

    for t in [start() for _ in range(100)]:  # warm up: scheduler, pools
        t.join()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if pattern == "batch":
        started = [start() for _ in range(n)]
        for t in started:
            t.join()
    else:
        for _ in range(n):
            start().join()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    print(json.dumps({"cpu_us": cpu * 1e6 / n, "wall_us": wall * 1e6 / n}))


def run_child(variant, pattern, n):
    prefix, kind = VARIANTS[variant]
    proc = subprocess.run(
        [sys.executable, *prefix, os.path.abspath(__file__), "--child", kind,
         "--pattern", pattern, "--n", str(n)],
        capture_output=True, text=True, env=env(), cwd=ROOT, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} {pattern}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.splitlines()[-1])


def run_interleaved(variants, n, serial_n, reps):
    """{(variant, pattern): [child result, ...]}: reps repetitions, each
    running every variant in turn (A B C ... A B C ...) for the batch and
    the serial pattern; progress on stderr."""
    results = collections.defaultdict(list)
    for rep in range(reps):
        for pattern, count in (("batch", n), ("serial", serial_n)):
            for variant in variants:
                r = run_child(variant, pattern, count)
                results[(variant, pattern)].append(r)
                print(f"rep {rep + 1} {pattern:6} {variant:17}"
                      f" {r['cpu_us']:6.1f} CPU µs {r['wall_us']:6.1f} wall µs",
                      file=sys.stderr, flush=True)
    return results


def render(results, args):
    lines = [f"Spawn+join, CPU µs per coroutine or thread (user + system),"
             f" {args.reps} interleaved repetitions, median (min-max);"
             f" batch = {args.n} spawned then joined, serial = one at a time,"
             f" {args.serial_n}×", ""]
    for pattern in ("batch", "serial"):
        peers = [v for v in ("threads", "gevent-thread", "gevent-spawn")
                 if (v, pattern) in results]
        lines.append(f"| {pattern} | CPU µs | min-max | wall µs | "
                     + " | ".join(f"÷ {p}" for p in peers) + " |")
        lines.append("|---|---|---|---|" + "---|" * len(peers))
        med = {v: statistics.median(r["cpu_us"] for r in rs)
               for (v, p), rs in results.items() if p == pattern}
        for (variant, p), rs in results.items():
            if p != pattern:
                continue
            cpus = [r["cpu_us"] for r in rs]
            wall = statistics.median(r["wall_us"] for r in rs)
            ratios = [f"{med[variant] / med[q]:.2f}" for q in peers]
            lines.append(f"| {variant} | {med[variant]:.1f} | {min(cpus):.1f}-"
                         f"{max(cpus):.1f} | {wall:.1f} | "
                         + " | ".join(ratios) + " |")
        lines.append("")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--serial-n", type=int, default=10000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--variants", type=lambda s: s.split(","),
                        default=list(VARIANTS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--pattern", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.pattern, args.n)
        return 0
    bad = set(args.variants) - set(VARIANTS)
    if bad:
        parser.error(f"unknown variants: {', '.join(sorted(bad))}")
    results = run_interleaved(args.variants, args.n, args.serial_n,
                              args.reps)
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, time.strftime("spawn-%Y%m%d-%H%M%S.json")),
              "w") as f:
        json.dump([{"variant": v, "pattern": p, "runs": rs}
                   for (v, p), rs in results.items()], f, indent=2)
    print(render(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
