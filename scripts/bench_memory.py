"""Memory per idle connection, against plain threads, gevent
(monkey-patched) and uvloop's Protocol server measured in the same run,
and where interpose's share of it goes.

    python scripts/bench_memory.py [--conns 10000] [--reps 3]
                                   [--servers a,b,...] [--no-breakdown]
    python scripts/bench_memory.py --floor [--conns 10000]

Idle memory (the same method as scripts/bench_suite.py, whose Server and
run_idle it uses): each server gets --conns connections that do one round
trip and then stay silent; (RSS then - RSS before the first connection) /
connections.  Repetitions are interleaved (A B C ... A B C ...) and the
table gives medians with min-max, and each server's ratio to the others.

Breakdown (interpose running the unmodified threaded_echo.py): with the
connections idle, the server's /proc/PID/smaps is sorted into coroutine C
stacks (a read-write mapping right above a one-page PROT_NONE guard),
CPython data-stack chunks (16 KiB mappings of their own), pymalloc arenas
(1 MiB mappings), the malloc heap and the rest; /proc/PID/mem then tells
how many bytes of each stack and chunk were written (the distance from the
stack's top to the lowest non-zero byte, from a chunk's start to its last
non-zero byte: fresh mappings are zero, so this is a lower bound).  A
second, in-process run (the same handler on --conns connections, under
`python -m interpose run`) counts the Python objects each connection adds,
by type, with sys.getsizeof, and the malloc bytes in use (mallinfo2).

Program floor (also alone, in seconds, with --floor): what the unmodified
program itself holds per idle connection with no thread, coroutine or
stack at all - its socket, its threading.Thread object and the 64 KiB
buffer its blocked recv(65536) has allocated - each part measured in a
plain CPython process (see child_floor).  No runtime that runs the
program unchanged and blocks inside the C recv, as interpose does, can
go below it.

Raw output goes to bench-results/ (ignored by git).
"""
import argparse
import collections
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_suite  # noqa: E402
from _benchutil import ROOT  # noqa: E402

OUT = os.path.join(ROOT, "bench-results")
SERVERS = ("interpose", "interpose-spawn", "threads", "gevent-patched",
           "uvloop-protocol")
PAGE = os.sysconf("SC_PAGESIZE")
CHUNK = 16 * 1024  # CPython's DATA_STACK_CHUNK_SIZE (3.11 to 3.15)
# native/arena.c's slabs: 64 chunks, each at offset 64 of a stride of
# CHUNK + a page; neighbouring slabs merge into one mapping.
SLAB_STRIDE = CHUNK + PAGE
SLAB = 64 * SLAB_STRIDE
SLAB_OFFSET = 64
ARENA = 1 << 20  # pymalloc's arena size from 3.10


# ---- /proc/PID/smaps --------------------------------------------------------

def read_vmas(pid):
    """[(start, end, perms, name, rss_bytes)] of pid's mappings."""
    vmas, cur = [], None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(None, 1)[0]
            if not head.endswith(":"):
                parts = line.split()
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                cur = [lo, hi, parts[1], parts[5] if len(parts) > 5 else "", 0]
                vmas.append(cur)
            elif head == "Rss:":
                cur[4] = int(line.split()[1]) * 1024
    return [tuple(v) for v in vmas]


def classify(vmas):
    """{category: [vma, ...]}: 'stack' (read-write above a one-page guard),
    'chunk' (a 16 KiB data-stack chunk of its own), 'slab' (arena.c's
    slabs of chunks), 'arena' (1 MiB), 'heap', 'files', 'anon' (the rest,
    guard pages included)."""
    out = collections.defaultdict(list)
    prev = None
    for v in vmas:
        lo, hi, perms, name, _ = v
        anon_rw = name == "" and perms == "rw-p"
        if anon_rw and prev is not None and prev[1] == lo and \
                prev[2] == "---p" and prev[1] - prev[0] == PAGE:
            out["stack"].append(v)
        elif anon_rw and hi - lo == CHUNK:
            out["chunk"].append(v)
        elif anon_rw and (hi - lo) % SLAB == 0:
            out["slab"].append(v)
        elif anon_rw and hi - lo == ARENA:
            out["arena"].append(v)
        elif name == "[heap]":
            out["heap"].append(v)
        elif name.startswith("/"):
            out["files"].append(v)
        else:
            out["anon"].append(v)
        prev = v
    return out


def _touched_top(mem, hi, max_pages=8):
    """Bytes between hi and the lowest non-zero byte below it, reading at
    most max_pages pages (a C stack grows down from hi)."""
    lowest = hi
    for i in range(1, max_pages + 1):
        mem.seek(hi - i * PAGE)
        page = mem.read(PAGE)
        stripped = page.lstrip(b"\0")
        if not stripped:
            break
        lowest = hi - i * PAGE + (PAGE - len(stripped))
        if len(stripped) != PAGE:
            break
    return hi - lowest


def _touched_bottom(mem, lo, size):
    """Bytes from lo to the last non-zero byte (a data-stack chunk grows
    up from lo)."""
    mem.seek(lo)
    return len(mem.read(size).rstrip(b"\0"))


def stack_usage(pid, stacks, chunks, slabs):
    """Medians of the bytes written at the top of each stack and at the
    start of each data-stack chunk (chunks in slabs: those in use or
    cached, i.e. with anything written)."""
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        used = [_touched_top(mem, hi) for _, hi, *_ in stacks]
        chunk_used = [_touched_bottom(mem, lo, hi - lo)
                      for lo, hi, *_ in chunks]
        for lo, hi, *_ in slabs:
            for start in range(lo + SLAB_OFFSET, hi, SLAB_STRIDE):
                n = _touched_bottom(mem, start, PAGE - SLAB_OFFSET)
                if n > 0:
                    chunk_used.append(n)
    med = (lambda xs: statistics.median(xs) if xs else None)
    return {"stack_bytes_written_median": med(used),
            "stack_bytes_written_max": max(used, default=None),
            "chunk_bytes_written_median": med(chunk_used)}


def smaps_breakdown(before, after, conns):
    """KiB per connection by category, after minus before."""
    cats0, cats1 = classify(before), classify(after)
    rows = {}
    for cat in sorted(set(cats0) | set(cats1)):
        rss = sum(v[4] for v in cats1.get(cat, ())) - \
            sum(v[4] for v in cats0.get(cat, ()))
        count = len(cats1.get(cat, ())) - len(cats0.get(cat, ()))
        rows[cat] = {"kib_per_conn": rss / 1024 / conns,
                     "mappings_per_conn": count / conns}
    rows["total"] = {
        "kib_per_conn": (sum(v[4] for v in after) - sum(v[4] for v in before))
        / 1024 / conns,
        "mappings_per_conn": (len(after) - len(before)) / conns}
    return rows, cats1


def run_breakdown(name, conns, args):
    """The smaps and stack-usage breakdown of one idle run of name.  The
    server guards its stacks with PROT_NONE pages
    (INTERPOSE_STACK_GUARD=mprotect): with guard markers, the default
    where the kernel has them, its stacks merge into one mapping that
    classify() cannot take apart; the pages written, and so the RSS, are
    the same either way."""
    saved = os.environ.get("INTERPOSE_STACK_GUARD")
    os.environ["INTERPOSE_STACK_GUARD"] = "mprotect"
    try:
        server = bench_suite.Server(name)
    finally:
        if saved is None:
            del os.environ["INTERPOSE_STACK_GUARD"]
        else:
            os.environ["INTERPOSE_STACK_GUARD"] = saved
    try:
        time.sleep(0.5)
        before = read_vmas(server.proc.pid)
        argv = [bench_suite.LOADGEN, "--port", str(server.port), "--conns",
                str(conns), "--size", "64", "--idle",
                "--connect-timeout", str(args.connect_timeout)]
        gen = subprocess.Popen(argv, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True,
                               preexec_fn=bench_suite._raise_nofile)
        try:
            msg = json.loads(gen.stdout.readline())
            time.sleep(1.0)
            after = read_vmas(server.proc.pid)
            rows, cats = smaps_breakdown(before, after, msg["connected"])
            usage = stack_usage(server.proc.pid, cats.get("stack", []),
                                cats.get("chunk", []), cats.get("slab", []))
        finally:
            gen.kill()
            gen.wait()
            gen.stdout.close()
    finally:
        server.stop()
    return {"server": name, "connected": msg["connected"],
            "smaps": rows, "usage": usage}


# ---- in-process: Python objects and malloc ---------------------------------

class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
        "fsmblks", "uordblks", "fordblks", "keepcost")]


def _malloc_in_use():
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd


def _object_census():
    gc.collect()
    counts = collections.Counter()
    sizes = collections.Counter()
    for obj in gc.get_objects():
        t = type(obj).__qualname__
        counts[t] += 1
        sizes[t] += sys.getsizeof(obj)
    return counts, sizes


def child_objects(conns):
    """Runs under `python -m interpose run`: threaded_echo's handler on
    conns connections from the load generator; prints the census delta."""
    import socket
    import threading

    def handle(conn):
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                conn.sendall(data)

    accepted = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4096)

    def acceptor():
        while len(accepted) < conns:
            conn, _ = server.accept()
            accepted.append(1)
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=acceptor, daemon=True).start()
    time.sleep(0.2)
    counts0, sizes0 = _object_census()
    malloc0 = _malloc_in_use()
    gen = subprocess.Popen(
        [bench_suite.LOADGEN, "--port", str(server.getsockname()[1]),
         "--conns", str(conns), "--size", "64", "--idle"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    msg = json.loads(gen.stdout.readline())
    time.sleep(0.5)
    counts1, sizes1 = _object_census()
    malloc1 = _malloc_in_use()
    gen.stdin.close()
    gen.wait()
    n = msg["connected"]
    per_type = []
    for t in set(counts1) | set(counts0):
        dc = counts1[t] - counts0[t]
        ds = sizes1[t] - sizes0[t]
        if ds / n >= 8:
            per_type.append((t, dc / n, ds / n))
    per_type.sort(key=lambda r: -r[2])
    print(json.dumps({"connected": n,
                      "malloc_bytes_per_conn": (malloc1 - malloc0) / n,
                      "objects": per_type}))


def run_objects(conns):
    proc = subprocess.run(
        [sys.executable, "-m", "interpose", "run", os.path.abspath(__file__),
         "--child-objects", str(conns)],
        capture_output=True, text=True, env=bench_suite._env(), cwd=ROOT,
        timeout=600, preexec_fn=bench_suite._raise_nofile)
    if proc.returncode != 0:
        raise RuntimeError(f"objects child failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.splitlines()[-1])


# ---- the program's own floor -------------------------------------------------
# What the unmodified thread-per-connection program itself holds for each
# idle connection before any thread, coroutine or stack exists: its socket
# object, its threading.Thread (built as threaded_echo.py builds it, not
# started: a started one holds more), and the buffer that the blocked
# conn.recv(65536) has already allocated, made the way CPython's sock_recv
# makes it (PyBytes_FromStringAndSize(NULL, n): only the header written).
# The buffer is held by every runtime that blocks inside the C recv, as
# interpose and plain threads do; gevent's Python-level recv waits for
# readability before it calls the C recv, so it holds none.  Each part is
# measured in a plain CPython process of its own, cumulatively.

FLOOR_PARTS = ("socket", "thread", "buffer")


def child_floor(conns, parts):
    """Runs in a plain interpreter: RSS KiB per connection of `parts`."""
    import socket
    import threading

    new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
    new_bytes.restype = ctypes.py_object
    new_bytes.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)

    def handle(conn):
        raise AssertionError("never started")

    def one():
        conn = socket.socket()
        held = [conn]
        if "thread" in parts:
            held.append(threading.Thread(target=handle, args=(conn,),
                                         daemon=True))
        if "buffer" in parts:
            held.append(new_bytes(None, 65536))
        return held

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE

    for _ in range(200):  # the allocators' first arenas and pools
        one()[0].close()
    gc.collect()
    before = rss()
    held = [one() for _ in range(conns)]
    gc.collect()
    print(json.dumps({"kib_per_conn": (rss() - before) / 1024 / len(held)}))


def program_floor(conns):
    """{parts joined by '+': KiB per connection}, one plain child each;
    the last entry holds every part."""
    out = {}
    for n in range(1, len(FLOOR_PARTS) + 1):
        parts = ",".join(FLOOR_PARTS[:n])
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--child-floor",
             str(conns), parts],
            capture_output=True, text=True, timeout=300,
            preexec_fn=bench_suite._raise_nofile)
        if proc.returncode != 0:
            raise RuntimeError(f"floor child failed: {proc.stderr[-2000:]}")
        out[parts.replace(",", "+")] = json.loads(
            proc.stdout.splitlines()[-1])["kib_per_conn"]
    return out


def render_floor(floor, chunk_bytes=None):
    """The floor's table: each part's share and the total."""
    lines = ["What the program itself holds per idle connection, with no"
             " thread, coroutine or stack (plain CPython, each part added in"
             " a fresh process):", "", "| part | KiB/conn |", "|---|---|"]
    labels = {"socket": "its socket object",
              "thread": "its threading.Thread, not started",
              "buffer": "the buffer its blocked recv(65536) holds"
                        " (header page)"}
    previous = 0.0
    for key, total in floor.items():
        lines.append(f"| {labels[key.split('+')[-1]]} |"
                     f" {total - previous:.2f} |")
        previous = total
    lines.append(f"| **program floor** | **{previous:.2f}** |")
    if chunk_bytes:
        lines += ["", f"With the frames of the blocked call chain"
                  f" ({chunk_bytes:,.0f} bytes written, from the breakdown):"
                  f" at least {previous + chunk_bytes / 1024:.2f} KiB per"
                  f" connection for a runtime that runs the program"
                  f" unchanged and blocks inside the C recv."]
    return "\n".join(lines)


# ---- the comparison ----------------------------------------------------------

def run_idle_table(args, log):
    samples = collections.defaultdict(list)
    for rep in range(args.reps):
        for name in args.servers:
            r = bench_suite.run_idle(name, args.conns, args)
            samples[name].append(r["kib_per_conn"])
            log(f"idle rep {rep + 1} {name:17} {r['kib_per_conn']:6.2f} KiB/conn"
                f" ({r['connected']} connected)")
    return dict(samples)


def render(samples, breakdown, objects, args):
    med = {k: statistics.median(v) for k, v in samples.items()}
    lines = [f"RSS per idle connection, {args.conns} connections,"
             f" {args.reps} interleaved repetitions (median, min-max)", ""]
    peers = [p for p in ("threads", "gevent-patched", "uvloop-protocol")
             if p in med]
    lines.append("| server | KiB/conn | min-max | "
                 + " | ".join(f"÷ {p}" for p in peers) + " |")
    lines.append("|---|---|---|" + "---|" * len(peers))
    for name in args.servers:
        cells = [f"{med[name] / med[p]:.2f}" for p in peers]
        lines.append(f"| {name} | {med[name]:.2f} | {min(samples[name]):.2f}-"
                     f"{max(samples[name]):.2f} | " + " | ".join(cells) + " |")
    if breakdown:
        lines += ["", f"interpose (threaded_echo.py) by mapping kind,"
                  f" {breakdown['connected']} connections:", "",
                  "| kind | KiB/conn | mappings/conn |", "|---|---|---|"]
        for cat, row in breakdown["smaps"].items():
            lines.append(f"| {cat} | {row['kib_per_conn']:.2f} |"
                         f" {row['mappings_per_conn']:.2f} |")
        u = breakdown["usage"]
        lines += ["", f"C stack bytes written per coroutine: median"
                  f" {u['stack_bytes_written_median']}, max"
                  f" {u['stack_bytes_written_max']}; data-stack chunk bytes"
                  f" written: median {u['chunk_bytes_written_median']}"]
    if objects:
        lines += ["", f"Python objects per connection (in-process,"
                  f" {objects['connected']} connections; malloc bytes in use"
                  f" per connection {objects['malloc_bytes_per_conn']:.0f},"
                  " of which 65,569 is the recv(65536) buffer, mostly never"
                  " touched):", "", "| type | count/conn | bytes/conn |",
                  "|---|---|---|"]
        for t, count, size in objects["objects"][:15]:
            lines.append(f"| {t} | {count:.2f} | {size:.0f} |")
    return "\n".join(lines)


def _need_peers(servers):
    """Installs gevent or uvloop with pip when a chosen server needs it."""
    import importlib.util

    missing = [p for p in ("gevent", "uvloop", "psutil")
               if any(p in s for s in servers + ["psutil"])
               and importlib.util.find_spec(p) is None]
    if missing:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                        *missing], check=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conns", type=int, default=10000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--servers", type=lambda s: s.split(","),
                        default=list(SERVERS))
    parser.add_argument("--no-breakdown", action="store_true")
    parser.add_argument("--connect-timeout", type=float, default=120.0)
    parser.add_argument("--floor", action="store_true",
                        help="only the program's own floor (seconds)")
    parser.add_argument("--child-objects", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-floor", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_objects:
        child_objects(args.child_objects)
        return 0
    if args.child_floor:
        child_floor(int(args.child_floor[0]), args.child_floor[1].split(","))
        return 0
    if args.conns < 1:
        parser.error("--conns must be at least 1")
    if args.floor:
        problems = bench_suite.check_limits(args.conns)
        if problems:
            sys.exit("bench_memory: " + "; ".join(problems))
        print(render_floor(program_floor(args.conns)))
        return 0
    bad = set(args.servers) - set(bench_suite.ALL_SERVERS)
    if bad:
        parser.error(f"unknown servers: {', '.join(sorted(bad))}")
    _need_peers(args.servers)
    bench_suite.build_tools()
    problems = bench_suite.check_limits(args.conns)
    if problems:
        sys.exit("bench_memory: " + "; ".join(problems))

    def log(text):
        print(text, file=sys.stderr, flush=True)

    samples = run_idle_table(args, log)
    breakdown = objects = None
    if not args.no_breakdown:
        breakdown = run_breakdown("interpose", args.conns, args)
        objects = run_objects(args.conns)
    floor = program_floor(args.conns)
    os.makedirs(OUT, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with open(os.path.join(OUT, f"memory-{stamp}.json"), "w") as f:
        json.dump({"samples": samples, "breakdown": breakdown,
                   "objects": objects, "floor": floor}, f, indent=2)
    chunk = breakdown["usage"]["chunk_bytes_written_median"] \
        if breakdown else None
    print(render(samples, breakdown, objects, args))
    print()
    print(render_floor(floor, chunk))
    return 0


if __name__ == "__main__":
    sys.exit(main())
