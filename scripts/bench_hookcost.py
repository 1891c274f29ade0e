"""The cost of a hooked call that does not need to wait, against the raw call.

Three ways of running the same loop of send(1 byte) + recv(1 byte) on a
socket pair, where neither call ever has to wait:

  plain      plain python, no preload: the raw libc calls
  no_hooks   under `python -m interpose run`, inside `interpose.no_hooks()`:
             the preloaded hook is entered but passes straight through
  hooked     under `python -m interpose run` in the main coroutine, hooks
             on, scheduler running: the hook's full path for a call that
             succeeds at once (fd lookup, the real call, no park)

each measured two ways: a C loop (scripts/hookcost.c, called through
ctypes.CDLL, which releases the GIL so the hooks act as for a Python socket
call) and a Python loop of os.write/os.read (what a Python program sees,
interpreter overhead included).  Every variant runs in a fresh process
pinned to one CPU; reported as ns per call, median and min-max of --reps
processes.

    python scripts/bench_hookcost.py --lib build/bench/libhookcost.so [--reps 5] [--json PATH]
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C_PAIRS = 1_000_000
PY_PAIRS = 300_000
MODES = ("plain", "no_hooks", "hooked")


def child(lib_path, mode):
    """Prints {"c_ns": ..., "py_ns": ...} for this process's mode."""
    import contextlib
    import ctypes

    lib = ctypes.CDLL(lib_path)
    lib.hookcost_pingpong.restype = ctypes.c_double
    lib.hookcost_pingpong.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_long)
    guard = contextlib.nullcontext()
    if mode == "no_hooks":
        import interpose
        guard = interpose.no_hooks()
    a, b = socket.socketpair()
    with a, b, guard:
        fa, fb = a.fileno(), b.fileno()
        lib.hookcost_pingpong(fa, fb, 10_000)  # warm caches and the fd entry
        c_ns = lib.hookcost_pingpong(fa, fb, C_PAIRS)
        if c_ns < 0:
            sys.exit(f"hookcost_pingpong failed ({c_ns})")
        write, read = os.write, os.read
        t0 = time.perf_counter_ns()
        for _ in range(PY_PAIRS):
            write(fa, b"x")
            read(fb, 1)
        py_ns = (time.perf_counter_ns() - t0) / (2 * PY_PAIRS)
    print(json.dumps({"c_ns": c_ns, "py_ns": py_ns}))


def run_one(lib_path, mode, cpu):
    argv = [sys.executable, os.path.abspath(__file__), "--child", mode,
            "--lib", lib_path]
    if mode != "plain":
        argv[1:1] = ["-m", "interpose", "run"]
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
    out = subprocess.run(argv, check=True, capture_output=True, text=True,
                         cwd=ROOT, timeout=300).stdout
    return json.loads(out.strip().splitlines()[-1])


def measure(lib_path, reps, cpu):
    """{"c": {mode: {median, min, max, samples}}, "py": {...}}, interleaved
    plain, no_hooks, hooked, plain, ..."""
    samples = {mode: [] for mode in MODES}
    for _ in range(reps):
        for mode in MODES:
            samples[mode].append(run_one(lib_path, mode, cpu))
    result = {}
    for key, name in (("c_ns", "c"), ("py_ns", "py")):
        result[name] = {}
        for mode in MODES:
            values = [s[key] for s in samples[mode]]
            result[name][mode] = {"median": statistics.median(values),
                                  "min": min(values), "max": max(values),
                                  "samples": values}
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lib", required=True, help="path of libhookcost.so")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--cpu", type=int, default=1, help="pin to this CPU")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    lib_path = os.path.abspath(args.lib)
    if args.child:
        child(lib_path, args.child)
        return
    result = measure(lib_path, args.reps, args.cpu)
    for name in ("c", "py"):
        line = ", ".join(f"{m} {result[name][m]['median']:.1f} ns" for m in MODES)
        print(f"{name}: {line}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
