"""C code calling back into Python from a coroutine (native/gilstate.c):
PyGILState_Ensure, PyGILState_GetThisThreadState and PyGILState_Check must
find the running coroutine's own thread state, whatever the entry point
(ctypes callbacks, sqlite3 user functions, ssl callbacks), also after a park
inside the C code and in a forked child.

Regression tests for issue #12 item 2: before the gilstate binding followed
the coroutine, each of these segfaulted on 3.11 (the callback ran on the
root coroutine's thread state while the root was parked with its own frames
on it) and ran on another coroutine's thread state on 3.12+.

Acceptable outcomes: the hooked run prints what the plain run (OS threads)
prints.  Unacceptable: a crash, a callback that sees another coroutine's
threading.local or contextvars, a fatal "PyGILState_Check" error.
"""
import shutil
import subprocess

import pytest

from support.snippets import assert_same, check_ok, run_hooked
from support.servers import self_signed_cert


@pytest.fixture(scope="module")
def cert_pair(tmp_path_factory):
    return self_signed_cert(str(tmp_path_factory.mktemp("gilstate-cert")))


@pytest.fixture(scope="module")
def callback_lib(tmp_path_factory):
    """A C library whose function makes a blocking read, then calls back
    into Python: the shape of OpenSSL reading a socket, then calling the
    SNI callback, inside SSL_do_handshake."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.fail("no C compiler (cc) to build the callback library")
    tmp = tmp_path_factory.mktemp("gilstate-lib")
    src = tmp / "readcb.c"
    src.write_text(
        "#include <unistd.h>\n"
        "typedef long (*cb_t)(long);\n"
        "long read_then_call(int fd, cb_t cb) {\n"
        "  char c;\n"
        "  if (read(fd, &c, 1) != 1) return -1;\n"
        "  long first = cb(c);\n"
        "  if (read(fd, &c, 1) != 1) return -1;\n"
        "  return first * 1000 + cb(c);\n"
        "}\n")
    lib = tmp / "libreadcb.so"
    subprocess.run([cc, "-shared", "-fPIC", "-Wall", "-Werror", "-o", str(lib),
                    str(src)], check=True, capture_output=True)
    return str(lib)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_ssl_servername_callback_blocks_in_server_coroutine(cert_pair):
    # The shape of CPython's test_ssl test_get_server_certificate_timeout,
    # which segfaulted under interpose: the server's SNI callback, called
    # by OpenSSL inside the handshake, blocks until the client has given up.
    cert, key = cert_pair
    assert_same(f"""
        import contextvars, socket, ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain({cert!r}, {key!r})
        client_gave_up = threading.Event()
        where = contextvars.ContextVar("where", default="unset")
        seen = []

        def servername_cb(sslsock, name, context):
            seen.append(("sni", name, where.get()))
            client_gave_up.wait(30)
            seen.append(("after wait", where.get()))

        ctx.set_servername_callback(servername_cb)
        listener = socket.socket(); listener.bind(("127.0.0.1", 0)); listener.listen()

        def server():
            where.set("server")
            conn, _ = listener.accept()
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except OSError:
                pass  # the client went away during the handshake
            return where.get()

        srv = go(server)
        where.set("client")
        try:
            ssl.get_server_certificate(listener.getsockname(), timeout=0.5)
            print("client: got a certificate?")
        except TimeoutError:
            print("client: timeout")
        client_gave_up.set()
        print("server ended in", srv.join())
        print("callback:", seen)
        listener.close()
    """)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_ssl_client_timeout_against_silent_server_others_progress():
    # A server that accepts and never answers the handshake: each client's
    # handshake times out, while a ticker keeps ticking.
    out = assert_same("""
        import socket, ssl
        listener = socket.socket(); listener.bind(("127.0.0.1", 0)); listener.listen(16)
        t = Ticker()

        def client(i):
            try:
                ssl.get_server_certificate(listener.getsockname(), timeout=0.3)
                return "answered?"
            except TimeoutError:
                return "timeout"

        clients = [go(client, i) for i in range(4)]
        print([c.join() for c in clients])
        print("ticked:", t.stop() > 0)
        listener.close()
    """)
    assert out == ["['timeout', 'timeout', 'timeout', 'timeout']", "ticked: True"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_ctypes_callback_after_parked_read_sees_its_own_coroutine(callback_lib):
    # Each coroutine calls C that parks in read() with no thread state
    # attached, then calls a CFUNCTYPE callback that itself sleeps.  The
    # pipes are written in reverse order, so every callback runs right
    # after another coroutine attached its own thread state.
    out = assert_same(f"""
        import contextvars, ctypes
        lib = ctypes.CDLL({callback_lib!r})
        CB = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_long)
        lib.read_then_call.argtypes = [ctypes.c_int, CB]
        lib.read_then_call.restype = ctypes.c_long
        N = 16
        local = threading.local()
        var = contextvars.ContextVar("var")
        wrong = []

        def worker(i, fd):
            local.me = i
            var.set(i)

            def callback(byte):
                if getattr(local, "me", None) != i or var.get(None) != i:
                    wrong.append(i)
                time.sleep(0.001)
                return byte + i

            cb = CB(callback)
            return lib.read_then_call(fd, cb)

        pipes = [os.pipe() for _ in range(N)]
        tasks = [go(worker, i, r) for i, (r, w) in enumerate(pipes)]
        settle(*tasks)
        for _ in range(2):
            for i in reversed(range(N)):
                os.write(pipes[i][1], b"a")
            time.sleep(0.01)
        results = [t.join() for t in tasks]
        print("results ok:", results == [(97 + i) * 1000 + 97 + i for i in range(N)])
        print("wrong:", wrong)
        for r, w in pipes:
            os.close(r); os.close(w)
    """)
    assert out == ["results ok: True", "wrong: []"]


@pytest.mark.timeout(120)
def test_qsort_comparison_that_sleeps_in_many_coroutines():
    # libc's qsort calls the Python comparison through PyGILState_Ensure.
    out = assert_same("""
        import ctypes
        libc = ctypes.CDLL(None)
        CMP = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
        local = threading.local()
        wrong = []

        def worker(i):
            local.me = i

            def compare(a, b):
                if local.me != i:
                    wrong.append(i)
                time.sleep(0)
                x = ctypes.cast(a, ctypes.POINTER(ctypes.c_int))[0]
                y = ctypes.cast(b, ctypes.POINTER(ctypes.c_int))[0]
                return (x > y) - (x < y)

            values = (ctypes.c_int * 8)(*[(i * 7 + k * 5) % 11 for k in range(8)])
            libc.qsort(values, len(values), ctypes.sizeof(ctypes.c_int), CMP(compare))
            return list(values) == sorted(values)

        tasks = [go(worker, i) for i in range(20)]
        print("sorted:", all(t.join() for t in tasks), "wrong:", wrong)
    """)
    assert out == ["sorted: True wrong: []"]


@pytest.mark.timeout(120)
def test_sqlite3_user_function_blocks_in_many_coroutines():
    out = assert_same("""
        import sqlite3
        local = threading.local()

        def worker(i):
            local.me = i

            def who(x):
                time.sleep(0.001)
                return local.me * 100 + x

            db = sqlite3.connect(":memory:", check_same_thread=False)
            db.create_function("who", 1, who)
            db.execute("CREATE TABLE t (x INTEGER)")
            db.executemany("INSERT INTO t VALUES (?)", [(k,) for k in range(5)])
            rows = [r[0] for r in db.execute("SELECT who(x) FROM t ORDER BY x")]
            db.close()
            return rows == [i * 100 + k for k in range(5)]

        tasks = [go(worker, i) for i in range(12)]
        print("own rows:", [t.join() for t in tasks].count(True))
    """)
    assert out == ["own rows: 12"]


@pytest.mark.timeout(120)
def test_gilstate_check_holds_under_dev_mode_debug_allocator():
    # -X dev installs the debug allocator, which aborts unless
    # PyGILState_Check() (the slot's thread state is the attached one).
    out = assert_same("""
        import ctypes

        def worker(i):
            time.sleep(0.001)
            api = ctypes.pythonapi
            api.PyGILState_GetThisThreadState.restype = ctypes.c_void_p
            api.PyThreadState_Get.restype = ctypes.c_void_p
            bound = api.PyGILState_GetThisThreadState() == api.PyThreadState_Get()
            return bound and api.PyGILState_Check() == 1 and len([i] * 100) == 100

        tasks = [go(worker, i) for i in range(10)]
        print("bound:", [t.join() for t in tasks].count(True))
        # Their thread states are gone; the slot is the main one's again,
        # not a dangling pointer, and a callback from C runs here.
        time.sleep(0.001)
        print("main bound:", worker(-1))
        CMP = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
        values = (ctypes.c_int * 3)(3, 1, 2)
        ctypes.CDLL(None).qsort(values, 3, ctypes.sizeof(ctypes.c_int), CMP(
            lambda a, b: ctypes.cast(a, ctypes.POINTER(ctypes.c_int))[0]
            - ctypes.cast(b, ctypes.POINTER(ctypes.c_int))[0]))
        print("sorted in main:", list(values))
    """, env={"PYTHONDEVMODE": "1"})
    assert out == ["bound: 10", "main bound: True", "sorted in main: [1, 2, 3]"]


@pytest.mark.timeout(120)
def test_gilstate_follows_coroutines_in_forked_child(callback_lib):
    # After fork CPython deletes and re-creates its gilstate key; the child
    # finds it again before its first switch.
    lines = check_ok(run_hooked(f"""
        import ctypes
        lib = ctypes.CDLL({callback_lib!r})
        CB = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_long)
        lib.read_then_call.argtypes = [ctypes.c_int, CB]
        local = threading.local()

        def worker(i, fd):
            local.me = i
            cb = CB(lambda byte: 1 if local.me == i else 0)
            return lib.read_then_call(fd, cb)

        def run():
            pipes = [os.pipe() for _ in range(6)]
            tasks = [go(worker, i, r) for i, (r, w) in enumerate(pipes)]
            settle(*tasks)
            for r, w in reversed(pipes):
                os.write(w, b"ab")
            return [t.join() for t in tasks]

        print("parent:", run())
        pid = os.fork()
        if pid == 0:
            ok = run() == [1001] * 6
            os._exit(0 if ok else 1)
        print("child:", os.waitpid(pid, 0)[1])
    """))
    assert lines == [f"parent: {[1001] * 6}", "child: 0"]


def test_library_refuses_a_second_interpreter(snippet):
    # The engine serves the interpreter that initialised it; another
    # (a subinterpreter's) is refused with -EXDEV instead of replacing it.
    lines = check_ok(snippet("""
        import errno
        import interpose._core._native as native
        r = native.lib.py_init(0x030b0000, 12345)
        print("second init:", -r == errno.EXDEV)
    """))
    assert lines == ["second init: True"]
