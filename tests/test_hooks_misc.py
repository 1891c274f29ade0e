"""The hooks together, as programs use them (DESIGN §5-6): accept and connect
across coroutines (native/hooks_create.c, hooks_connect.c), the sleep hooks
(native/hooks_sleep.c), subprocesses, TLS over hooked sockets, a process
that is preloaded but never starts the runtime, and fds and OS threads
returning to their baseline.

Differential tests run the snippet hooked and plain (go() = OS threads) and
compare what both print; ordering-sensitive ones run hooked only.
"""
import subprocess

import pytest

import interpose
from support.snippets import assert_same, check_ok, run_hooked, run_plain


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_accept_parks_and_echo_between_coroutines():
    out = assert_same("""
        import socket
        l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen()
        t = Ticker()

        def acceptor():
            t0 = t.ticks
            s, addr = l.accept()
            return s, addr, t.ticks - t0

        r = go(acceptor)
        settle(r)
        t.wait_ticks(3)
        c = socket.create_connection(l.getsockname())
        s, addr, ticks = r.join()
        print("accepted:", addr == c.getsockname(), "ticks during accept > 0:", ticks > 0)

        def echo_server(sock):
            n = 0
            while data := sock.recv(1000):
                sock.sendall(data.upper())
                n += len(data)
            sock.close()
            return n

        def client():
            replies = []
            for word in (b"alpha", b"beta", b"gamma"):
                c.sendall(word)
                replies.append(c.recv(100))
            c.shutdown(socket.SHUT_WR)
            replies.append(c.recv(100))
            return replies

        srv, cli = go(echo_server, s), go(client)
        print("client:", cli.join(), "server got:", srv.join())
        t.stop()
        c.close(); l.close()
    """)
    assert out == ["accepted: True ticks during accept > 0: True",
                   "client: [b'ALPHA', b'BETA', b'GAMMA', b''] server got: 14"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_connect_parks_until_the_listener_has_room():
    # With a full accept queue (listen(0) takes one), Linux drops the next
    # SYN; the connect completes on the retransmission (~1 s) after an
    # accept made room.  Meanwhile the ticker must keep ticking.
    out = assert_same("""
        import socket
        l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(0)
        first = socket.create_connection(l.getsockname())
        t = Ticker()

        def connector():
            c = socket.socket()
            t0 = t.ticks
            c.connect(l.getsockname())
            return c, t.ticks - t0

        r = go(connector)
        settle(r)
        t.wait_ticks(3)
        s1, _ = l.accept()
        c, ticks = r.join()
        s2, _ = l.accept()
        c.sendall(b"second")
        print(s2.recv(100), "ticks during connect > 0:", ticks > 0)
        t.stop()
        for x in (first, s1, s2, c, l):
            x.close()
    """)
    assert out == ["b'second' ticks during connect > 0: True"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_accept_and_connect_honour_socket_timeouts():
    # SO_RCVTIMEO bounds a blocking accept (EAGAIN); SO_SNDTIMEO bounds a
    # blocking connect (EINPROGRESS, the connection goes on), here to a
    # listener whose accept queue is full, so the SYN is dropped.
    out = assert_same("""
        import socket, struct
        slack = 0 if HOOKED else 0.011
        t = Ticker()
        l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(0)
        l.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 250000))

        def attempt(fn, *args):
            t0 = time.monotonic()
            try:
                return repr(fn(*args))
            except OSError as e:
                return (type(e).__name__ + " " + errname(e) +
                        f" not early: {time.monotonic() - t0 >= 0.25 - slack}")

        print("accept:", go(attempt, l.accept).join())
        first = socket.create_connection(l.getsockname())
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 0, 250000))
        print("connect:", go(attempt, c.connect, l.getsockname()).join())
        print("ticked:", t.stop() > 0)
        for x in (first, c, l):
            x.close()
    """)
    assert out == ["accept: BlockingIOError EAGAIN not early: True",
                   "connect: BlockingIOError EINPROGRESS not early: True",
                   "ticked: True"]


@pytest.mark.timeout(120)
def test_connect_refused_sets_econnrefused():
    out = assert_same("""
        import socket
        s = socket.socket(); s.bind(("127.0.0.1", 0))
        addr = s.getsockname()
        s.close()  # nothing listens there now
        t = Ticker()

        def attempt(fn, *args):
            try:
                return repr(fn(*args))
            except OSError as e:
                return type(e).__name__ + " " + errname(e)

        c = socket.socket()
        print("connect:", go(attempt, c.connect, addr).join())
        c.close()
        c = socket.socket()
        print("connect_ex:", errno.errorcode[go(c.connect_ex, addr).join()])
        c.close()
        print("create_connection:", go(attempt, socket.create_connection, addr).join())
        c = socket.socket()
        c.settimeout(5)
        print("with a timeout:", go(attempt, c.connect, addr).join())
        c.close()
        t.stop()
    """)
    assert out == ["connect: ConnectionRefusedError ECONNREFUSED",
                   "connect_ex: ECONNREFUSED",
                   "create_connection: ConnectionRefusedError ECONNREFUSED",
                   "with a timeout: ConnectionRefusedError ECONNREFUSED"]


@pytest.mark.timeout(120)
def test_connect_retry_after_refusal_is_refused_again():
    # The kernel's blocking connect leaves a refused socket unconnected, so
    # a retry on the same socket starts over and is refused again.  Not
    # acceptable: ECONNABORTED, which Linux gives for a socket still marked
    # connecting whose error was already consumed (by a getsockopt SO_ERROR).
    out = assert_same("""
        import socket
        s = socket.socket(); s.bind(("127.0.0.1", 0))
        addr = s.getsockname()
        s.close()

        def attempt(fn, *args):
            try:
                return repr(fn(*args))
            except OSError as e:
                return type(e).__name__ + " " + errname(e)

        c = socket.socket()
        print("first:", attempt(c.connect, addr))
        print("retry:", attempt(c.connect, addr))
        print("connect_ex retry:", errno.errorcode[c.connect_ex(addr)])
        l = socket.socket(); l.bind(addr); l.listen()
        print("retry once something listens:", attempt(c.connect, addr))
        c.close(); l.close()
    """)
    assert out == ["first: ConnectionRefusedError ECONNREFUSED",
                   "retry: ConnectionRefusedError ECONNREFUSED",
                   "connect_ex retry: ECONNREFUSED",
                   "retry once something listens: None"]


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_sleep_lets_other_coroutines_run_interleaved():
    # If time.sleep blocked the thread the log would read AAAABBBB.  The
    # order is exact under the scheduler (timers fire in deadline order, the
    # run queue is FIFO), so this runs hooked only.
    out = check_ok(run_hooked("""
        log = []

        def worker(name):
            t0 = time.monotonic()
            for _ in range(4):
                log.append(name)
                time.sleep(0.05)
            return time.monotonic() - t0 >= 0.2

        a, b = go(worker, "A"), go(worker, "B")
        print("".join(log) or "-", a.join(), b.join(), "".join(log))
    """, timeout=30))
    assert out == ["- True True ABABABAB"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sleep_calls_never_return_early():
    # time.sleep (clock_nanosleep TIMER_ABSTIME), and nanosleep, usleep and
    # clock_nanosleep called directly, in a coroutine while a ticker runs.
    out = assert_same("""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)

        class timespec(ctypes.Structure):
            _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

        def ts(ns):
            return timespec(ns // 10**9, ns % 10**9)

        MONO, REAL, ABSTIME = time.CLOCK_MONOTONIC, time.CLOCK_REALTIME, 1
        t = Ticker()

        def check(label, requested_ns, fn):
            t0 = time.monotonic_ns()
            rc = fn()
            ok = time.monotonic_ns() - t0 >= requested_ns
            return f"{label} rc={rc} on time={ok}"

        def sleeper():
            lines = []
            for ms in (0.5, 1, 10.5, 50, 120):
                ns = int(ms * 1e6)
                lines.append(check(f"time.sleep({ms} ms)", ns, lambda: time.sleep(ns / 1e9) or 0))
                lines.append(check("nanosleep", ns,
                                   lambda: libc.nanosleep(ctypes.byref(ts(ns)), None)))
                lines.append(check("usleep", ns // 1000 * 1000,
                                   lambda: libc.usleep(ns // 1000)))
                lines.append(check("clock_nanosleep", ns,
                                   lambda: libc.clock_nanosleep(MONO, 0, ctypes.byref(ts(ns)), None)))
                for clock in (MONO, REAL):
                    target = time.clock_gettime_ns(clock) + ns
                    rc = libc.clock_nanosleep(clock, ABSTIME, ctypes.byref(ts(target)), None)
                    lines.append(f"clock_nanosleep ABSTIME clock {clock} rc={rc}"
                                 f" on time={time.clock_gettime_ns(clock) >= target}")
            t0 = time.monotonic()
            time.sleep(0)
            lines.append("sleep(0) returns")
            return lines

        for line in go(sleeper).join():
            print(line)
        print("ticked:", t.stop() > 0)
    """)
    assert out[-1] == "ticked: True"
    assert all("rc=0 on time=True" in line for line in out[:-2]), out


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_subprocess_run_does_not_stall_other_coroutines():
    out = assert_same("""
        import hashlib, subprocess
        t = Ticker()

        def run():
            t0 = t.ticks
            p = subprocess.run([sys.executable, "-c", "import time; time.sleep(0.5); print(1)"],
                               capture_output=True)
            return p.returncode, p.stdout, p.stderr, t.ticks - t0

        rc, stdout, stderr, ticks = go(run).join()
        print(rc, stdout, stderr, "ticks during subprocess.run > 0:", ticks > 0)

        # Input and output larger than a pipe's buffer, both ways at once.
        data = os.urandom(1 << 20)
        code = "import sys; d = sys.stdin.buffer.read(); sys.stdout.buffer.write(d + d)"
        p = go(lambda: subprocess.run([sys.executable, "-c", code], input=data,
                                      capture_output=True)).join()
        print(p.returncode, p.stdout == data + data, p.stderr)
        t.stop()
    """)
    assert out == ["0 b'1\\n' b'' ticks during subprocess.run > 0: True",
                   "0 True b''"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_subprocess_leaves_a_parked_recv_alone():
    # The child inherits the parent's fds and closes them: that must not
    # unregister or wake the parent's waiters.
    out = assert_same("""
        import fcntl, socket, subprocess
        a, b = socket.socketpair()
        r = go(a.recv, 100)
        settle(r)
        p = subprocess.run([sys.executable, "-c", "print(1)"], capture_output=True)
        print("child:", p.stdout, "waiter still parked:", not r.done())
        print("view:", os.get_blocking(a.fileno()),
              bool(fcntl.fcntl(a.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK))
        b.send(b"after the child")
        print(r.join())
        a.close(); b.close()
    """)
    assert out == ["child: b'1\\n' waiter still parked: True", "view: True False",
                   "b'after the child'"]


@pytest.fixture
def self_signed_cert(tmp_path):
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    proc = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost"],
        capture_output=True, text=True, timeout=60,
    )
    if proc.returncode != 0:
        pytest.fail(f"openssl could not make a certificate: {proc.stderr}")
    return str(cert), str(key)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_ssl_client_and_server_over_hooked_sockets(self_signed_cert):
    cert, key = self_signed_cert
    out = assert_same(f"""
        import hashlib, socket, ssl
        cert, key = {cert!r}, {key!r}
        sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        sctx.load_cert_chain(cert, key)
        cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        cctx.load_verify_locations(cert)
        l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen()
        payload = os.urandom(256 * 1024)
        t = Ticker()

        def server():
            conn, _ = l.accept()
            with sctx.wrap_socket(conn, server_side=True) as s:
                h = hashlib.sha256()
                n = 0
                while n < len(payload):
                    data = s.recv(65536)
                    h.update(data)
                    n += len(data)
                s.sendall(h.hexdigest().encode())
                return s.recv(100)

        def client():
            t0 = t.ticks
            raw = socket.create_connection(l.getsockname())
            with cctx.wrap_socket(raw, server_hostname="localhost") as c:
                c.sendall(payload)
                digest = c.recv(100).decode()
                c.sendall(b"bye")
                return c.version() is not None, digest, t.ticks - t0

        srv, cli = go(server), go(client)
        handshake, digest, ticks = cli.join()
        print("tls:", handshake, "digest ok:", digest == hashlib.sha256(payload).hexdigest(),
              "server got:", srv.join(), "ticks > 0:", t.stop() > 0)
        l.close()
    """)
    assert out == ["tls: True digest ok: True server got: b'bye' ticks > 0: True"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_fds_and_threads_return_to_baseline():
    # The name workers exit after ~2 s idle: poll for up to 10 s.
    out = assert_same("""
        import psutil, select, selectors, socket, subprocess
        me = psutil.Process()
        fds, threads = me.num_fds(), me.num_threads()

        def work(i):
            l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen()
            c = socket.create_connection(l.getsockname())
            s, _ = l.accept()
            c.sendall(b"x" * 100000)
            got = 0
            while got < 100000:
                got += len(s.recv(65536))
            a, b = socket.socketpair()
            r, w = os.pipe()
            sel = selectors.DefaultSelector()
            sel.register(a, selectors.EVENT_READ)
            b.send(b"y")
            sel.select(1)
            po = select.poll(); po.register(r, select.POLLIN)
            os.write(w, b"z")
            po.poll(1000)
            socket.getaddrinfo("localhost", 80 + i)
            d = os.dup(c.fileno())
            os.dup2(s.fileno(), d)
            for x in (l, c, s, a, b, sel):
                x.close()
            for fd in (r, w, d):
                os.close(fd)
            return got

        tasks = [go(work, i) for i in range(8)]
        print("moved:", [task.join() for task in tasks])
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        deadline = time.monotonic() + 10
        while (me.num_threads() > threads or me.num_fds() > fds) and time.monotonic() < deadline:
            time.sleep(0.05)
        print("fds back:", me.num_fds() == fds, "threads back:", me.num_threads() == threads)
    """)
    assert out == ["moved: " + str([100000] * 8), "fds back: True threads back: True"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_preloaded_process_without_the_runtime_behaves_like_libc():
    # LD_PRELOAD alone (no INTERPOSE_AUTOSTART): every hook must pass
    # straight through, so the output equals the plain run's.
    code = """
        import fcntl, select, socket, struct
        a, b = socket.socketpair()
        print("view:", os.get_blocking(a.fileno()), kernel_nonblocking(a.fileno()))
        a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 100000))
        try:
            a.recv(10)
        except OSError as e:
            print("timeout:", errname(e))
        r = go(a.recv, 10)
        settle(r)
        b.send(b"to a thread")
        print(r.join())
        po = select.poll(); po.register(a, select.POLLIN)
        t0 = time.monotonic()
        print("poll:", po.poll(100), time.monotonic() - t0 >= 0.1)
        print(socket.getaddrinfo("localhost", 80, socket.AF_INET, socket.SOCK_STREAM))
        print("maps:", "libinterpose" in open("/proc/self/maps").read())
        a.close(); b.close()
    """
    preloaded = run_plain(code, env={"LD_PRELOAD": interpose._native.LIBRARY_PATH})
    plain = run_plain(code)
    pre_lines, plain_lines = check_ok(preloaded, "preloaded"), check_ok(plain, "plain")
    assert pre_lines[-1] == "maps: True" and plain_lines[-1] == "maps: False"
    assert pre_lines[:-1] == plain_lines[:-1]
    assert pre_lines[0] == "view: True False"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sendfile_to_a_blocking_socket_blocks_like_libc():
    # sendfile is not among the hooked calls (DESIGN §6), but the hooks made
    # the socket non-blocking in the kernel: the user's blocking socket must
    # still never give EAGAIN.  Acceptable: each call blocks until it sent
    # something (partial counts are fine).  Not acceptable: BlockingIOError.
    out = assert_same("""
        import socket, tempfile
        a, b = socket.socketpair()
        size = 4 << 20
        f = tempfile.TemporaryFile()
        f.write(os.urandom(size)); f.flush()

        def drain():
            n = 0
            while data := b.recv(1 << 16):
                n += len(data)
            return n

        def send_all():
            offset = 0
            try:
                while offset < size:
                    offset += os.sendfile(a.fileno(), f.fileno(), offset, size - offset)
            except OSError as e:
                return type(e).__name__ + " " + errname(e) + (
                    " after a partial send" if offset else "")
            finally:
                a.shutdown(socket.SHUT_WR)
            return offset

        s = go(send_all)
        settle(s)
        r = go(drain)
        print("sendfile:", s.join(), "drained:", r.join())
        f.close(); a.close(); b.close()
    """)
    assert out == [f"sendfile: {4 << 20} drained: {4 << 20}"]


@pytest.mark.timeout(60)
def test_no_hooks_blocks_the_thread_and_restores():
    # Inside no_hooks() a blocking sleep blocks the thread (the ticker does
    # not tick meanwhile); after it, sleeps cooperate again.
    out = check_ok(run_hooked("""
        ticks = []
        def ticker():
            for i in range(5):
                time.sleep(0.01)
                ticks.append(i)
        t = interpose.spawn(ticker)
        with interpose.no_hooks():
            time.sleep(0.2)
            print("ticks while blocked", len(ticks))
        t.join()
        print("ticks after", len(ticks))
    """))
    assert out == ["ticks while blocked 0", "ticks after 5"]
