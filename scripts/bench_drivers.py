"""N concurrent slow queries through each C driver: interpose coroutines
vs plain OS threads vs gevent (and gevent with psycogreen for psycopg2).

Starts its own PostgreSQL, MariaDB, redis and HTTP servers on 127.0.0.1
(tests/support/servers.py, the test suite's code), then for every driver and
every way of running it starts a fresh worker process that opens N
connections at once, each running one query that waits SLOW seconds on the
server (`pg_sleep`, `SELECT SLEEP`, redis `BLPOP` with a timeout, an HTTP
handler that sleeps), and reports the wall time from the first spawn to
the last result.  Each worker runs the same unmodified driver code; only
how the N tasks are made differs:

  interpose           `python -m interpose run`, interpose.spawn per task
  threads             plain python, threading.Thread per task
  gevent              gevent.monkey.patch_all(), gevent.spawn per task
  gevent+psycogreen   the same plus psycogreen.gevent.patch_psycopg()
                      (psycopg2 only: its wait callback)

N * SLOW seconds means the tasks ran one after another; SLOW seconds
means they all overlapped.  The table shows the median wall time over
--reps runs and the most OS threads the process had while the tasks
waited (read from /proc halfway through the server-side wait).

    python scripts/bench_drivers.py [--n 20] [--slow 0.5] [--reps 3] [--json]
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ["interpose", "threads", "gevent", "gevent+psycogreen"]
DRIVERS = ["psycopg2", "psycopg3", "mysqlclient", "redis", "pycurl"]


# ---- worker side: one driver, one mode, N tasks --------------------------

def _slow_fn(driver, args, slow):
    """The driver's one slow query, as plain blocking code."""
    if driver == "psycopg2":
        import psycopg2

        def run(i):
            conn = psycopg2.connect(args["dsn"])
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_sleep(%s), %s", (slow, i))
                    return cur.fetchone()[1]
            finally:
                conn.close()
    elif driver == "psycopg3":
        import psycopg
        assert psycopg.pq.__impl__ in ("binary", "c"), psycopg.pq.__impl__

        def run(i):
            with psycopg.connect(args["dsn"]) as conn:
                return conn.execute("SELECT pg_sleep(%s), %s",
                                    (slow, i)).fetchone()[1]
    elif driver == "mysqlclient":
        import MySQLdb

        def run(i):
            conn = MySQLdb.connect(host="127.0.0.1", port=args["port"], user="root")
            try:
                cur = conn.cursor()
                cur.execute("SELECT SLEEP(%s), %s", (slow, i))
                return cur.fetchone()[1]
            finally:
                conn.close()
    elif driver == "redis":
        import redis

        def run(i):
            client = redis.Redis(host="127.0.0.1", port=args["port"])
            try:
                assert client.blpop([f"bench-empty-{i}"], timeout=slow) is None
                return i
            finally:
                client.close()
    elif driver == "pycurl":
        import io
        import pycurl

        def run(i):
            body = io.BytesIO()
            curl = pycurl.Curl()
            try:
                curl.setopt(pycurl.URL, f"{args['url']}/slow?s={slow}&i={i}")
                curl.setopt(pycurl.WRITEDATA, body)
                curl.perform()
                return int(body.getvalue().decode().rsplit("&i=", 1)[1])
            finally:
                curl.close()
    else:
        raise ValueError(f"unknown driver {driver}")
    return run


def _spawner(mode):
    """spawn(fn, i) -> a join() callable returning fn(i)."""
    if mode == "interpose":
        import interpose
        return lambda fn, i: interpose.spawn(fn, i).join
    if mode.startswith("gevent"):
        import gevent
        return lambda fn, i: gevent.spawn(fn, i).get
    import threading

    def spawn(fn, i):
        box = {}

        def body():
            try:
                box["value"] = fn(i)
            except BaseException as e:
                box["error"] = e
        thread = threading.Thread(target=body)
        thread.start()

        def join():
            thread.join()
            if "error" in box:
                raise box["error"]
            return box["value"]
        return join
    return spawn


def worker(mode, driver, n, slow, args):
    if mode.startswith("gevent"):
        # Before anything imports socket or threading.
        from gevent import monkey
        monkey.patch_all()
        if mode == "gevent+psycogreen":
            import psycogreen.gevent
            psycogreen.gevent.patch_psycopg()
    run = _slow_fn(driver, args, slow)
    spawn = _spawner(mode)
    run(-1)  # untimed: loads what the driver loads once
    t0 = time.monotonic()
    joins = [spawn(run, i) for i in range(n)]
    # Halfway through the server-side wait every task is waiting (time.sleep
    # lets them run in every mode, and costs no wall time overall).
    time.sleep(slow / 2)
    threads = _os_threads()
    results = [join() for join in joins]
    elapsed = time.monotonic() - t0
    assert results == list(range(n)), results
    print(json.dumps({"elapsed": elapsed, "threads": threads}))


def _os_threads():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise RuntimeError("no Threads: line in /proc/self/status")


# ---- parent side: servers, runs, table -------------------------------------

def _run_worker(mode, driver, n, slow, args):
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    argv = [__file__, "--worker", mode, driver, str(n), str(slow), json.dumps(args)]
    if mode == "interpose":
        argv = [sys.executable, "-m", "interpose", "run", *argv]
    else:
        argv = [sys.executable, *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env,
                          timeout=n * slow * 4 + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} {driver} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.splitlines()[-1])


def _server_args():
    """Start every server; return (ExitStack, per-driver args)."""
    import contextlib
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from support import servers
    stack = contextlib.ExitStack()
    try:
        pg = stack.enter_context(servers.postgres())
        my = stack.enter_context(servers.mariadb())
        rd = stack.enter_context(servers.redis())
        web = stack.enter_context(servers.http_server())
    except BaseException:
        stack.close()
        raise
    return stack, {"psycopg2": {"dsn": pg["dsn"]}, "psycopg3": {"dsn": pg["dsn"]},
                   "mysqlclient": {"port": my["port"]}, "redis": {"port": rd["port"]},
                   "pycurl": {"url": web["url"]}}


def _modes_for(driver):
    return [m for m in MODES if m != "gevent+psycogreen" or driver == "psycopg2"]


def _table(results, n, slow, reps):
    lines = ["| driver | " + " | ".join(MODES) + " |",
             "|---|" + "---:|" * len(MODES)]
    for driver in DRIVERS:
        cells = []
        for mode in MODES:
            runs = results.get(driver, {}).get(mode)
            if not runs:
                cells.append("—")
                continue
            elapsed = statistics.median(r["elapsed"] for r in runs)
            threads = max(r["threads"] for r in runs)
            cells.append(f"{elapsed:.2f} s, {threads} thr")
        lines.append(f"| {driver} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"{n} concurrent tasks, each one query of {slow} s on the server "
                 f"(one after another: {n * slow:.1f} s); wall time until all {n} "
                 f"answered, median of {reps} runs, and the most OS threads the "
                 f"process had while they waited; CPython "
                 f"{platform.python_version()}, {os.cpu_count()} CPUs.")
    return "\n".join(lines)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        mode, driver, n, slow, args = sys.argv[2:7]
        worker(mode, driver, int(n), float(slow), json.loads(args))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--slow", type=float, default=0.5)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--drivers", nargs="*", default=DRIVERS, choices=DRIVERS)
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args()
    stack, server_args = _server_args()
    results = {}
    with stack:
        for _ in range(opts.reps):  # interleaved, so drift hits every mode alike
            for driver in opts.drivers:
                for mode in _modes_for(driver):
                    r = _run_worker(mode, driver, opts.n, opts.slow, server_args[driver])
                    results.setdefault(driver, {}).setdefault(mode, []).append(r)
                    print(f"{driver:12} {mode:18} {r['elapsed']:6.2f} s "
                          f"{r['threads']:3} threads", file=sys.stderr)
    if opts.json:
        print(json.dumps(results, indent=2))
    else:
        print(_table(results, opts.n, opts.slow, opts.reps))


if __name__ == "__main__":
    main()
