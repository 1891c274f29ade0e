"""The OS-thread contracts that libraries check, kept by the threads that
`interpose run` turns into coroutines (issue #19, issue #13 item 6): idents
that are pthread handles, main-thread-only APIs, the C RLock, thread states
found by ident, and select's fd sets across a signal.

Every test runs the same snippet under plain python (OS threads) and under
`python -m interpose run`, and the two must print the same lines.  Idents
differ between runs by nature, so snippets print facts about them."""
import pytest

from support.snippets import assert_same, check_ok, run_both, run_hooked

pytestmark = pytest.mark.timeout(120)

# ctypes bindings of the pthread functions the snippets call with idents.
PTHREAD = """
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
libc.pthread_setname_np.argtypes = [ctypes.c_ulong, ctypes.c_char_p]
libc.pthread_getname_np.argtypes = [ctypes.c_ulong, ctypes.c_char_p,
                                    ctypes.c_size_t]
libc.pthread_kill.argtypes = [ctypes.c_ulong, ctypes.c_int]

def getname(ident):
    buf = ctypes.create_string_buffer(16)
    r = libc.pthread_getname_np(ident, buf, 16)
    return errno.errorcode.get(r, r), buf.value.decode()

def setname(ident, name):
    r = libc.pthread_setname_np(ident, name.encode())
    return errno.errorcode.get(r, r)
"""


def test_pthread_kill_zero_while_alive_and_after_end():
    # Regression (issue #19, 1): signal.pthread_kill(converted ident, 0)
    # segfaulted.  After the thread ended, interpose answers ESRCH; glibc
    # 2.34+ answers 0 for a thread that has exited (its bug 19193: the
    # descriptor may be reused, so it sends nothing) and older glibc ESRCH,
    # so that one line is checked apart.
    code = """
        import signal, threading
        go = threading.Event()
        seen = []
        def body():
            seen.append(signal.pthread_kill(threading.get_ident(), 0))
            go.wait()
        t = threading.Thread(target=body)
        t.start()
        print("alive", signal.pthread_kill(t.ident, 0), seen)
        go.set()
        t.join()
        try:
            signal.pthread_kill(t.ident, 0)
            print("after end: 0")
        except ProcessLookupError:
            print("after end: ESRCH")
        print("main", signal.pthread_kill(threading.get_ident(), 0))
    """
    hooked, plain = run_both(code)
    hooked_lines, plain_lines = check_ok(hooked, "hooked"), check_ok(plain, "plain")
    after = [line for line in hooked_lines if line.startswith("after end")]
    assert after == ["after end: ESRCH"], hooked.stdout
    assert [line for line in plain_lines if line.startswith("after end")][0] in (
        "after end: 0", "after end: ESRCH")
    strip = lambda lines: [x for x in lines if not x.startswith("after end")]
    assert strip(hooked_lines) == strip(plain_lines) == [
        "alive None [None]", "main None"]


def test_pthread_setname_and_getname_per_thread():
    # Regression (issue #19, 1): pthread_setname_np(ident, ...) segfaulted;
    # each thread has a name of its own, set from itself or from another.
    assert_same(PTHREAD + """
import threading
main_name = getname(threading.get_ident())
gate, named = threading.Event(), threading.Barrier(3)
names = {}
def body(i):
    me = threading.get_ident()
    names[i] = [setname(me, f"worker-{i}"), getname(me)]
    named.wait()
    gate.wait()
    names[i].append(getname(me))
threads = [threading.Thread(target=body, args=(i,)) for i in range(2)]
for t in threads:
    t.start()
named.wait()
print(setname(threads[1].ident, "renamed-1"), getname(threads[1].ident))
print(setname(threads[0].ident, "x" * 16), getname(threads[0].ident))
buf = ctypes.create_string_buffer(8)
r = libc.pthread_getname_np(threads[0].ident, buf, 8)
print("short buffer", errno.errorcode.get(r, r))
gate.set()
for t in threads:
    t.join()
print(sorted(names.items()))
print(getname(threading.get_ident()) == main_name)
""", prelude=False)


def test_main_thread_only_apis_raise_in_other_threads():
    # Regression (issue #19, 2): signal.signal and set_wakeup_fd succeeded
    # in every converted thread.  And (issue #13, 6) the functions keep
    # their own module: they are not replaced.
    assert_same("""
        import inspect, signal, threading, _thread
        print(signal.signal.__module__, signal.getsignal.__module__,
              threading.get_ident.__module__, _thread.get_ident.__module__,
              threading.get_ident is _thread.get_ident)
        # CPython's test_signal: every Python-level function of the signal
        # module says so (set_wakeup_fd is one under interpose).
        print([name for name in dir(signal)
               if inspect.isroutine(getattr(signal, name))
               and not inspect.isbuiltin(getattr(signal, name))
               and getattr(signal, name).__module__ != "signal"])
        out = []
        def body():
            me = threading.current_thread()
            out.append((me is threading.main_thread(),
                        threading.main_thread().ident != threading.get_ident()))
            for call in (lambda: signal.signal(signal.SIGUSR1, signal.SIG_IGN),
                         lambda: signal.set_wakeup_fd(-1),
                         lambda: signal.getsignal(signal.SIGUSR1)):
                try:
                    out.append(repr(call()))
                except ValueError as e:
                    out.append(f"ValueError: {e}")
        t = threading.Thread(target=body)
        t.start()
        t.join()
        for line in out:
            print(line)
        print(threading.current_thread() is threading.main_thread())
        print(signal.signal(signal.SIGUSR1, signal.SIG_IGN))
        print(signal.set_wakeup_fd(-1), signal.getsignal(signal.SIGUSR1))
    """)


def test_two_asyncio_loops_in_threads_with_signal_handlers():
    # Regression (issue #19): two event loops in two converted threads took
    # over the same process-wide wakeup fd.  Each loop also does real I/O.
    assert_same("""
        import asyncio, signal, socket, threading
        results = []
        def loop_thread(i):
            async def main():
                loop = asyncio.get_running_loop()
                try:
                    loop.add_signal_handler(signal.SIGUSR1, lambda: None)
                    added = "added"
                except (RuntimeError, ValueError) as e:
                    added = f"{type(e).__name__}: {e}"
                a, b = socket.socketpair()
                a.setblocking(False)
                b.setblocking(False)
                await loop.sock_sendall(a, b"ping %d" % i)
                data = await loop.sock_recv(b, 100)
                a.close()
                b.close()
                await asyncio.sleep(0.01)
                return added, data.decode()
            results.append((i, asyncio.run(main())))
        threads = [threading.Thread(target=loop_thread, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for r in sorted(results):
            print(r)
        async def main_loop():
            loop = asyncio.get_running_loop()
            got = asyncio.Event()
            loop.add_signal_handler(signal.SIGUSR1, got.set)
            signal.raise_signal(signal.SIGUSR1)
            await asyncio.wait_for(got.wait(), 10)
            loop.remove_signal_handler(signal.SIGUSR1)
            return "main loop got the signal"
        print(asyncio.run(main_loop()))
    """)


def test_threading_rlock_is_the_c_rlock_per_thread():
    # Regression (issue #19, 3): threading.RLock() was the pure-Python RLock.
    assert_same("""
        import threading, _thread, time
        r = threading.RLock()
        print(type(r).__module__, type(r).__name__, threading._CRLock is _thread.RLock)
        held, release = threading.Event(), threading.Event()
        out = []
        def owner():
            with r:
                with r:
                    out.append(("owner", r._is_owned(), r._recursion_count()))
                    held.set()
                    release.wait()
        def other():
            held.wait()
            out.append(("other", r._is_owned(), r._recursion_count(),
                        r.acquire(blocking=False), r.acquire(timeout=0.05)))
            try:
                r.release()
            except RuntimeError as e:
                out.append(("release by non-owner", str(e)))
            release.set()
            out.append(("waited", r.acquire(timeout=30)))   # cooperative wait
            out.append(("now", r._is_owned(), r._recursion_count()))
            r.release()
        ts = [threading.Thread(target=owner), threading.Thread(target=other)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        for line in out:
            print(line)
        print(r._is_owned(), r.acquire(blocking=False), r._recursion_count())
        r.release()
        # Condition on the C RLock, and the other C lock types.
        cond = threading.Condition(threading.RLock())
        box = []
        def producer():
            with cond:
                box.append("item")
                cond.notify()
        with cond:
            t = threading.Thread(target=producer)
            t.start()
            print(cond.wait_for(lambda: box, timeout=30), box)
        t.join()
        lock = _thread.allocate_lock()
        print(type(lock).__module__, lock.acquire(), lock.acquire(False))
        lock.release()
    """)


def test_rlock_acquired_in_a_signal_handler_in_the_main_thread():
    assert_same("""
        import os, signal, threading
        r = threading.RLock()
        seen = []
        def handler(signum, frame):
            with r:
                seen.append((threading.current_thread() is threading.main_thread(),
                             r._recursion_count()))
        signal.signal(signal.SIGUSR1, handler)
        done = threading.Event()
        def worker():
            with r:   # contends with the main thread before the signal
                pass
            done.set()
        with r:
            t = threading.Thread(target=worker)
            t.start()
            os.kill(os.getpid(), signal.SIGUSR1)
            print(seen, done.is_set())
        t.join()
        print(seen, done.is_set())
    """)


def test_set_async_exc_reaches_a_converted_thread():
    # Regression (issue #13, 6): no thread state was found for the ident.
    assert_same("""
        import ctypes, threading, time
        class Stop(Exception):
            pass
        started = threading.Event()
        out = []
        def body():
            started.set()
            try:
                while True:
                    time.sleep(0.005)
            except Stop:
                out.append("stopped by SetAsyncExc")
        t = threading.Thread(target=body)
        t.start()
        started.wait()
        n = ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(t.ident), ctypes.py_object(Stop))
        t.join(30)
        print(n, out, t.is_alive())
        print(ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(t.ident), ctypes.py_object(Stop)))
    """)


def test_dummy_thread_of_start_new_thread_stays_in_active():
    # Regression (issue #13, 6): the _DummyThread registered by
    # current_thread() left threading._active when its thread ended.
    assert_same("""
        import _thread, threading, time
        done = threading.Event()
        seen = []
        def raw():
            me = threading.current_thread()
            seen.append((threading.get_ident(), type(me).__name__, me.daemon))
            done.set()
        _thread.start_new_thread(raw, ())
        done.wait()
        while _thread._count():
            time.sleep(0.01)
        ident, kind, daemon = seen[0]
        print(kind, daemon, ident in threading._active,
              threading._active.get(ident).__class__.__name__)
    """)


def test_current_frames_and_faulthandler_list_each_thread():
    assert_same("""
        import faulthandler, re, sys, tempfile, threading
        gate, ready = threading.Event(), threading.Barrier(4)
        def parked():
            ready.wait()
            gate.wait()
        ts = [threading.Thread(target=parked) for _ in range(3)]
        for t in ts:
            t.start()
        ready.wait()
        idents = {t.ident for t in threading.enumerate()}
        frames = sys._current_frames()
        print(idents <= set(frames), len(idents))
        print(sorted(f.f_code.co_name for i, f in frames.items() if i in idents))
        with tempfile.TemporaryFile("w+") as f:
            faulthandler.dump_traceback(f, all_threads=True)
            f.seek(0)
            dumped = {int(x, 16) for x in re.findall(r"hread (0x[0-9a-f]+)", f.read())}
        print(idents <= dumped)
        gate.set()
        for t in ts:
            t.join()
    """)


def test_pthread_kill_interrupts_the_threads_blocking_call():
    # A signal sent to a converted thread interrupts that thread's blocking
    # call with EINTR (read through ctypes, which does not retry), and its
    # Python handler runs in the main thread.
    assert_same(PTHREAD + """
import os, signal, threading, time
r, w = os.pipe()
hits = []
signal.signal(signal.SIGUSR1,
              lambda s, f: hits.append(threading.current_thread() is threading.main_thread()))
result = []
started = threading.Event()
def reader():
    buf = ctypes.create_string_buffer(1)
    started.set()
    n = libc.read(r, buf, 1)
    result.append((n, errno.errorcode.get(ctypes.get_errno())))
t = threading.Thread(target=reader)
t.start()
started.wait()
for _ in range(2000):
    if result:
        break
    signal.pthread_kill(t.ident, signal.SIGUSR1)
    time.sleep(0.01)
t.join()
print(result, bool(hits), all(hits))
""", prelude=False)


def test_native_id_is_the_os_threads():
    # Decision (docs/threads.md): a converted thread reports the TID of the
    # OS thread that carries it, the one the kernel and ps know.
    lines = check_ok(run_hooked("""
        import threading
        ids = []
        t = threading.Thread(target=lambda: ids.append(threading.get_native_id()))
        t.start()
        t.join()
        print(ids == [t.native_id] == [threading.main_thread().native_id])
    """))
    assert lines == ["True"]


def test_start_new_thread_count_and_unraisable_exception():
    # _thread._count() counts converted threads, and an exception escaping
    # a start_new_thread function reaches sys.unraisablehook as plain
    # Python reports it (CPython's test_thread relies on both).
    assert_same("""
        import _thread, re, sys, time
        seen = []
        sys.unraisablehook = lambda a: seen.append(
            (a.exc_type.__name__, str(a.exc_value),
             re.sub(r"0x[0-9a-f]+", "ADDR", a.err_msg), a.object is task))
        gate = _thread.allocate_lock()
        gate.acquire()
        started = []
        def task():
            started.append(1)
            with gate:
                pass
            raise ValueError("task failed")
        before = _thread._count()
        _thread.start_new_thread(task, ())
        while not started:
            time.sleep(0.01)
        print(_thread._count() - before, _thread._count.__module__)
        gate.release()
        while _thread._count() != before:
            time.sleep(0.01)
        print(seen)
    """)


def test_other_pthread_functions_accept_a_converted_ident():
    # Every pthread function that takes a pthread_t must accept a converted
    # thread's ident (glibc would dereference it) and answer as for a
    # detached OS thread: stack attributes, CPU clock, scheduling, and
    # EINVAL from join and detach.  Threads are detached up to 3.12; 3.13
    # joins its threads itself, so joining one behind its back is not
    # compared there (plain 3.13 would wait for the thread).
    assert_same(PTHREAD + """
import sys, threading, time
class Attr(ctypes.Structure):
    _fields_ = [("opaque", ctypes.c_char * 64)]
class Param(ctypes.Structure):
    _fields_ = [("priority", ctypes.c_int)]
for name, nargs in (("pthread_getattr_np", 1), ("pthread_getcpuclockid", 1),
                    ("pthread_getschedparam", 2), ("pthread_join", 1),
                    ("pthread_detach", 0)):
    getattr(libc, name).argtypes = [ctypes.c_ulong] + [ctypes.c_void_p] * nargs
out = []
def body():
    me = threading.get_ident()
    attr = Attr()
    r = libc.pthread_getattr_np(me, ctypes.byref(attr))
    addr, size, guard = ctypes.c_void_p(), ctypes.c_size_t(), ctypes.c_size_t()
    libc.pthread_attr_getstack(ctypes.byref(attr), ctypes.byref(addr), ctypes.byref(size))
    libc.pthread_attr_getguardsize(ctypes.byref(attr), ctypes.byref(guard))
    state = ctypes.c_int()
    libc.pthread_attr_getdetachstate(ctypes.byref(attr), ctypes.byref(state))
    libc.pthread_attr_destroy(ctypes.byref(attr))
    out.append(("getattr", r, bool(addr.value), size.value >= 256 * 1024,
                guard.value >= 0, state.value == 1))
    clk = ctypes.c_int()
    r = libc.pthread_getcpuclockid(me, ctypes.byref(clk))
    out.append(("cpuclock", r, time.clock_gettime(clk.value) >= 0))
    policy, param = ctypes.c_int(), Param()
    out.append(("schedparam", libc.pthread_getschedparam(
        me, ctypes.byref(policy), ctypes.byref(param)), policy.value))
t = threading.Thread(target=body)
t.start()
t.join()
for line in out:
    print(line)
gate = threading.Event()
t = threading.Thread(target=gate.wait, daemon=True)
t.start()
if sys.version_info < (3, 13):
    print("join", errno.errorcode.get(libc.pthread_join(t.ident, None)))
    print("detach", errno.errorcode.get(libc.pthread_detach(t.ident)))
print("kill 0", libc.pthread_kill(t.ident, 0))
gate.set()
t.join()
""", prelude=False)
