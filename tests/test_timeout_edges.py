"""Timeouts at the edges (issue #13 item 5): zero, negative, NaN and infinite
timeouts of interpose's twin primitives, joins and sleeps behave as
threading's and time's do, and an infinite wait stays cancellable.  Each
snippet runs as a script under plain python and under `python -m
interpose run`; outputs and exit statuses must match.
"""
import subprocess
import sys
import textwrap

import pytest

from support.snippets import assert_script_same, snippet_env


pytestmark = pytest.mark.slow


TWIN_TIMEOUTS = """
    import math, sys
    if sys.argv[1] == "interpose":
        import interpose as sync, interpose as queue_mod
        from interpose import Queue
        import queue
    else:
        import threading as sync, queue
        from queue import Queue
    nan, inf = math.nan, math.inf
    def t(name, fn):
        try:
            print(name, "->", repr(fn()))
        except Exception as e:
            print(name, "->", type(e).__name__, e)
    def full_queue():
        q = Queue(1)
        q.put(0)
        return q
    for v in (nan, inf, -inf, 1e300, -2.0, 0, 0.001):
        t(f"Event.wait({v}) unset", lambda: sync.Event().wait(v))
        e = sync.Event()
        e.set()
        t(f"Event.wait({v}) set", lambda: e.wait(v))
        t(f"Lock.acquire(timeout={v})", lambda: sync.Lock().acquire(timeout=v))
        held = sync.Lock()
        held.acquire()
        if not (isinstance(v, float) and math.isnan(v)):
            t(f"held Lock.acquire(timeout={v})",
              lambda: held.acquire(timeout=v) if v <= 1 else "skip")
        t(f"RLock.acquire(timeout={v})", lambda: sync.RLock().acquire(timeout=v))
        c = sync.Condition()
        with c:
            t(f"Condition.wait({v})", lambda: c.wait(v))
            t(f"Condition.wait_for(true, {v})", lambda: c.wait_for(lambda: 1, v))
        t(f"Semaphore(1).acquire(timeout={v})",
          lambda: sync.Semaphore(1).acquire(timeout=v))
        t(f"Queue.get(timeout={v}) with an item",
          lambda: (lambda q: (q.put(1), q.get(timeout=v))[1])(Queue()))
        t(f"Queue.put(timeout={v}) with room",
          lambda: Queue().put(1, timeout=v))
        if not (isinstance(v, float) and math.isnan(v)):
            t(f"Semaphore(0).acquire(timeout={v})",
              lambda: sync.Semaphore(0).acquire(timeout=v))
            t(f"Queue.get(timeout={v}) empty",
              lambda: Queue().get(timeout=v))
            t(f"Queue.put(timeout={v}) full",
              lambda: full_queue().put(1, timeout=v))
"""


def test_twin_primitives_treat_edge_timeouts_as_threading_does(tmp_path):
    # interpose's Event/Lock/RLock/Condition/Semaphore/Queue against
    # threading's and queue's, for NaN, infinities, huge and negative
    # timeouts.  Left out: NaN where CPython's primitive spins for ever
    # (Semaphore(0), an empty or full Queue): interpose does not wait there
    # (docs/semantics.md).
    script = tmp_path / "twins.py"
    script.write_text(textwrap.dedent(TWIN_TIMEOUTS))
    plain = subprocess.run([sys.executable, str(script), "threading"],
                           capture_output=True, text=True, timeout=30,
                           env=snippet_env())
    inter = subprocess.run(
        [sys.executable, "-m", "interpose", "run", str(script), "interpose"],
        capture_output=True, text=True, timeout=30, env=snippet_env())
    assert plain.returncode == 0, plain.stderr
    assert inter.stdout == plain.stdout
    assert "OverflowError" in plain.stdout and "Invalid value NaN" in plain.stdout


def test_nan_timeouts_of_joins_and_sleeps_match_threading_and_time(tmp_path):
    assert_script_same(tmp_path, """
        import math, threading, time
        def t(name, fn):
            try:
                print(name, "->", repr(fn()))
            except Exception as e:
                print(name, "->", type(e).__name__, e)
        th = threading.Thread(target=time.sleep, args=(0.01,))
        th.start()
        t("Thread.join(nan)", lambda: th.join(math.nan))
        th.join()
        t("time.sleep(nan)", lambda: time.sleep(math.nan))
        t("Thread.join(inf) of a finished thread", lambda: th.join(math.inf))
    """)


INFINITE_TIMEOUTS = """
    import math, socket, interpose
    inf, nan = math.inf, math.nan
    def t(name, fn):
        try:
            print(name, "->", repr(fn()))
        except Exception as e:
            print(name, "->", type(e).__name__, e)
    a, b = socket.socketpair()
    def main():
        c = interpose.spawn(interpose.sleep, inf)
        interpose.sleep(0)
        c.cancel()
        t("sleep(inf), cancelled", c.join)
        c = interpose.spawn(lambda: interpose.wait_readable(a, timeout=inf))
        interpose.sleep(0)
        b.send(b"x")
        t("wait_readable(timeout=inf)", lambda: c.join(timeout=inf))
        c = interpose.spawn(lambda: interpose.wait_writable(a, timeout=1e300))
        t("wait_writable(timeout=1e300)", lambda: c.join(timeout=1e300))
        def under_infinite_deadline():
            with interpose.deadline(inf) as d:
                interpose.sleep(0.001)
                return d.deadline_ns
        t("deadline(inf)", lambda: interpose.spawn(under_infinite_deadline).join())
        def nested():
            with interpose.deadline(0.001):
                with interpose.deadline(inf):
                    interpose.sleep(inf)
        t("deadline(inf) inside deadline(0.001)",
          lambda: interpose.spawn(nested).join())
        c = interpose.spawn(interpose.Event().wait)
        interpose.sleep(0)
        try:
            c.join(timeout=0.001)
        except TimeoutError:
            print("join(timeout=0.001) of a parked one -> TimeoutError")
        t("join(timeout=nan)", lambda: c.join(timeout=nan))
        t("sleep(nan)", lambda: interpose.sleep(nan))
        t("wait_readable(timeout=nan)", lambda: interpose.wait_readable(b, nan))
        t("deadline(nan)", lambda: interpose.deadline(nan))
    interpose.run(main)
"""


def test_infinite_timeouts_mean_forever_and_stay_cancellable(tmp_path):
    script = tmp_path / "infinite.py"
    script.write_text(textwrap.dedent(INFINITE_TIMEOUTS))
    proc = subprocess.run(
        [sys.executable, "-m", "interpose", "run", str(script)],
        capture_output=True, text=True, timeout=30, env=snippet_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "sleep(inf), cancelled -> Cancelled [Errno 125] the coroutine was"
        " cancelled",
        "wait_readable(timeout=inf) -> True",
        "wait_writable(timeout=1e300) -> True",
        "deadline(inf) -> None",
        "deadline(inf) inside deadline(0.001) -> TimeoutError [Errno 110]"
        " interpose: the deadline has passed",
        "join(timeout=0.001) of a parked one -> TimeoutError",
        "join(timeout=nan) -> ValueError Invalid value NaN (not a number)",
        "sleep(nan) -> ValueError Invalid value NaN (not a number)",
        "wait_readable(timeout=nan) -> ValueError Invalid value NaN (not a"
        " number)",
        "deadline(nan) -> ValueError deadline() needs a number of seconds,"
        " not NaN",
    ]
