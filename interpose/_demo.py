"""The no-argument demo: many coroutines sleeping, signalling each other
through events and a queue, then the scheduler's statistics."""
import random
import time

from . import _sched
from . import _sync


def _worker(index, start, results, rng_seed):
    rng = random.Random(rng_seed)
    start.wait()
    total = 0
    for _ in range(5):
        _sched.sleep(rng.uniform(0, 0.05))
        total += index
    results.put((index, total))


def main(coroutines=10_000, out=print):
    """Spawn coroutines that sleep and report through a queue; print what
    happened and the scheduler's counters."""
    def body():
        start = _sync.Event()
        results = _sync.Queue()
        t0 = time.monotonic()
        workers = [
            _sched.spawn(_worker, i, start, results, i, name=f"worker-{i}")
            for i in range(coroutines)
        ]
        _sched.sleep(0)
        out(f"spawned {coroutines} coroutines, all parked on one Event"
            f" ({_sched.statistics().coroutines_alive} alive)")
        start.set()
        received = sum(1 for _ in range(coroutines) if results.get())
        for w in workers:
            w.join()
        elapsed = time.monotonic() - t0
        out(f"{received} coroutines each slept 5 times (up to 50 ms each) in"
            f" {elapsed:.2f} s of wall time")
        return elapsed

    _sched.run(body)
    stats = _sched.statistics()
    out("statistics:")
    for field in ("coroutines_created", "coroutines_alive", "switches", "parks",
                  "timeouts", "epoll_waits"):
        out(f"  {field:20} {getattr(stats, field)}")
    return 0
