"""Where the echo server's CPU goes per round trip: `perf record` of one
server under the C load generator, every sample put in one bucket, each
bucket given in ns per round trip.

    python scripts/bench_profile.py [--servers interpose,uvloop-protocol]
                                    [--conns 100] [--seconds 3] [--reps 3]
                                    [--keep PATH] [--baseline DIR]

Each server runs --reps times, interleaved (A B A B ...), pinned to CPU 0,
with the load generator (64-byte messages) on CPU 1, as in bench_suite.py.
Half a second after the load generator's warm-up, `perf record` samples
the server's CPU (cpu-clock, kernel and user, with call chains) for
--seconds while `perf stat` counts its sendto and write calls: every echo
server makes exactly one per round trip (the threaded ones and gevent send
64 bytes in one call, uvloop writes), so that count is the number of round
trips in the window (reads would not do: gevent tries recv, gets EAGAIN,
waits and calls it again), and a bucket's ns per round trip is its
samples' CPU time divided by it.  Needs perf and permission to profile (root, or
kernel.perf_event_paranoid <= 1 for kernel samples).

Buckets.  A user-space sample goes by its own function (self time): the
interpose library by source file (hooks, fd table, scheduler and switch,
thread-state swap), CPython's GIL hand-off (take_gil, drop_gil and the
pthread mutex/condvar calls they make), thread-local lookups, the clock
(vDSO), libc's syscall wrappers, and the rest of CPython, _socket and malloc as "Python-level
socket code".  A kernel sample goes by the system call its chain passes
through (recvfrom, sendto, epoll_wait, ...): loopback TCP delivers the
reply to the peer's socket inside the sender's sendto, so that bucket holds
both ends' network stack.  Python is built without frame pointers, so user
chains are not walked; self time is exact, inclusive time is not given.
"""
import argparse
import collections
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from _benchutil import ROOT, kill_group

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_suite  # noqa: E402  (the server table and the loadgen build)

NATIVE = os.path.join(ROOT, "native")

# interpose's source files, by the bucket their functions' self time goes to.
FILE_BUCKETS = {
    "hookcore.c": "hook entry (hooks, mode, real calls)",
    "real.c": "hook entry (hooks, mode, real calls)",
    "fdtable.c": "fd table (lookup, waiter registration, dispatch)",
    "sched.c": "scheduler (park, wake, hub round)",
    "sched_life.c": "scheduler (park, wake, hub round)",
    "coro_abi.c": "scheduler (park, wake, hub round)",
    "signals.c": "scheduler (park, wake, hub round)",
    "fork.c": "scheduler (park, wake, hub round)",
    "stack.c": "scheduler (park, wake, hub round)",
    "timer.c": "scheduler (park, wake, hub round)",
    "gilstate.c": "thread-state swap (interpose side)",
    "pybridge.c": "thread-state swap (interpose side)",
    "pyver.c": "thread-state swap (interpose side)",
    "preempt.c": "preemption monitor",
}
GIL = "GIL release/acquire (CPython + pthread)"
GIL_SYMBOLS = {
    "take_gil", "drop_gil", "PyEval_RestoreThread", "PyEval_SaveThread",
    "PyThread_get_thread_ident", "_PyThreadState_Swap",
    "PyEval_AcquireThread", "PyEval_ReleaseThread", "PyCOND_SIGNAL",
    "PyGILState_GetThisThreadState", "PyThread_tss_get",
    "PyThread_get_key_value", "_PyThreadState_GET",
}
GIL_LIBC = re.compile(r"pthread_(mutex|cond)_|pthread_self")
# Thread-local lookups: the library's own TLS (global-dynamic model, so
# each access calls __tls_get_addr) and the gilstate slot it reads with
# pthread_getspecific, besides CPython's.
TLS = "thread-local lookups (__tls_get_addr, pthread_getspecific)"
TLS_SYMBOLS = {"__tls_get_addr", "pthread_getspecific",
               "pthread_getspecific@@GLIBC_2.34", "__pthread_getspecific"}
WRAPPERS = re.compile(r"^(__libc_recv|__send|__libc_send|recv|send|"
                      r"__GI___pthread_(en|dis)able_asynccancel|"
                      r"epoll_wait|__GI_epoll_wait|syscall|__syscall.*)$")
CLOCK = "clock_gettime (vDSO)"
SYSCALL = re.compile(r"^(?:__x64_sys_|__ia32_sys_|__do_sys_|__se_sys_|ksys_|"
                     r"__sys_|do_)(\w+)$")
# One name per direction: the threaded servers recv and send, libuv reads
# and writes.
SYSCALL_NAMES = {"recvfrom": "recv/read", "read": "recv/read",
                 "sendto": "send/write", "write": "send/write",
                 "epoll_pwait": "epoll_wait", "epoll_wait": "epoll_wait",
                 "syscall_64": "system call entry and exit"}
# The heap's top moving: glibc trimming and growing the main arena (brk,
# munmap) and the page faults on the pages it gets back.
HEAP = {"brk", "brk_flags", "vmi_align_munmap", "anonymous_page",
        "vmi_munmap", "user_addr_fault"}


def function_files():
    """{function name: source file} for interpose's C and assembly."""
    defn = re.compile(r"^[A-Za-z_][\w \*]*?\b(\w+)\([^;]*$")
    out = {}
    for name in sorted(os.listdir(NATIVE)):
        path = os.path.join(NATIVE, name)
        if name.endswith(".S"):
            out["ip__switch"] = name
            continue
        if not name.endswith(".c"):
            continue
        with open(path) as f:
            for line in f:
                m = defn.match(line)
                if m and not line.startswith(("return", "else", "typedef")):
                    out.setdefault(m.group(1), name)
    return out


def bucket_of(sym, dso, chain, files):
    """The bucket of one sample: chain is [(sym, dso)], innermost first."""
    if "kernel" in dso:
        for s, d in chain:
            m = SYSCALL.match(s)
            if m and "kernel" in d:
                name = m.group(1)
                if name in HEAP:
                    return "kernel: heap trim and growth (brk, munmap, faults)"
                return f"kernel: {SYSCALL_NAMES.get(name, name)}"
        return "kernel: interrupts, softirq, scheduler"
    if dso.endswith("libinterpose.so"):
        f = files.get(sym, "")
        if f.startswith("hooks_") or f.startswith("switch_"):
            return ("scheduler (park, wake, hub round)" if f.startswith(
                "switch_") else "hook entry (hooks, mode, real calls)")
        return FILE_BUCKETS.get(f, "hook entry (hooks, mode, real calls)")
    if "vdso" in dso:
        return CLOCK
    if sym in TLS_SYMBOLS or sym.startswith("pthread_getspecific"):
        return TLS
    if sym in GIL_SYMBOLS or ("libc" in dso and GIL_LIBC.search(sym)):
        return GIL
    if "libc" in dso and WRAPPERS.match(sym):
        return "libc syscall wrappers"
    return "Python-level socket code (eval loop, _socket, malloc)"


def parse_script(text, files):
    """(buckets {name: cpu ns}, cpu ns total)."""
    buckets = collections.Counter()
    head = re.compile(r"^\s*(\d+)\s+(\S+):\s*$")
    frame = re.compile(r"^\s*[0-9a-f]+\s+(.+?)\s+\((.*)\)\s*$")
    for block in text.split("\n\n"):
        lines = [ln for ln in block.splitlines() if ln.strip()]
        if not lines:
            continue
        m = head.match(lines[0])
        if not m:
            continue
        period, event = int(m.group(1)), m.group(2)
        chain = []
        for ln in lines[1:]:
            fm = frame.match(ln)
            if fm:
                sym = re.sub(r"\+0x[0-9a-f]+$", "", fm.group(1))
                chain.append((sym, fm.group(2)))
        if not chain:
            continue
        buckets[bucket_of(chain[0][0], chain[0][1], chain, files)] += period
    return buckets, sum(buckets.values())


def round_trips(count_path):
    """sendto + write calls counted by perf stat -x, (value first)."""
    total = 0
    with open(count_path) as f:
        for line in f:
            fields = line.split(",")
            if len(fields) > 2 and "sys_enter_" in line and \
                    fields[0].isdigit():
                total += int(fields[0])
    return total


def start_server(name):
    argv = bench_suite._server_argv(name)
    proc = subprocess.Popen(
        ["taskset", "-c", "0", *argv, "127.0.0.1", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env=bench_suite._env(name), cwd=bench_suite._cwd(name),
        start_new_session=True,
        preexec_fn=bench_suite._raise_nofile)
    line = proc.stdout.readline()
    if not line.startswith("listening on "):
        kill_group(proc)
        raise SystemExit(f"bench_profile: {name} did not start: {line!r}")
    return proc, int(line.rsplit(":", 1)[1])


def profile(args, server, data_path, count_path):
    proc, port = start_server(server)
    try:
        gen = subprocess.Popen(
            ["taskset", "-c", "1", bench_suite.LOADGEN, "--port", str(port),
             "--conns", str(args.conns), "--size", "64",
             "--duration", str(args.seconds + 3), "--warmup", "0.5"],
            stdout=subprocess.PIPE, text=True,
            preexec_fn=bench_suite._raise_nofile)
        try:
            for line in gen.stdout:
                if '"start"' in line:
                    break
            time.sleep(0.5)
            # perf stat counts the round trips (counting mode: no sample per
            # call, which would cost the server more than the call) while
            # perf record samples the same window.
            subprocess.run(
                ["perf", "record", "-q", "-g", "-o", data_path,
                 "-e", "cpu-clock/freq=4999/", "-p", str(proc.pid), "--",
                 "perf", "stat", "-x,", "-o", count_path,
                 "-e", "syscalls:sys_enter_sendto",
                 "-e", "syscalls:sys_enter_write",
                 "-p", str(proc.pid), "--", "sleep", str(args.seconds)],
                check=True, stdout=subprocess.DEVNULL)
        finally:
            gen.kill()
            gen.wait()
    finally:
        kill_group(proc)
        proc.stdout.close()


def profile_once(args, server, files, keep=None):
    """{bucket: ns per round trip} plus "total", for one run of server."""
    with tempfile.TemporaryDirectory(prefix="bench_profile.") as tmp:
        data = keep or os.path.join(tmp, "perf.data")
        count = os.path.join(tmp, "count.csv")
        profile(args, server, data, count)
        trips = round_trips(count)
        if trips == 0:
            raise RuntimeError(f"{server}: no round trips were counted")
        text = subprocess.run(
            ["perf", "script", "-i", data, "-F", "event,period,ip,sym,dso"],
            capture_output=True, text=True, check=True).stdout
    buckets, total = parse_script(text, files)
    out = {name: ns / trips for name, ns in buckets.items()}
    out["total"] = total / trips
    return out


def render(args, runs):
    """Rows: buckets by the first server's median, largest first; columns:
    each server's median ns per round trip over the repetitions."""
    med = {sv: {} for sv in args.servers}
    for sv in args.servers:
        names = set().union(*(r.keys() for r in runs[sv]))
        for name in names:
            med[sv][name] = statistics.median(r.get(name, 0.0)
                                              for r in runs[sv])
    first = args.servers[0]
    names = sorted((n for n in set().union(*(m.keys() for m in med.values()))
                    if n != "total"), key=lambda n: -med[first].get(n, 0.0))
    names = [n for n in names if max(m.get(n, 0) for m in med.values()) >= 1]
    lines = [f"{args.conns} connections, 64 B messages, {args.reps}"
             f" interleaved runs of {args.seconds:g} s of perf each; medians"
             " in ns of server CPU per round trip", "",
             "| bucket | " + " | ".join(args.servers) + " |",
             "|---|" + "---:|" * len(args.servers)]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(
            f"{med[sv].get(n, 0):,.0f}" for sv in args.servers) + " |")
    lines.append("| **total** | " + " | ".join(
        f"**{med[sv]['total']:,.0f}**" for sv in args.servers) + " |")
    lines.append("| (min–max of the totals) | " + " | ".join(
        f"{min(r['total'] for r in runs[sv]):,.0f}–"
        f"{max(r['total'] for r in runs[sv]):,.0f}" for sv in args.servers)
        + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", type=lambda t: t.split(","),
                        default=["interpose", "uvloop-protocol"],
                        help="comma-separated, of: "
                             + ", ".join(bench_suite.ALL_SERVERS))
    parser.add_argument("--conns", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--reps", type=int, default=3,
                        help="interleaved runs per server (default 3)")
    parser.add_argument("--keep", metavar="PATH",
                        help="keep the last run's perf.data at PATH")
    parser.add_argument("--baseline", metavar="DIR",
                        help="the checkout whose interpose the server"
                             " interpose-baseline runs (as in bench_suite)")
    args = parser.parse_args(argv)
    unknown = set(args.servers) - set(bench_suite.ALL_SERVERS)
    if unknown:
        parser.error(f"unknown servers: {', '.join(sorted(unknown))}")
    if ("interpose-baseline" in args.servers) != bool(args.baseline):
        parser.error("the server interpose-baseline goes with --baseline DIR")
    if args.baseline:
        bench_suite.BASELINE["dir"] = os.path.abspath(args.baseline)
    if shutil.which("perf") is None or shutil.which("taskset") is None:
        sys.exit("bench_profile: needs perf and taskset")
    if not os.path.exists(bench_suite.LOADGEN):
        bench_suite.build_tools()
    files = function_files()
    runs = {sv: [] for sv in args.servers}
    for rep in range(args.reps):
        for sv in args.servers:
            r = profile_once(args, sv, files, args.keep)
            runs[sv].append(r)
            print(f"rep {rep + 1} {sv:20} {r['total']:7,.0f} ns/rt",
                  file=sys.stderr, flush=True)
    print(render(args, runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
