"""threading on coroutines under `python -m interpose run`: each snippet runs
there and under plain python (OS threads) and must print the same lines.
Idents differ between the two by nature, so snippets print facts about
them (distinct, stable), never their values.  Exit, signals and fork with
threads are in test_exit.py, test_signals.py and test_fork.py; the
blocking monitor in test_blocking_monitor.py."""
import sys

import pytest

from support.snippets import assert_same, check_ok, run_hooked


pytestmark = pytest.mark.timeout(120)


def test_thread_identity_and_lifecycle():
    assert_same("""
        import threading
        main = threading.current_thread()
        print(main.name, main is threading.main_thread(), main.daemon)
        local = threading.local()
        local.value = "main"
        seen = {}
        gate = threading.Event()

        def body(i):
            local.value = i
            gate.wait()
            me = threading.current_thread()
            seen[i] = (me.name, me.daemon, me.ident == threading.get_ident(),
                       local.value, me is not main)

        threads = [threading.Thread(target=body, args=(i,), name=f"worker-{i}",
                                    daemon=(i % 2 == 0)) for i in range(4)]
        print([t.is_alive() for t in threads], [t.ident for t in threads])
        for t in threads:
            t.start()
        print([t.is_alive() for t in threads], threading.active_count())
        names = sorted(t.name for t in threading.enumerate())
        print(names)
        idents = {t.ident for t in threads}
        print(len(idents), threading.get_ident() not in idents,
              all(isinstance(t.native_id, int) for t in threads))
        gate.set()
        for t in threads:
            t.join()
        print([t.is_alive() for t in threads], threading.active_count())
        print(sorted(seen.items()))
        print(local.value, idents == {t.ident for t in threads})
        print(threading.enumerate() == [main])
    """)


def test_join_with_timeout_and_repr_states():
    assert_same("""
        import threading, time
        stop = threading.Event()
        t = threading.Thread(target=stop.wait, name="sleeper")
        print(repr(t).split(",")[1].strip(" )"))
        t.start()
        t.join(0.05)
        print(t.is_alive(), "started" in repr(t))
        try:
            threading.current_thread().join()
        except RuntimeError as e:
            print("RuntimeError", e)
        try:
            t.start()
        except RuntimeError as e:
            print("RuntimeError", e)
        stop.set()
        t.join()
        print(t.is_alive(), "stopped" in repr(t))
    """)


def test_timer_barrier_excepthook_and_settrace():
    assert_same("""
        import sys, threading, time
        out = []
        t = threading.Timer(0.05, out.append, args=("fired",))
        t.start(); t.join()
        c = threading.Timer(5, out.append, args=("never",))
        c.start(); c.cancel(); c.join()
        print(out)

        barrier = threading.Barrier(3, action=lambda: out.append("action"))
        idx = []
        def party():
            idx.append(barrier.wait())
        ts = [threading.Thread(target=party) for _ in range(3)]
        for th in ts: th.start()
        for th in ts: th.join()
        print(sorted(idx), out[-1])
        b2 = threading.Barrier(2, timeout=0.05)
        try:
            b2.wait()
        except threading.BrokenBarrierError:
            print("broken", b2.broken)

        reports = []
        threading.excepthook = lambda args: reports.append(
            (args.exc_type.__name__, str(args.exc_value), args.thread.name))
        def fail():
            raise ValueError("boom")
        th = threading.Thread(target=fail, name="failing")
        th.start(); th.join()
        print(reports)

        calls = set()
        def tracer(frame, event, arg):
            if event == "call":
                calls.add(frame.f_code.co_name)
        def traced_target():
            pass
        threading.settrace(tracer)
        th = threading.Thread(target=traced_target)
        th.start(); th.join()
        threading.settrace(None)
        print("traced_target" in calls)
    """)


def test_locks_exclude_and_order_like_threads():
    assert_same("""
        import threading, time
        log = []
        for make in (threading.Lock, threading.RLock):
            lock = make()
            def critical(i):
                with lock:
                    log.append(("in", i)); time.sleep(0.01); log.append(("out", i))
            ts = [threading.Thread(target=critical, args=(i,)) for i in range(4)]
            for t in ts: t.start()
            for t in ts: t.join()
            pairs = [log[k:k + 2] for k in range(0, len(log), 2)]
            print(make.__name__, all(a[0] == "in" and b == ("out", a[1]) for a, b in pairs))
            log.clear()

        r = threading.RLock()
        r.acquire(); r.acquire()
        def steal():
            try:
                r.release()
            except RuntimeError as e:
                print("foreign release:", type(e).__name__)
            print("foreign acquire:", r.acquire(timeout=0.02))
        t = threading.Thread(target=steal); t.start(); t.join()
        r.release(); r.release()
        try:
            r.release()
        except RuntimeError:
            print("over-release: RuntimeError")

        l = threading.Lock()
        l.acquire()
        print("timed acquire:", l.acquire(timeout=0.02), l.acquire(blocking=False))
        def releaser():
            time.sleep(0.02); l.release()
        t = threading.Thread(target=releaser); t.start()
        print("acquire after release:", l.acquire(timeout=5)); t.join()
    """)


def test_condition_semaphore_event():
    assert_same("""
        import threading, time
        cond = threading.Condition()
        items = []
        got = []
        def consumer():
            with cond:
                cond.wait_for(lambda: items)
                got.append(items.pop())
        ts = [threading.Thread(target=consumer) for _ in range(3)]
        for t in ts: t.start()
        for i in range(3):
            time.sleep(0.005)
            with cond:
                items.append(i); cond.notify()
        for t in ts: t.join()
        print(sorted(got))
        with cond:
            print("wait_for timeout:", cond.wait_for(lambda: False, timeout=0.02))

        sem = threading.Semaphore(2)
        active = [0]; peak = [0]
        def limited():
            with sem:
                active[0] += 1; peak[0] = max(peak[0], active[0])
                time.sleep(0.01)
                active[0] -= 1
        ts = [threading.Thread(target=limited) for _ in range(6)]
        for t in ts: t.start()
        for t in ts: t.join()
        # Two holders at once is the bound, not a promise: OS threads under
        # load may run one after the other.
        print("peak within 2:", 1 <= peak[0] <= 2,
              "semaphore timeout:", threading.Semaphore(0).acquire(timeout=0.01))
        two = threading.Semaphore(2)
        print("two at once:", two.acquire(False), two.acquire(False), two.acquire(False))
        bs = threading.BoundedSemaphore(1)
        try:
            bs.release()
        except ValueError:
            print("bounded: ValueError")

        ev = threading.Event()
        print("event wait:", ev.wait(0.01), ev.is_set())
        waiters = [threading.Thread(target=lambda: got.append(ev.wait(5))) for _ in range(3)]
        for t in waiters: t.start()
        time.sleep(0.01); ev.set()
        for t in waiters: t.join()
        print(got[-3:])
    """)


def test_queues_and_thread_pool_executor():
    assert_same("""
        import queue, threading, time
        from concurrent.futures import ThreadPoolExecutor, wait

        for kind in (queue.Queue, queue.LifoQueue, queue.PriorityQueue, queue.SimpleQueue):
            q = kind()
            done = []
            def consumer():
                while (item := q.get()) is not None:
                    done.append(item)
            c = threading.Thread(target=consumer); c.start()
            for i in (3, 1, 2):
                q.put(i)
            # The end marker only after all three are taken: a LIFO or
            # priority queue would hand it out first (a head start by sleep
            # is no guarantee for an OS thread under load).
            while len(done) < 3:
                time.sleep(0.001)
            q.put(None); c.join()
            print(kind.__name__, sorted(done))
        try:
            queue.Queue().get(timeout=0.01)
        except queue.Empty:
            print("Empty")
        full = queue.Queue(maxsize=1); full.put(1)
        try:
            full.put(2, timeout=0.01)
        except queue.Full:
            print("Full")
        jq = queue.Queue()
        def worker():
            while True:
                jq.get(); time.sleep(0.001); jq.task_done()
        threading.Thread(target=worker, daemon=True).start()
        for i in range(5): jq.put(i)
        jq.join(); print("joined")

        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="pool") as ex:
            print(list(ex.map(lambda x: (time.sleep(0.001 * (5 - x)), x * x)[1], range(5))))
            names = set(ex.map(lambda _: threading.current_thread().name.split("_")[0], range(8)))
            print(names)
            bad = ex.submit(lambda: 1 / 0)
            wait([bad]); print(type(bad.exception()).__name__)
        print("executor shut down")
    """)


def test_locks_created_as_c_objects_stay_exclusive():
    # gevent#1354 / eventlet#546: locks that exist before the runtime takes
    # threading over are C locks; a C RLock records the OS thread as its
    # owner, which every coroutine of that thread shares.  Such locks (made
    # here with _thread directly, as logging's and functools.cached_property's
    # are) must neither deadlock nor let two coroutines in at once.
    assert_same("""
        import _thread, functools, logging, socket, threading, time
        for lock in (_thread.allocate_lock(), _thread.RLock()):
            log = []
            def critical(i):
                with lock:
                    log.append(i); time.sleep(0.01); log.append(i)
            ts = [threading.Thread(target=critical, args=(i,)) for i in range(3)]
            for t in ts: t.start()
            for t in ts: t.join()
            print(type(lock).__name__, all(log[k] == log[k + 1] for k in range(0, 6, 2)))

        class Slow:
            calls = 0
            @functools.cached_property
            def value(self):
                Slow.calls += 1
                time.sleep(0.02)
                return 42
        s = Slow()
        ts = [threading.Thread(target=lambda: s.value) for _ in range(3)]
        for t in ts: t.start()
        for t in ts: t.join()
        # 3.11's cached_property locks: one computation.  3.12 dropped the
        # lock: how many of the three race depends on OS timing.
        print("cached_property computed",
              Slow.calls if sys.version_info < (3, 12) else 1 <= Slow.calls <= 3)

        # A logging handler whose stream blocks mid-write while holding the
        # handler's lock: other threads logging must wait, not interleave.
        a, b = socket.socketpair()
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        stream = a.makefile("w", buffering=1)
        logger = logging.getLogger("contended")
        logger.addHandler(logging.StreamHandler(stream))
        logger.propagate = False
        def spam(i):
            for _ in range(20):
                logger.warning("%d" % i * 200)
        ts = [threading.Thread(target=spam, args=(i,)) for i in range(3)]
        for t in ts: t.start()
        received = b""
        while received.count(b"\\n") < 60:
            received += b.recv(65536)
        for t in ts: t.join()
        lines = received.decode().splitlines()
        print(len(lines), all(len(set(line)) == 1 and len(line) == 200 for line in lines))
    """)


def test_runs_every_thread_in_one_os_thread():
    # Besides the program's one OS thread there are interpose's preemption
    # monitor (docs/time-slicing.md, named ip-preempt) and its diagnostics
    # thread (docs/diagnostics.md, named interpose-diag).
    lines = check_ok(run_hooked("""
        import os, threading, time
        HELPERS = {"ip-preempt", "interpose-diag"}
        def os_threads():  # the program's own
            names = [open(f"/proc/self/task/{t}/comm").read().strip()
                     for t in os.listdir("/proc/self/task")]
            return sum(n not in HELPERS for n in names)
        counts = []
        gate = threading.Event()
        def body():
            counts.append(os_threads())
            gate.wait()
        ts = [threading.Thread(target=body) for _ in range(300)]
        for t in ts: t.start()
        peak = threading.active_count()
        gate.set()
        for t in ts: t.join()
        print(peak, max(counts), os_threads())
    """))
    assert lines == ["301 1 1"]


def test_native_threads_keep_os_threads_with_a_scheduler_each():
    # With INTERPOSE_THREADS=native every thread is an OS thread with a
    # scheduler of its own: go() spawns a coroutine there (an OS thread in
    # the plain run), and locks, conditions, events and queues work across
    # the OS threads.
    out = assert_same("""
        import os, queue, threading, time
        q = queue.Queue()
        ready = threading.Event()
        cond = threading.Condition()
        state = {"n": 0}
        lock = threading.Lock()
        def worker(i):
            ticks = []
            ticker = go(lambda: [ticks.append(time.sleep(0.001)) for _ in range(5)])
            ready.wait()
            with lock:
                state["n"] += 1
            with cond:
                cond.notify_all()
            q.put((i, len(os.listdir("/proc/self/task")) > 1))
            ticker.join()
            q.put(("ticks", len(ticks)))
            if HOOKED:
                assert interpose.current() is not None and interpose.statistics().switches > 0
        ts = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in ts: t.start()
        ready.set()
        with cond:
            cond.wait_for(lambda: state["n"] == 4, timeout=20)
        results = sorted((q.get(timeout=20) for _ in range(8)), key=str)
        for t in ts: t.join()
        print(state["n"], results)
    """, env={"INTERPOSE_THREADS": "native"})
    assert out == ["4 [('ticks', 5), ('ticks', 5), ('ticks', 5), ('ticks', 5), "
                   "(0, True), (1, True), (2, True), (3, True)]"]


@pytest.mark.skipif(sys.version_info < (3, 13),
                    reason="_thread._ThreadHandle and start_joinable_thread"
                           " are new in 3.13")
@pytest.mark.timeout(60)
def test_start_joinable_thread_handles_as_cpython():
    # CPython's test_thread.test_start_duplicate_handle: a handle made with
    # _thread._ThreadHandle() starts one thread and refuses a second; the
    # same for a handle of threading's and for the default one.
    assert_same("""
        import _thread, threading
        def start_twice(handle):
            lock = _thread.allocate_lock()
            lock.acquire()
            ran = []
            def func():
                with lock:
                    ran.append(1)
            handle = _thread.start_joinable_thread(func, handle=handle)
            try:
                _thread.start_joinable_thread(func, handle=handle)
            except RuntimeError as e:
                second = f"{type(e).__name__}: {e}"
            else:
                second = "started again"
            lock.release()
            handle.join()
            return second, ran, handle.is_done()
        print(start_twice(_thread._ThreadHandle()))
        print(start_twice(threading._ThreadHandle()))
        print(start_twice(None))
    """)
