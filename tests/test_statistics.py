"""Statistics: interpose.statistics() reports CPU time, turns and latency,
per coroutine too while it runs, and `interpose run --stats` prints the
latency and the busiest coroutines at exit.
"""
import re
import subprocess
import sys

from support.snippets import snippet_env, check_ok, run_hooked
from support.programs import WAIT


def test_statistics_report_cpu_time_turns_and_latency():
    out = check_ok(run_hooked("""
        import time, interpose
        def spin():
            t = time.thread_time()
            while time.thread_time() - t < 0.02: pass
            interpose.sleep(0)
        c = interpose.spawn(spin, name="spinner")
        c.join()
        s = interpose.statistics()
        mine = {x.name: x for x in s.coroutines}
        # A turn is counted when it ends (main's current one is not yet).
        print(mine["main"].cpu_time >= 0, s.run_queue_latency_p50 > 0,
              s.run_queue_latency_p50 <= s.run_queue_latency_p99
              <= s.run_queue_latency_max, s.longest_turn >= 0.02)
        print(sorted(mine))
    """))
    assert out == ["True True True True", "['main']"]


def test_statistics_of_a_live_coroutine():
    out = check_ok(run_hooked("""
        import time, interpose
        def spin():
            t = time.thread_time()
            while time.thread_time() - t < 0.02: pass
            interpose.sleep(10)
        c = interpose.spawn(spin, name="spinner")
        interpose.sleep(0)
        s = {x.name: x for x in interpose.statistics().coroutines}["spinner"]
        print(s.cpu_time >= 0.02, s.longest_turn >= 0.02, s.turns)
        c.cancel()
    """))
    assert out == ["True True 1"]


def test_run_stats_prints_latency_and_busiest_coroutines():
    proc = subprocess.run(
        [sys.executable, "-m", "interpose", "run", "--stats", "-c",
         "import threading; t = threading.Thread(target=sum, args=([1],), name='adder');"
         " t.start(); t.join()"],
        capture_output=True, text=True, env=snippet_env(None), timeout=WAIT)
    assert proc.returncode == 0, proc
    assert re.search(r"^interpose statistics \(pid \d+\):\n"
                     r"scheduler on OS main thread \d+ \(MainThread\): 0 spawned"
                     r" coroutine\(s\) alive, \d+ switches\n"
                     r"  created 1, parks \d+, timeouts 0, epoll waits \d+\n"
                     r"  longest turn [\d.]+ ms; run-queue latency p50 <= [\d.]+ ms,",
                     proc.stderr), proc.stderr
