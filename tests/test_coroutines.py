"""Coroutines: spawn/join results and exceptions, names and ids, current(),
argument checks, run(), uncaught-exception reporting through
threading.excepthook, SystemExit/KeyboardInterrupt forwarding to the main
coroutine, trace/profile inheritance, and per-coroutine contextvars and
threading.local state."""
import contextvars
import functools
import math
import sys
import threading
import time
import traceback

import pytest

import interpose
from support.snippets import run_snippet
from support.probes import live_thread_states, wait_all_blocked, in_epoll_wait

pytestmark = pytest.mark.timeout(30)

SHORT = 0.05
LONG = 60


def _elapsed_since(t0):
    return time.monotonic() - t0


# ---- spawn / join ------------------------------------------------------


def test_join_returns_result_with_args_and_kwargs():
    def main():
        def add(a, b, *, scale=1):
            interpose.sleep(0)
            return (a + b) * scale

        cs = [interpose.spawn(functools.partial(add, scale=10), i, 1) for i in range(5)]
        assert [c.join() for c in cs] == [10, 20, 30, 40, 50]
        assert all(c.done() for c in cs)
        assert cs[0].join() == 10  # joining again returns the same result

    assert interpose.run(main) is None


def test_spawn_does_not_run_until_spawner_waits():
    def main():
        log = []
        c = interpose.spawn(log.append, "ran")
        assert log == []
        assert not c.done()
        c.join()
        assert log == ["ran"]

    interpose.run(main)


def test_coroutines_start_in_spawn_order():
    def main():
        log = []
        cs = [interpose.spawn(log.append, i) for i in range(10)]
        for c in cs:
            c.join()
        assert log == list(range(10))

    interpose.run(main)


def test_spawn_keeps_name_and_stack_size_and_passes_other_kwargs():
    def main():
        def f(*args, **kwargs):
            return args, kwargs

        c = interpose.spawn(functools.partial(f, key="v"), 1, 2, name="n", stack_size=1 << 20)
        assert c.name == "n"
        assert c.join() == ((1, 2), {"key": "v"})

    interpose.run(main)


def raiser_function():
    interpose.sleep(0)
    raise ValueError("from the coroutine")


def test_join_reraises_exception_with_original_traceback():
    def main():
        c = interpose.spawn(raiser_function)
        with pytest.raises(ValueError, match="from the coroutine") as info:
            c.join()
        names = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
        assert "raiser_function" in names
        assert c.done()
        # Joining again raises the same exception object.
        with pytest.raises(ValueError) as again:
            c.join()
        assert again.value is info.value

    interpose.run(main)


def test_join_timeout_raises_timeouterror_not_early():
    def main():
        ev = interpose.Event()
        c = interpose.spawn(ev.wait)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            c.join(timeout=SHORT)
        assert _elapsed_since(t0) >= SHORT
        assert not c.done()
        ev.set()
        assert c.join(timeout=LONG) is True

    interpose.run(main)


def test_join_timeout_zero_on_finished_coroutine_returns_result():
    def main():
        c = interpose.spawn(lambda: "r")
        c.join()
        assert c.join(timeout=0) == "r"

    interpose.run(main)


def test_join_by_several_coroutines_all_get_the_result():
    def main():
        ev = interpose.Event()

        def target():
            ev.wait()
            return "shared"

        t = interpose.spawn(target)
        joiners = [interpose.spawn(t.join) for _ in range(3)]
        wait_all_blocked(joiners)
        ev.set()
        assert [j.join() for j in joiners] == ["shared"] * 3

    interpose.run(main)


def test_coroutine_cannot_join_itself():
    def main():
        def selfish():
            with pytest.raises(RuntimeError):
                interpose.current().join()
            return "ok"

        assert interpose.spawn(selfish).join() == "ok"

    interpose.run(main)


def test_joining_the_main_coroutine_raises_runtimeerror():
    def main():
        main_coro = interpose.current()
        with pytest.raises(RuntimeError):
            main_coro.join()

        def join_main():
            with pytest.raises(RuntimeError):
                main_coro.join()
            with pytest.raises(RuntimeError):
                main_coro.join(timeout=0)
            return "ok"

        assert interpose.spawn(join_main).join() == "ok"

    interpose.run(main)




@pytest.mark.parametrize("outcome", ["result", "exception"])
def test_join_from_plain_os_thread(outcome):
    """A plain thread (no scheduler of its own until it waits) joins a
    coroutine running on the main thread, and is parked in join() when the
    coroutine finishes."""
    def main():
        ev = interpose.Event()

        def target():
            ev.wait()
            if outcome == "exception":
                raise KeyError("across")
            return "across"

        c = interpose.spawn(target)
        wait_all_blocked([c])
        out = []
        info = {}

        def joiner():
            info["tid"] = threading.get_native_id()
            try:
                out.append(c.join())
            except KeyError as exc:
                out.append(exc)

        t = threading.Thread(target=joiner, daemon=True)
        t.start()
        end = time.monotonic() + 20
        while "tid" not in info or not in_epoll_wait(info["tid"]):
            assert time.monotonic() < end, "the joining thread never parked"
            interpose.sleep(0.001)
        ev.set()
        # Park the main coroutine so target can run (t.join() alone would
        # block this OS thread and with it the coroutine).
        if outcome == "exception":
            with pytest.raises(KeyError):
                c.join()
        else:
            assert c.join() == "across"
        t.join(20)
        assert not t.is_alive()
        if outcome == "exception":
            assert isinstance(out[0], KeyError)
        else:
            assert out == ["across"]

    interpose.run(main)


# ---- names, ids, current() ---------------------------------------------


def test_ids_are_unique_and_increasing_and_default_names_use_them():
    def main():
        cs = [interpose.spawn(lambda: None) for _ in range(5)]
        ids = [c.id for c in cs]
        assert all(isinstance(i, int) and i > 0 for i in ids)
        assert ids == sorted(ids)
        assert len(set(ids)) == len(ids)
        assert interpose.current().id not in ids
        for c in cs:
            assert c.name == f"coroutine-{c.id}"
            c.join()
        # Finished coroutines' ids are never reused.
        later = interpose.spawn(lambda: None)
        assert later.id > max(ids)
        later.join()

    interpose.run(main)


def test_custom_name():
    def main():
        c = interpose.spawn(lambda: interpose.current().name, name="worker-a")
        assert c.name == "worker-a"
        assert c.join() == "worker-a"
        assert "worker-a" in repr(c)

    interpose.run(main)


def test_current_inside_is_the_spawned_coroutine():
    def main():
        c = interpose.spawn(interpose.current)
        assert c.join() is c
        assert interpose.current() is not c

    interpose.run(main)


def test_current_outside_run_is_the_thread_main_coroutine():
    main_coro = interpose.current()
    assert main_coro is interpose.current()
    assert main_coro.name == "main"
    assert not main_coro.done()
    assert main_coro.id > 0

    def main():
        assert interpose.current() is main_coro
        inner = interpose.spawn(interpose.current).join()
        assert inner is not main_coro
        assert inner.id != main_coro.id

    interpose.run(main)


def test_each_os_thread_has_its_own_main_coroutine():
    """Threads started one after another often get the same thread ident
    (glibc reuses the stack of a finished thread); each one is a new
    thread all the same and must get a main coroutine of its own."""
    mains = []

    def body():
        mains.append((interpose.current().id, interpose.current()))
        interpose.sleep(0)

    for _ in range(5):
        t = threading.Thread(target=body)
        t.start()
        t.join()
    ids = [i for i, _ in mains]
    assert len(set(ids)) == 5, f"main coroutine ids per thread: {ids}"
    assert interpose.current().id not in ids


# ---- spawn argument checks ---------------------------------------------


@pytest.mark.parametrize("fn", [42, None, "name"])
def test_spawn_non_callable_raises_typeerror(fn):
    with pytest.raises(TypeError):
        interpose.spawn(fn)


@pytest.mark.parametrize("size", [0, 1, 4096, 8192])
def test_spawn_stack_size_too_small_raises_valueerror(size):
    with pytest.raises(ValueError):
        interpose.spawn(lambda: None, stack_size=size)


@pytest.mark.parametrize("size", ["1M", 1.5e6, True])
def test_spawn_stack_size_not_int_raises_typeerror(size):
    with pytest.raises(TypeError):
        interpose.spawn(lambda: None, stack_size=size)


def test_spawn_with_large_stack_runs():
    def main():
        def deep(n):
            return 0 if n == 0 else 1 + deep(n - 1)

        c = interpose.spawn(deep, 500, stack_size=4 * 1024 * 1024)
        assert c.join() == 500

    interpose.run(main)


def test_failed_spawn_leaves_nothing_behind():
    before = interpose.statistics().coroutines_alive
    with pytest.raises(ValueError):
        interpose.spawn(lambda: None, stack_size=1)
    assert interpose.statistics().coroutines_alive == before


# ---- sleep -------------------------------------------------------------


def test_sleeps_end_in_deadline_order_and_never_early():
    def main():
        woke = []

        def sleeper(seconds):
            t0 = time.monotonic()
            interpose.sleep(seconds)
            elapsed = _elapsed_since(t0)
            woke.append(seconds)
            return elapsed

        durations = [0.06, 0.02, 0.04, 0.0]
        cs = [interpose.spawn(sleeper, d) for d in durations]
        for c, d in zip(cs, durations):
            assert c.join() >= d
        assert woke == sorted(durations)

    interpose.run(main)


def test_sleep_zero_lets_other_coroutines_run():
    def main():
        log = []
        c = interpose.spawn(log.append, "other")
        interpose.sleep(0)
        assert log == ["other"]
        c.join()

    interpose.run(main)


@pytest.mark.parametrize("bad,error", [
    (-1, ValueError), (math.nan, ValueError), ("1", TypeError),
    (None, TypeError), (True, TypeError),
])
def test_sleep_bad_argument(bad, error):
    with pytest.raises(error):
        interpose.sleep(bad)


# ---- run() -------------------------------------------------------------


def test_run_returns_result_and_passes_arguments():
    assert interpose.run(lambda a, b=0: a * b, 6, b=7) == 42


def test_run_propagates_exception():
    def main():
        raise LookupError("out of run")

    with pytest.raises(LookupError, match="out of run"):
        interpose.run(main)


@pytest.mark.parametrize("outcome", ["return", "raise"])
def test_run_cancels_leftover_coroutines(outcome):
    leftovers = {}
    seen = []

    def main():
        def parked():
            try:
                interpose.sleep(LONG)
            except interpose.Cancelled:
                seen.append("cancelled")
                raise

        leftovers["parked"] = interpose.spawn(parked)
        wait_all_blocked([leftovers["parked"]])
        leftovers["unstarted"] = interpose.spawn(seen.append, "unstarted ran")
        if outcome == "raise":
            raise KeyError("main failed")
        return "result"

    if outcome == "raise":
        with pytest.raises(KeyError):
            interpose.run(main)
    else:
        assert interpose.run(main) == "result"
    assert seen == ["cancelled"]
    for c in leftovers.values():
        assert c.done()
        with pytest.raises(interpose.Cancelled):
            c.join()
    assert interpose.statistics().coroutines_alive == 0


def test_run_frees_thread_states_of_finished_coroutines():
    baseline = live_thread_states()

    def main():
        ev = interpose.Event()
        cs = [interpose.spawn(ev.wait) for _ in range(10)]
        wait_all_blocked(cs)
        assert live_thread_states() == baseline + 10
        ev.set()
        for c in cs:
            c.join()
        interpose.spawn(interpose.sleep, LONG)  # left over, cancelled by run

    interpose.run(main)
    interpose.sleep(0)  # the hub reclaims the last dead coroutine
    assert live_thread_states() == baseline


def test_run_inside_spawned_coroutine_raises_runtimeerror():
    def main():
        def nested():
            with pytest.raises(RuntimeError):
                interpose.run(lambda: "inner")
            return "ok"

        assert interpose.spawn(nested).join() == "ok"

    interpose.run(main)


def test_run_inside_run_raises_runtimeerror():
    def main():
        with pytest.raises(RuntimeError):
            interpose.run(lambda: "inner")
        return "outer"

    assert interpose.run(main) == "outer"
    assert interpose.run(lambda: "again") == "again"


def test_run_in_a_plain_thread():
    out = []

    def body():
        def main():
            cs = [interpose.spawn(lambda i=i: i * i) for i in range(4)]
            return [c.join() for c in cs]

        out.append(interpose.run(main))

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive()
    assert out == [[0, 1, 4, 9]]


# ---- uncaught exceptions -----------------------------------------------


def test_uncaught_exception_in_unjoined_coroutine_goes_to_excepthook(monkeypatch):
    reports = []
    monkeypatch.setattr(threading, "excepthook", reports.append)

    def main():
        c = interpose.spawn(raiser_function, name="unjoined")
        wait_all_blocked([c])
        assert c.done()
        assert len(reports) == 1
        args = reports[0]
        assert args.thread is c
        assert args.exc_type is ValueError
        assert isinstance(args.exc_value, ValueError)
        assert args.exc_traceback is args.exc_value.__traceback__
        # A later join still raises it.
        with pytest.raises(ValueError):
            c.join()
        assert len(reports) == 1

    interpose.run(main)


def test_exception_of_joined_coroutine_is_not_reported(monkeypatch):
    reports = []
    monkeypatch.setattr(threading, "excepthook", reports.append)

    def main():
        c = interpose.spawn(raiser_function)
        with pytest.raises(ValueError):
            c.join()  # joining before it fails: the joiner handles it

    interpose.run(main)
    assert reports == []


def test_cancelled_leftover_is_not_reported(monkeypatch):
    reports = []
    monkeypatch.setattr(threading, "excepthook", reports.append)

    def main():
        c = interpose.spawn(interpose.sleep, LONG)
        wait_all_blocked([c])

    interpose.run(main)
    assert reports == []


def test_default_excepthook_prints_coroutine_name_and_traceback():
    proc = run_snippet("""
        import interpose

        def failing_body():
            raise ZeroDivisionError("unjoined failure")

        def main():
            interpose.spawn(failing_body, name="reporter")
            interpose.sleep(0.01)
            print("main went on", flush=True)

        interpose.run(main)
    """, timeout=20)
    assert proc.returncode == 0, proc.stderr
    assert "main went on" in proc.stdout
    assert "Exception in thread reporter" in proc.stderr
    assert "failing_body" in proc.stderr
    assert "ZeroDivisionError: unjoined failure" in proc.stderr


# ---- SystemExit / KeyboardInterrupt ------------------------------------

_FORWARD_SNIPPET = """
import interpose

def bad():
    raise {exc}

def main():
    other = interpose.spawn(interpose.sleep, 60)
    ev = interpose.Event()
    interpose.spawn(bad)
    {wait}
    print("main was not interrupted", flush=True)

try:
    interpose.run(main)
except {catch} as e:
    print("caller caught", type(e).__name__, getattr(e, "code", ""), flush=True)
print("after run", interpose.statistics().coroutines_alive, flush=True)
"""

_MAIN_WAITS = {
    "sleep": "interpose.sleep(60)",
    "event": "ev.wait()",
    "join": "other.join()",
    "lock": "lk = interpose.Lock(); lk.acquire(); lk.acquire()",
    "queue": "interpose.Queue().get()",
}


@pytest.mark.parametrize("wait", sorted(_MAIN_WAITS))
@pytest.mark.parametrize("exc,catch,shown", [
    ("SystemExit(7)", "SystemExit", "caller caught SystemExit 7"),
    ("KeyboardInterrupt()", "KeyboardInterrupt", "caller caught KeyboardInterrupt"),
])
def test_systemexit_and_keyboardinterrupt_in_coroutine_reach_run_caller(
        wait, exc, catch, shown):
    code = _FORWARD_SNIPPET.format(exc=exc, catch=catch, wait=_MAIN_WAITS[wait])
    proc = run_snippet(code, timeout=20)
    assert proc.returncode == 0, proc.stderr
    assert "main was not interrupted" not in proc.stdout
    assert shown in proc.stdout
    assert "after run 0" in proc.stdout


def test_systemexit_in_joined_coroutine_reaches_joiner():
    proc = run_snippet("""
        import interpose

        def bad():
            interpose.sleep(0)
            raise SystemExit(3)

        def main():
            c = interpose.spawn(bad)
            try:
                c.join()
            except SystemExit as e:
                print("join raised SystemExit", e.code, flush=True)
            interpose.sleep(0)
            print("main continued", flush=True)

        interpose.run(main)
    """, timeout=20)
    assert proc.returncode == 0, proc.stderr
    assert "join raised SystemExit 3" in proc.stdout
    assert "main continued" in proc.stdout


def test_systemexit_in_coroutine_after_main_was_already_woken_is_not_lost():
    """The main coroutine is woken (Event set) just before the waking
    coroutine raises SystemExit, so the interrupt finds it already runnable.
    Acceptable: ev.wait() raises SystemExit, or run() raises it when main
    returns.  Unacceptable: run() returns normally and the SystemExit pops
    out of some later, unrelated wait."""
    proc = run_snippet("""
        import interpose

        def bad(ev):
            ev.set()
            raise SystemExit(4)

        def main():
            ev = interpose.Event()
            interpose.spawn(bad, ev)
            ev.wait()
            return "main returned"

        try:
            print("run returned:", interpose.run(main), flush=True)
        except SystemExit as e:
            print("run raised SystemExit", e.code, flush=True)
        try:
            interpose.sleep(0)
            print("later wait ok", flush=True)
        except SystemExit as e:
            print("later unrelated wait raised SystemExit", e.code, flush=True)
    """, timeout=20)
    assert proc.returncode == 0, proc.stderr
    assert "run raised SystemExit 4" in proc.stdout, proc.stdout
    assert "later wait ok" in proc.stdout, proc.stdout


def test_uncaught_systemexit_in_coroutine_exits_the_process_with_its_code():
    proc = run_snippet("""
        import interpose

        def main():
            interpose.spawn(lambda: (_ for _ in ()).throw(SystemExit(9)))
            interpose.Event().wait()
            print("not reached", flush=True)

        interpose.run(main)
    """, timeout=20)
    assert proc.returncode == 9, proc.stderr
    assert "not reached" not in proc.stdout


def test_systemexit_in_coroutine_on_second_thread_with_reused_ident():
    """Two threads one after the other (glibc usually reuses the first
    one's ident for the second); SystemExit in a coroutine must reach the
    main coroutine of the thread it ran on, every time."""
    proc = run_snippet("""
        import threading
        import interpose

        def bad():
            raise SystemExit(5)

        def body(label):
            def main():
                interpose.spawn(bad)
                try:
                    interpose.sleep(10)
                except SystemExit as e:
                    print(label, "got SystemExit", e.code, flush=True)
                    return
                print(label, "lost SystemExit", flush=True)
            interpose.run(main)

        for label in ("first", "second", "third"):
            t = threading.Thread(target=body, args=(label,))
            t.start()
            t.join()
    """, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "lost" not in proc.stdout, proc.stdout
    for label in ("first", "second", "third"):
        assert f"{label} got SystemExit 5" in proc.stdout, proc.stdout


# ---- trace / profile inheritance ----------------------------------------


def traced_target():
    return "traced"


def test_threading_settrace_is_inherited_by_spawned_coroutines():
    calls = []

    def tracer(frame, event, arg):
        if event == "call":
            calls.append(frame.f_code.co_name)
        return None

    def main():
        def coroutine_body():
            assert sys.gettrace() is tracer
            return traced_target()

        return interpose.spawn(coroutine_body).join()

    threading.settrace(tracer)
    try:
        assert interpose.run(main) == "traced"
    finally:
        threading.settrace(None)
    assert "traced_target" in calls
    assert "main" not in calls  # the spawner's own frames are not traced
    assert sys.gettrace() is not tracer


def test_threading_setprofile_is_inherited_by_spawned_coroutines():
    calls = []

    def profiler(frame, event, arg):
        if event == "call":
            calls.append(frame.f_code.co_name)

    def main():
        def coroutine_body():
            assert sys.getprofile() is profiler
            return traced_target()

        return interpose.spawn(coroutine_body).join()

    threading.setprofile(profiler)
    try:
        assert interpose.run(main) == "traced"
    finally:
        threading.setprofile(None)
    assert "traced_target" in calls
    assert sys.getprofile() is not profiler


def test_no_trace_function_in_coroutines_by_default():
    def main():
        return interpose.spawn(sys.gettrace).join(), interpose.spawn(sys.getprofile).join()

    assert interpose.run(main) == (None, None)


# ---- per-coroutine state -------------------------------------------------

_var = contextvars.ContextVar("_var", default="unset")


def test_spawned_coroutine_sees_copy_of_spawner_context():
    def main():
        _var.set("outer")

        def child():
            seen = _var.get()
            _var.set("inner")
            interpose.sleep(0)
            return seen, _var.get()

        c = interpose.spawn(child)
        _var.set("changed after spawn")  # the copy was taken at spawn()
        assert c.join() == ("outer", "inner")
        assert _var.get() == "changed after spawn"

    interpose.run(contextvars.copy_context().run, main)
    assert _var.get() == "unset"


def test_contextvars_are_per_coroutine():
    def main():
        start = interpose.Event()

        def worker(i):
            _var.set(f"worker-{i}")
            start.wait()  # every worker has set its value before any reads
            interpose.sleep(0)
            return _var.get()

        cs = [interpose.spawn(worker, i) for i in range(5)]
        wait_all_blocked(cs)
        start.set()
        assert [c.join() for c in cs] == [f"worker-{i}" for i in range(5)]
        assert _var.get() == "unset"

    interpose.run(contextvars.copy_context().run, main)


def test_threading_local_is_per_coroutine():
    local = threading.local()

    def main():
        local.value = "main"
        start = interpose.Event()

        def worker(i):
            assert not hasattr(local, "value")  # a fresh thread state
            local.value = i
            start.wait()
            interpose.sleep(0)
            return local.value

        cs = [interpose.spawn(worker, i) for i in range(5)]
        wait_all_blocked(cs)
        start.set()
        assert [c.join() for c in cs] == list(range(5))
        assert local.value == "main"

    interpose.run(main)


def test_exception_state_is_per_coroutine():
    def main():
        gate = interpose.Event()

        def handler(name):
            try:
                raise KeyError(name)
            except KeyError:
                gate.wait()  # parked inside the except block
                return sys.exc_info()[1].args[0]

        cs = [interpose.spawn(handler, n) for n in ("a", "b")]
        wait_all_blocked(cs)
        assert sys.exc_info() == (None, None, None)
        gate.set()
        assert [c.join() for c in cs] == ["a", "b"]

    interpose.run(main)
