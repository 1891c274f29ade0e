"""accept and connect across coroutines (native/hooks_create.c,
hooks_connect.c): accept parks until a peer connects, connect parks until
the listener has room, both honour the socket's timeouts, and a refused
connect sets ECONNREFUSED, again on a retry.

Differential tests run the snippet hooked and plain (go() = OS threads) and
compare what both print.
"""
import pytest

from support.snippets import assert_same


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
@pytest.mark.timeout(120)
def test_accept_and_connect_that_waited_leave_errno_untouched():
    # Regression: after parking, a successful hooked accept left EAGAIN and
    # a connect EINPROGRESS/EISCONN/EAGAIN in errno; libc's wrappers (and
    # the kernel's blocking calls) leave errno alone on success.  ctypes
    # shows errno after the call (preset so that a change shows).
    out = assert_same("""
        import ctypes, socket, struct
        libc = ctypes.CDLL(None, use_errno=True)

        def call(fn, *args):
            ctypes.set_errno(12345)
            n = fn(*args)
            return n >= 0, errno.errorcode.get(ctypes.get_errno(), ctypes.get_errno())

        l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen()
        port = l.getsockname()[1]
        def acceptor():
            ctypes.set_errno(12345)
            fd = libc.accept(l.fileno(), None, None)
            err = ctypes.get_errno()
            os.close(fd)
            return fd >= 0, errno.errorcode.get(err, err)

        accepted = go(acceptor)
        settle(accepted)

        def client():
            c = socket.socket()
            raw = (struct.pack("=H", socket.AF_INET) + struct.pack(">H", port)
                   + socket.inet_aton("127.0.0.1") + bytes(8))
            r = call(libc.connect, c.fileno(), raw, len(raw))
            c.close()
            return r

        print("connect:", go(client).join())
        print("accept:", accepted.join())
        l.close()
    """)
    assert out == ["connect: (True, 12345)", "accept: (True, 12345)"]
