"""Microbenchmarks of the coroutine engine, printed as a markdown table:
the raw C context switch, a Python-level switch between two coroutines,
spawn+join cost, and the RSS of a parked coroutine, each against the
target it is meant to meet.

    python scripts/bench_engine.py [--quick] [--json PATH]

Every measurement is repeated (5 times, 3 with --quick) and reported as the
median with the min-max range.  Each Python-level repetition runs in a fresh
interpreter so that one cannot warm or fragment the heap for the next.  The
whole run is pinned to CPU 1 with taskset when both exist (the script
re-executes itself under taskset), which keeps the numbers comparable
between runs.  It measures the library in interpose/ as built from the
current sources: if that is stale, importing interpose says so.
"""
import argparse
import json
import os
import platform
import shutil
import statistics as stats
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWITCH_TEST = os.path.join(ROOT, "tests", "native", "switch_test.c")
PINNED_ENV = "INTERPOSE_BENCH_PINNED"
PIN_CPU = 1

SPAWN_N = 20000
RSS_N = 10000


# ---- measurements run in a fresh interpreter (--child KIND) ---------------
# Each prints one JSON number on its last line of output.

def child_switch_event(n):
    """ns per counted switch, two coroutines handing an Event back and
    forth n times each."""
    import interpose

    ping, pong = interpose.Event(), interpose.Event()

    def player(mine, other):
        for _ in range(n):
            mine.wait()
            mine.clear()
            other.set()

    a = interpose.spawn(player, ping, pong)
    b = interpose.spawn(player, pong, ping)
    ping.set()
    return _ns_per_switch(interpose, lambda: (a.join(), b.join()))


def child_switch_sleep0(n):
    """ns per counted switch, two coroutines each calling sleep(0) n
    times."""
    import interpose

    def spinner():
        for _ in range(n):
            interpose.sleep(0)

    a = interpose.spawn(spinner)
    b = interpose.spawn(spinner)
    return _ns_per_switch(interpose, lambda: (a.join(), b.join()))


def _ns_per_switch(interpose, body):
    before = interpose.statistics().switches
    t0 = time.perf_counter_ns()
    body()
    elapsed = time.perf_counter_ns() - t0
    switches = interpose.statistics().switches - before
    return elapsed / switches


def _trivial():
    return None


def child_spawn_batch(n):
    """us per coroutine: spawn n trivial coroutines, then join them all."""
    import interpose

    _warm_up(interpose)
    t0 = time.perf_counter_ns()
    coros = [interpose.spawn(_trivial) for _ in range(n)]
    for c in coros:
        c.join()
    return (time.perf_counter_ns() - t0) / n / 1e3


def child_spawn_serial(n):
    """us per coroutine: spawn one trivial coroutine and join it, n
    times."""
    import interpose

    _warm_up(interpose)
    spawn = interpose.spawn
    t0 = time.perf_counter_ns()
    for _ in range(n):
        spawn(_trivial).join()
    return (time.perf_counter_ns() - t0) / n / 1e3


def _warm_up(interpose):
    """Create the scheduler, its hub and the first pooled stacks."""
    for c in [interpose.spawn(_trivial) for _ in range(100)]:
        c.join()


def child_rss(n):
    """KiB of RSS per coroutine parked in Event.wait(), n of them."""
    import gc

    import interpose
    import psutil

    proc = psutil.Process()
    _warm_up(interpose)
    warm = interpose.Event()
    w = interpose.spawn(warm.wait)
    interpose.sleep(0)
    warm.set()
    w.join()

    event = interpose.Event()
    started = [0]

    def waiter():
        started[0] += 1
        event.wait()

    gc.collect()
    before = proc.memory_info().rss
    parks_before = interpose.statistics().parks
    coros = [interpose.spawn(waiter) for _ in range(n)]
    # A coroutine only gives up the CPU by parking, so once all have
    # counted themselves in, all are parked in event.wait().
    while started[0] < n:
        interpose.sleep(0)
    interpose.sleep(0)
    interpose.sleep(0)
    st = interpose.statistics()
    if st.coroutines_alive != n or st.parks - parks_before < n:
        raise SystemExit(f"bench: expected {n} parked coroutines, got {st}")
    after = proc.memory_info().rss
    event.set()
    for c in coros:
        c.join()
    return (after - before) / n / 1024


CHILDREN = {
    "switch_event": child_switch_event,
    "switch_sleep0": child_switch_sleep0,
    "spawn_batch": child_spawn_batch,
    "spawn_serial": child_spawn_serial,
    "rss": child_rss,
}


# ---- the driver -------------------------------------------------------------

def pin_to_cpu():
    """Re-execute under taskset -c 1 once; return the pinned CPU or None."""
    if os.environ.get(PINNED_ENV):
        return PIN_CPU if os.sched_getaffinity(0) == {PIN_CPU} else None
    taskset = shutil.which("taskset")
    if taskset is None or PIN_CPU not in os.sched_getaffinity(0):
        return None
    env = dict(os.environ)
    env[PINNED_ENV] = "1"
    argv = [taskset, "-c", str(PIN_CPU), sys.executable,
            os.path.abspath(__file__), *sys.argv[1:]]
    sys.stdout.flush()
    os.execve(taskset, argv, env)
    return None  # not reached


def run_child(kind, n):
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", kind,
         "--n", str(n)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    if proc.returncode != 0:
        raise SystemExit(f"bench: {kind} failed:\n{proc.stdout}{proc.stderr}")
    return float(proc.stdout.split()[-1])


def build_switch_test(tmpdir):
    machine = platform.machine()
    arch = {"x86_64": "x86_64", "amd64": "x86_64",
            "aarch64": "aarch64", "arm64": "aarch64"}.get(machine)
    if arch is None:
        raise SystemExit(f"bench: no native/switch_<arch>.S for {machine}")
    exe = os.path.join(tmpdir, "switch_test")
    cc = os.environ.get("CC", "gcc")
    cmd = [cc, "-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", "-o", exe,
           SWITCH_TEST, os.path.join(ROOT, "native", f"switch_{arch}.S"),
           "-lm"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"bench: building switch_test failed:\n"
                         f"{proc.stdout}{proc.stderr}")
    return exe


def raw_switch_ns(exe):
    proc = subprocess.run([exe, "--bench"], capture_output=True, text=True,
                          timeout=300)
    if proc.returncode != 0:
        raise SystemExit(f"bench: switch_test --bench failed:\n{proc.stderr}")
    return float(proc.stdout.split()[-1])


class Row:
    def __init__(self, name, unit, samples, target=None):
        self.name = name
        self.unit = unit
        self.samples = samples
        self.target = target  # an upper bound in unit, or None

    @property
    def median(self):
        return stats.median(self.samples)

    @property
    def met(self):
        return None if self.target is None else self.median <= self.target

    def cells(self):
        digits = 1 if self.unit == "ns" else 2
        fmt = f"{{:.{digits}f}}"
        low, high = fmt.format(min(self.samples)), fmt.format(max(self.samples))
        target = "—" if self.target is None else \
            f"≤ {self.target:g} {self.unit}"
        met = {None: "—", True: "yes", False: "**no**"}[self.met]
        return [
            self.name,
            f"{fmt.format(self.median)} {self.unit}",
            f"{low}–{high} {self.unit}",
            target,
            met,
        ]

    def as_json(self):
        return {"name": self.name, "unit": self.unit, "median": self.median,
                "min": min(self.samples), "max": max(self.samples),
                "samples": self.samples, "target": self.target,
                "met": self.met}


def measure(reps, quick):
    switch_n = 20000 if quick else 100000
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_engine.") as tmpdir:
        exe = build_switch_test(tmpdir)
        rows.append(Row("raw switch (`ip__switch`, C, per call)", "ns",
                        [raw_switch_ns(exe) for _ in range(reps)], 50))
    plan = [
        ("Python switch: 2 coroutines ping-pong an Event (per counted "
         "switch)", "ns", "switch_event", switch_n, None),
        ("Python switch: 2 coroutines calling sleep(0) (per counted switch)",
         "ns", "switch_sleep0", switch_n, None),
        (f"spawn+join: spawn {SPAWN_N}, then join all (per coroutine)",
         "µs", "spawn_batch", SPAWN_N, 10),
        (f"spawn+join: one at a time, {SPAWN_N}× (per coroutine)",
         "µs", "spawn_serial", SPAWN_N, 10),
        (f"RSS per coroutine parked in Event.wait(), N={RSS_N}",
         "KiB", "rss", RSS_N, 10),
    ]
    for name, unit, kind, n, target in plan:
        rows.append(Row(name, unit, [run_child(kind, n) for _ in range(reps)],
                        target))
    return rows


def render(rows, reps, cpu):
    import interpose

    header = ["benchmark", "median", "min–max", "target", "met"]
    lines = [
        f"interpose {interpose.__version__}, CPython "
        f"{platform.python_version()}, {platform.machine()}, "
        f"{'pinned to CPU %d' % cpu if cpu is not None else 'not pinned'}, "
        f"{reps} repetitions",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * len(header)) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(row.cells()) + " |")
    lines += [
        "",
        "A counted switch is one `statistics().switches` step, i.e. one "
        "stack switch; handing",
        "control from one coroutine to another goes through the hub and "
        "takes two.",
    ]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="3 repetitions and shorter switch loops")
    parser.add_argument("--json", metavar="PATH",
                        help="also write the results as JSON to PATH")
    parser.add_argument("--child", choices=sorted(CHILDREN),
                        help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(CHILDREN[args.child](args.n)))
        return

    cpu = pin_to_cpu()
    sys.path.insert(0, ROOT)
    import interpose  # fail early, with its message, on a stale library

    reps = 3 if args.quick else 5
    rows = measure(reps, args.quick)
    print(render(rows, reps, cpu))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({
                "python": platform.python_version(),
                "machine": platform.machine(),
                "interpose": interpose.__version__,
                "pinned_cpu": cpu,
                "repetitions": reps,
                "results": [row.as_json() for row in rows],
            }, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
