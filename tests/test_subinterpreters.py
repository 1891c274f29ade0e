"""Subinterpreters under interpose (issue #12 item 3): the runtime belongs to
the main interpreter.  A subinterpreter imports site as it starts, and with
it interpose's sitecustomize; that must not boot the runtime again (it used
to replace the main interpreter's state, and the process segfaulted later,
as in CPython's test_threading subinterpreter tests).  Threads started in a
subinterpreter are plain OS threads; importing interpose there is a clear
error.

Acceptable outcomes: the same output as plain Python, no crash, nothing on
stderr.  Unacceptable: a crash, a boot message, a hang.
"""
import sys

import pytest

from support.snippets import assert_same, check_ok, run_hooked

# The Python-level ways to make a subinterpreter, per version: the legacy
# one (shared GIL, threads allowed) from _testcapi, and the module of
# isolated subinterpreters (3.11's refuses threads).
SUBINTERPRETERS = r'''
import sys
try:
    import _testcapi
except ImportError:
    _testcapi = None
try:
    import _interpreters as _isolated  # 3.13+
except ImportError:
    try:
        import _xxsubinterpreters as _isolated
    except ImportError:
        _isolated = None


def run_legacy(code):
    """Run code in a new subinterpreter sharing the GIL; its exit status."""
    return _testcapi.run_in_subinterp(code)


def run_isolated(code):
    """Run code in a new isolated subinterpreter (own GIL on 3.12+)."""
    iid = _isolated.create()
    try:
        return _isolated.run_string(iid, code)
    finally:
        _isolated.destroy(iid)
'''

# Socket I/O between threads of the subinterpreter; the result goes back to
# the main interpreter through a pipe.
THREADS_AND_SOCKETS = r'''
import os, socket, threading
listener = socket.socket(); listener.bind(("127.0.0.1", 0)); listener.listen()
names = []

def serve():
    conn, _ = listener.accept()
    conn.sendall(conn.recv(100).upper())
    conn.close()
    names.append(threading.current_thread().name)

threads = [threading.Thread(target=serve, name=f"sub-{i}") for i in range(3)]
for t in threads:
    t.start()
replies = []
for t in threads:
    s = socket.create_connection(listener.getsockname())
    s.sendall(b"hello")
    replies.append(s.recv(100))
    s.close()
for t in threads:
    t.join()
listener.close()
os.write(W, repr((replies, sorted(names), threading.active_count())).encode())
'''


def _have_testcapi():
    try:
        import _testcapi  # noqa: F401
    except ImportError:
        return False
    return True


needs_testcapi = pytest.mark.skipif(
    not _have_testcapi(),
    reason="this interpreter has no _testcapi (run_in_subinterp)")


def _have_isolated_threads():
    """Isolated subinterpreters that may start threads: 3.12+'s."""
    if sys.version_info < (3, 12):
        return False  # 3.11's refuse threads
    for name in ("_interpreters", "_xxsubinterpreters"):
        try:
            __import__(name)
            return True
        except ImportError:
            pass
    return False


@needs_testcapi
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_legacy_subinterpreter_starts_threads_and_does_socket_io():
    out = assert_same(SUBINTERPRETERS + f"""
r, w = os.pipe()
print("status:", run_legacy({THREADS_AND_SOCKETS!r}.replace("W", str(w))))
print(os.read(r, 1000).decode())
print("main threads:", threading.active_count())
os.close(r); os.close(w)
""")
    assert out == ["status: 0",
                   "([b'HELLO', b'HELLO', b'HELLO'], ['sub-0', 'sub-1', 'sub-2'], 1)",
                   "main threads: 1"]


@pytest.mark.skipif(not _have_isolated_threads(),
                    reason="no isolated subinterpreters that allow threads"
                           " (3.11's refuse them)")
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_isolated_subinterpreter_starts_threads_and_does_socket_io():
    out = assert_same(SUBINTERPRETERS + f"""
r, w = os.pipe()
print("result:", run_isolated({THREADS_AND_SOCKETS!r}.replace("W", str(w))))
print(os.read(r, 1000).decode())
os.close(r); os.close(w)
""")
    assert out == ["result: None",
                   "([b'HELLO', b'HELLO', b'HELLO'], ['sub-0', 'sub-1', 'sub-2'], 1)"]


@needs_testcapi
@pytest.mark.timeout(120)
def test_subinterpreter_does_not_boot_and_main_keeps_its_coroutines():
    # After a subinterpreter came and went, the main interpreter's
    # coroutines still run on its own runtime (the crash came later).
    lines = check_ok(run_hooked(SUBINTERPRETERS + """
import interpose
r, w = os.pipe()
code = "import os, sys; os.write(W, repr(sorted(m for m in sys.modules if m.split('.')[0] == 'interpose')).encode())"
print("status:", run_legacy(code.replace("W", str(w))))
print("interpose modules in the subinterpreter:", os.read(r, 1000).decode())
tasks = [interpose.spawn(lambda i: (time.sleep(0.001), i)[1], i) for i in range(50)]
print("coroutines:", sum(t.join() for t in tasks))
print("booted:", sys.modules["interpose._autostart"].booted())
"""))
    assert lines == ["status: 0", "interpose modules in the subinterpreter: []",
                     "coroutines: 1225", "booted: True"]


@needs_testcapi
@pytest.mark.timeout(120)
def test_import_interpose_in_subinterpreter_is_a_clear_error():
    lines = check_ok(run_hooked(SUBINTERPRETERS + """
r, w = os.pipe()
code = '''
import os
try:
    import interpose
    msg = "imported?"
except ImportError as e:
    msg = type(e).__name__ + ": " + str(e)
os.write(W, msg.encode())
'''
print("status:", run_legacy(code.replace("W", str(w))))
print(os.read(r, 1000).decode())
"""))
    assert lines == [
        "status: 0",
        "SubinterpreterError: interpose: cannot be used in a subinterpreter: it"
        " runs in the main interpreter only (code and threads of a"
        " subinterpreter run as plain Python, without coroutines)"]


NO_PREEMPTION = {"INTERPOSE_PREEMPT": "off"}


def _ticks_around(legacy_code):
    """Snippet lines: a ticker coroutine ticking, then legacy_code run in a
    subinterpreter on this OS thread; leaves t, before, status and during
    (the ticks counted while the subinterpreter ran)."""
    return f"""
t = Ticker(0.001)
t.wait_ticks(2)
before = t.ticks
status = run_legacy({legacy_code!r})
during = t.ticks - before
"""


@needs_testcapi
@pytest.mark.timeout(120)
def test_hook_in_subinterpreter_code_does_not_switch_on_312_and_later():
    # Subinterpreter code that sleeps on a coroutine's OS thread, GIL
    # released.  3.12+ binds the subinterpreter's thread state to the
    # gilstate slot as it attaches, and a hook never switches under it: the
    # sleep blocks the OS thread, as it would block a thread of plain
    # Python, so the main interpreter's ticker coroutine cannot tick.  3.11
    # keeps neither a per-thread current thread state nor a rebinding
    # slot, so a hook cannot see the subinterpreter; there the sleep parks
    # the coroutine (safe on 3.11: one GIL for all interpreters, and its
    # gilstate API never serves subinterpreters).  Either way: no crash,
    # and the main interpreter's coroutines run on afterwards.
    # Preemption is off: the main coroutine may legitimately be preempted
    # on its own thread state just before the subinterpreter exists or
    # just after it ended (native/preempt.c never preempts while one
    # exists), which would count as a tick "during" the call.
    lines = check_ok(run_hooked(SUBINTERPRETERS + _ticks_around(
        "import time\nfor _ in range(20): time.sleep(0.005)") + """
t.wait_ticks(2)
print("status:", status, "ticked during:", during > 0, "ticked after:", t.stop() > before)
""", env=NO_PREEMPTION))
    ticked = sys.version_info < (3, 12)
    assert lines == [f"status: 0 ticked during: {ticked} ticked after: True"]


@needs_testcapi
@pytest.mark.timeout(120)
def test_gil_held_hook_in_subinterpreter_code_blocks_the_thread():
    # A hooked call made by subinterpreter code with its GIL held (a call
    # through ctypes.PyDLL): switching there would leave the GIL held while
    # the main interpreter's ticker coroutine tries to take it on the same
    # OS thread, a deadlock.  The hook must see the subinterpreter's thread
    # state as attached on this thread (3.11 keeps it in a process-wide
    # variable) and block the thread instead.  Preemption is off, as above.
    lines = check_ok(run_hooked(SUBINTERPRETERS + _ticks_around(
        "import ctypes\nfor _ in range(5): ctypes.PyDLL(None).usleep(10000)") + """
# 3.11 may switch during the subinterpreter's other calls (GIL released).
quiet = during == 0 if sys.version_info >= (3, 12) else True
print("status:", status, "quiet on 3.12+:", quiet, "ticked after:", t.stop() > before)
""", timeout=60, env=NO_PREEMPTION))
    assert lines == ["status: 0 quiet on 3.12+: True ticked after: True"]
