"""What every driver test checks, written once: the cooperation snippet (N
coroutines each waiting ~0.5 s on the server while a ticker keeps
ticking, then fds, connections and OS threads back to baseline) and the
failure-path differential (the same snippet hooked and plain must report
the same errors).

A driver test supplies DRIVER code defining

    slow(i, seconds) -> a value   # one connection, one slow query, closed
    expected(i)      -> the value slow(i, ...) must return
    report()         -> optional: anything JSON to hand back to the test

and, for the failure paths, code that prints one line per case.
"""
import json

from support.snippets import assert_same, check_ok, run_hooked

N = 8
SECONDS = 0.5

_COOPERATION = r'''
import json, psutil
ARGS = json.loads(r"""@ARGS@""")
N, SECONDS = @N@, @SECONDS@
@DRIVER@

me = psutil.Process()
def inet_connections():
    return len(me.net_connections("inet"))

threads0, inet0 = me.num_threads(), inet_connections()
# Warm up: the first use loads what a driver loads once (libraries,
# certificates, /etc files kept open).
assert slow(-1, 0) == expected(-1)
fds0 = me.num_fds()

gaps = []
stop = False
def ticker():
    last = time.monotonic()
    while not stop:
        time.sleep(0.002)
        now = time.monotonic()
        gaps.append(now - last)
        last = now
tick = go(ticker)
settle(tick)

t0 = time.monotonic()
tasks = [go(slow, i, SECONDS) for i in range(N)]
results = [t.join() for t in tasks]
elapsed = time.monotonic() - t0
ticks_during = len(gaps)
stop = True
tick.join()
assert results == [expected(i) for i in range(N)], results

# The resolver's worker threads exit after 2 s idle.
wait_until(lambda: me.num_threads() == threads0, timeout=15)
wait_until(lambda: me.num_fds() == fds0, timeout=5)
wait_until(lambda: inet_connections() == inet0, timeout=5)
report = globals().get("report", lambda: None)
print(json.dumps({"elapsed": elapsed, "ticks": ticks_during,
                  "max_gap": max(gaps), "report": report()}))
'''


def check_cooperation(driver, args, *, n=N, seconds=SECONDS, timeout=120):
    """Run the cooperation snippet under the preload and check it: the N
    slow calls overlap (total well under half the serial time), the ticker
    never stalls for a whole query, results are right, and fds,
    connections and threads come back (checked inside the snippet)."""
    code = (_COOPERATION.replace("@ARGS@", json.dumps(args))
            .replace("@N@", str(n)).replace("@SECONDS@", str(seconds))
            .replace("@DRIVER@", driver))
    proc = run_hooked(code, timeout=timeout)
    out = json.loads(check_ok(proc, "hooked")[-1])
    serial = n * seconds
    # Generous on a noisy 2-core machine: serial would be 4 s, overlapped
    # about 0.5 s; anything under 2 s can only be overlap.
    assert out["elapsed"] < serial / 2, out
    # A ticker that never waited longer than half a query between ticks
    # ran while every query was in flight.
    assert out["max_gap"] < seconds / 2, out
    assert out["ticks"] >= 20, out
    return out


def check_failures_same(code, args, *, timeout=120):
    """Run the failure snippet hooked and plain; both must succeed and
    print the same lines (the driver's own errors).  Returns the lines."""
    body = (f'import json\nARGS = json.loads(r"""{json.dumps(args)}""")\n'
            + FAILURE_PRELUDE + code + "\nticker.stop()\n")
    return assert_same(body, timeout=timeout)


# Failure snippets share these: a listener that completes TCP handshakes
# (the kernel's backlog) but never answers, and a ticker whose progress
# shows the other coroutines (threads, unhooked) carried on.
FAILURE_PRELUDE = r'''
import socket
blackhole = socket.socket()
blackhole.bind(("127.0.0.1", 0))
blackhole.listen(64)
BLACKHOLE_PORT = blackhole.getsockname()[1]
ticker = Ticker(0.002)


def background(fn, *args):
    """Start fn(*args) in a coroutine (a thread when unhooked); return a
    function that joins it and raises its error.  The error travels as a
    value so that a coroutine dying before the join is not reported as
    uncaught."""
    def run():
        try:
            return None, fn(*args)
        except Exception as e:
            return e, None
    task = go(run)

    def finish():
        exc, value = task.join()
        if exc is not None:
            raise exc
        return value
    return finish


def case(label, fn, *, lasts=False):
    """Print label, the type name of the error fn raises and its code when
    it carries one (MySQL's and libcurl's error numbers).  For a case
    that lasts (a timeout, a kill), also whether the ticker kept ticking
    while fn waited: other coroutines (threads, unhooked) carried on."""
    before = ticker.ticks
    try:
        fn()
        outcome = "no error"
    except Exception as e:
        outcome = type(e).__name__
        if e.args and type(e.args[0]) is int:
            outcome += f" {e.args[0]}"
    line = f"{label} {outcome}"
    if lasts:
        line += f" ticked {ticker.ticks - before >= 5}"
    print(line, flush=True)
'''
