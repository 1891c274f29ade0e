"""The data hooks (native/hooks_data.c, DESIGN §6): read/recv/send and
friends behave as the blocking libc calls do -- values, partial counts, EOF,
errno, timeouts -- while the coroutine making them parks instead of the
thread.

Each test runs a snippet in a fresh interpreter under `python -m interpose
run` and, where behaviour must match libc, also under plain python (where
go() starts OS threads), and compares what both print.  A hook that blocks
the thread instead of parking shows up as a hang: settle() and the ticker
never get to run, and the snippet's timeout fails the test.
"""
import os
import select

import pytest

from support.snippets import assert_same, popen_snippet, run_both


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_recv_parks_while_other_coroutines_run():
    out = assert_same("""
        import socket
        a, b = socket.socketpair()
        t = Ticker()

        def reader():
            t0 = t.ticks
            data = a.recv(100)
            return data, t.ticks - t0

        r = go(reader)
        settle(r)
        t.wait_ticks(3)
        b.sendall(b"hello")
        data, ticks = r.join()
        t.stop()
        print(data, "ticks during recv > 0:", ticks > 0)
        a.close(); b.close()
    """)
    assert out == ["b'hello' ticks during recv > 0: True"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_recv_returns_partial_count():
    # recv(100) with 10 bytes there returns 10, whether they were there
    # first or arrived while the caller was parked.
    out = assert_same("""
        import socket
        a, b = socket.socketpair()
        b.send(b"x" * 10)
        print("ready first:", len(a.recv(100)))
        r = go(lambda: a.recv(100))
        settle(r)
        b.send(b"y" * 10)
        print("arrived later:", len(r.join()))
        b.send(b"z" * 10)
        print("os.read:", len(os.read(a.fileno(), 100)))
        r = go(lambda: a.recv_into(bytearray(100)))
        settle(r)
        b.send(b"w" * 7)
        print("recv_into:", r.join())
        a.close(); b.close()
    """)
    assert out == ["ready first: 10", "arrived later: 10", "os.read: 10",
                   "recv_into: 7"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_recv_returns_empty_at_eof():
    out = assert_same("""
        import socket
        a, b = socket.socketpair()
        r = go(lambda: a.recv(100))
        settle(r)
        b.close()
        print("parked then peer closed:", r.join())
        print("again:", a.recv(100), os.read(a.fileno(), 10))
        a.close()

        # A half-close (shutdown SHUT_WR) over TCP, data first.
        l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen()
        c = socket.create_connection(l.getsockname())
        s, _ = l.accept()
        r = go(lambda: [c.recv(100), c.recv(100)])
        settle(r)
        s.send(b"last words")
        s.shutdown(socket.SHUT_WR)
        print("tcp:", r.join())
        for x in (c, s, l):
            x.close()
    """)
    assert out == ["parked then peer closed: b''", "again: b'' b''",
                   "tcp: [b'last words', b'']"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_recv_after_linger_zero_close_gets_econnreset():
    out = assert_same("""
        import socket, struct
        l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen()
        c = socket.create_connection(l.getsockname())
        s, _ = l.accept()

        def reader():
            try:
                return c.recv(100)
            except OSError as e:
                return type(e).__name__ + " " + errname(e)

        r = go(reader)
        settle(r)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # sends RST
        print("parked recv:", r.join())
        print("next recv:", reader())
        c.close(); l.close()
    """)
    assert out == ["parked recv: ConnectionResetError ECONNRESET",
                   "next recv: b''"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_send_after_peer_close_gets_epipe():
    # Python ignores SIGPIPE, so the send fails with EPIPE (BrokenPipeError).
    out = assert_same("""
        import select, signal, socket
        print("SIGPIPE ignored:", signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN)

        def send(sock, data):
            try:
                return sock.send(data)
            except OSError as e:
                return type(e).__name__ + " " + errname(e)

        a, b = socket.socketpair()
        b.close()
        print("socketpair send:", send(a, b"x"), "sendall:", end=" ")
        try:
            a.sendall(b"y" * 100000)
        except OSError as e:
            print(errname(e))
        a.close()

        # TCP: the peer closed; our first send draws its RST, the next fails.
        l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen()
        c = socket.create_connection(l.getsockname())
        s, _ = l.accept()
        s.close()
        print("eof:", c.recv(10), "first send:", send(c, b"x"))
        p = select.poll()
        p.register(c, 0)  # only errors and hang-ups
        ev = p.poll(10000)
        print("hup:", bool(ev and ev[0][1] & select.POLLHUP))
        print("tcp send:", send(c, b"x"))
        c.close(); l.close()
    """)
    assert out == ["SIGPIPE ignored: True",
                   "socketpair send: BrokenPipeError EPIPE sendall: EPIPE",
                   "eof: b'' first send: 1", "hup: True",
                   "tcp send: BrokenPipeError EPIPE"]


@pytest.mark.timeout(120)
def test_send_after_peer_close_raises_sigpipe_when_not_ignored():
    # The hooks add MSG_DONTWAIT, never MSG_NOSIGNAL: the signal still comes.
    code = """
        import signal, socket
        a, b = socket.socketpair()
        b.close()
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        print("sending", flush=True)
        a.send(b"x")
        print("not reached")
    """
    hooked, plain = run_both(code)
    assert plain.returncode == -13, plain
    assert (hooked.returncode, hooked.stdout) == (plain.returncode, plain.stdout), hooked


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_recv_so_rcvtimeo_gives_eagain_after_timeout():
    # Acceptable: EAGAIN (BlockingIOError) once 0.3 s have passed, other
    # coroutines running meanwhile.  Unacceptable: earlier, never, or
    # blocking the thread.  The kernel counts in jiffies, so the plain run
    # may end up to one jiffy early; the hooked run must not end early at all.
    out = assert_same("""
        import socket, struct
        a, b = socket.socketpair()
        a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 300000))
        print("getsockopt:", struct.unpack("ll", a.getsockopt(
            socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16)))
        slack = 0 if HOOKED else 0.011
        t = Ticker()

        def reader():
            t0 = time.monotonic()
            try:
                a.recv(10)
                return "data?"
            except OSError as e:
                return type(e).__name__, errname(e), time.monotonic() - t0 >= 0.3 - slack

        print("recv:", go(reader).join())
        t0 = time.monotonic()
        try:
            os.read(a.fileno(), 10)
        except OSError as e:
            print("os.read:", errname(e), time.monotonic() - t0 >= 0.3 - slack)
        b.send(b"data")
        print("data still comes:", a.recv(10))
        print("ticked:", t.stop() > 0)
        a.close(); b.close()
    """)
    assert out == ["getsockopt: (0, 300000)",
                   "recv: ('BlockingIOError', 'EAGAIN', True)",
                   "os.read: EAGAIN True", "data still comes: b'data'",
                   "ticked: True"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_send_so_sndtimeo_gives_eagain_after_timeout():
    out = assert_same("""
        import socket, struct
        a, b = socket.socketpair()
        for size in (65536, 4096, 1):  # fill the buffers to the last byte
            while True:
                try:
                    a.send(b"f" * size, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 0, 300000))
        slack = 0 if HOOKED else 0.011
        t = Ticker()

        def writer():
            t0 = time.monotonic()
            try:
                return a.send(b"x" * 65536)
            except OSError as e:
                return type(e).__name__, errname(e), time.monotonic() - t0 >= 0.3 - slack

        print("send:", go(writer).join())
        print("ticked:", t.stop() > 0)
        a.close(); b.close()
    """)
    assert out == ["send: ('BlockingIOError', 'EAGAIN', True)", "ticked: True"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_socket_settimeout_raises_timeout_on_time():
    out = assert_same("""
        import socket
        a, b = socket.socketpair()
        a.settimeout(0.25)
        t = Ticker()

        def reader():
            t0 = time.monotonic()
            try:
                a.recv(10)
                return "data?"
            except socket.timeout as e:
                return type(e).__name__, str(e), time.monotonic() - t0 >= 0.25

        print("recv:", go(reader).join())
        r = go(a.recv, 10)
        settle(r)
        b.send(b"in time")
        print("in time:", r.join())
        print("ticked:", t.stop() > 0)
        a.close(); b.close()
    """)
    assert out == ["recv: ('TimeoutError', 'timed out', True)",
                   "in time: b'in time'", "ticked: True"]


@pytest.mark.timeout(120)
def test_user_nonblocking_socket_passes_through():
    # A socket the user made non-blocking must never park: EAGAIN at once
    # (a parking hook would hang here, since no data ever comes).
    out = assert_same("""
        import fcntl, socket

        def attempt(fn, *args):
            try:
                return fn(*args)
            except OSError as e:
                return type(e).__name__ + " " + errname(e)

        a, b = socket.socketpair()
        a.setblocking(False)
        print("setblocking(False) recv:", attempt(a.recv, 10))
        print("os.read:", attempt(os.read, a.fileno(), 10))
        c, d = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        print("SOCK_NONBLOCK recv:", attempt(c.recv, 10), c.gettimeout(),
              bool(fcntl.fcntl(c.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK))
        n = 0
        while True:
            r = attempt(c.send, b"x" * 4096)
            if not isinstance(r, int):
                break
            n += r
        print("send on a full buffer:", r, n > 0)
        l = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        l.bind(("127.0.0.1", 0)); l.listen()
        print("accept:", attempt(l.accept))
        s = socket.socket(); s.setblocking(False)
        print("connect_ex:", errno.errorcode.get(s.connect_ex(l.getsockname()), "0"))
        pr, pw = os.pipe2(os.O_NONBLOCK)
        print("pipe2(O_NONBLOCK) read:", attempt(os.read, pr, 10))
        for x in (a, b, c, d, l, s):
            x.close()
        os.close(pr); os.close(pw)
    """)
    assert out == [
        "setblocking(False) recv: BlockingIOError EAGAIN",
        "os.read: BlockingIOError EAGAIN",
        "SOCK_NONBLOCK recv: BlockingIOError EAGAIN 0.0 True",
        "send on a full buffer: BlockingIOError EAGAIN True",
        "accept: BlockingIOError EAGAIN",
        "connect_ex: EINPROGRESS",
        "pipe2(O_NONBLOCK) read: BlockingIOError EAGAIN",
    ]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sendall_10mb_between_coroutines_transfers_everything():
    out = assert_same("""
        import hashlib, socket
        a, b = socket.socketpair()
        data = os.urandom(10 * 1024 * 1024)
        t = Ticker()

        def writer():
            t0 = t.ticks
            b.sendall(data)
            b.shutdown(socket.SHUT_WR)
            return t.ticks - t0

        w = go(writer)
        settle(w)  # parked: nobody reads yet and the buffer is full
        t.wait_ticks(3)
        h = hashlib.sha256()
        n = 0
        while chunk := a.recv(1 << 16):
            h.update(chunk)
            n += len(chunk)
        print(n, h.hexdigest() == hashlib.sha256(data).hexdigest(),
              "ticks during sendall > 0:", w.join() > 0)
        t.stop()
        a.close(); b.close()
    """)
    assert out == [f"{10 * 1024 * 1024} True ticks during sendall > 0: True"]


@pytest.mark.timeout(120)
def test_recv_waitall_waits_for_everything():
    out = assert_same("""
        import socket
        a, b = socket.socketpair()
        r = go(a.recv, 30, socket.MSG_WAITALL)
        for piece in (b"A" * 10, b"B" * 10, b"C" * 10):
            settle(r)
            b.send(piece)
        print("full:", r.join())
        r = go(a.recv, 30, socket.MSG_WAITALL)
        settle(r)
        b.send(b"z" * 10)
        settle(r)
        b.close()
        print("partial at EOF:", r.join())
        a.close()
    """)
    assert out == ["full: b'AAAAAAAAAABBBBBBBBBBCCCCCCCCCC'",
                   "partial at EOF: b'zzzzzzzzzz'"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_readv_writev_on_socketpair():
    out = assert_same("""
        import hashlib, socket
        a, b = socket.socketpair()
        n = os.writev(b.fileno(), [b"ab", b"cde", b""])
        bufs = [bytearray(2), bytearray(10)]
        print("ready:", n, os.readv(a.fileno(), bufs), [bytes(x) for x in bufs])

        t = Ticker()
        def reader():
            bufs = [bytearray(3), bytearray(3)]
            n = os.readv(a.fileno(), bufs)
            return n, [bytes(x) for x in bufs]

        r = go(reader)
        settle(r)
        t.wait_ticks(3)
        os.writev(b.fileno(), [b"12", b"3456"])
        print("parked readv:", r.join())

        # A blocking writev larger than the buffers writes everything.
        parts = [os.urandom(1 << 20), os.urandom(3), os.urandom(2 << 20)]
        w = go(os.writev, b.fileno(), parts)
        settle(w)
        h = hashlib.sha256()
        total = 0
        while total < sum(map(len, parts)):
            chunk = a.recv(1 << 16)
            h.update(chunk)
            total += len(chunk)
        print("writev:", w.join() == total,
              h.hexdigest() == hashlib.sha256(b"".join(parts)).hexdigest())

        # More buffers than fit the hook's on-stack window (16).
        parts = [os.urandom(100000) for _ in range(40)]
        w = go(os.writev, b.fileno(), parts)
        settle(w)
        h = hashlib.sha256()
        total = 0
        while total < sum(map(len, parts)):
            chunk = a.recv(1 << 16)
            h.update(chunk)
            total += len(chunk)
        print("writev of 40:", w.join() == total,
              h.hexdigest() == hashlib.sha256(b"".join(parts)).hexdigest())
        t.stop()
        a.close(); b.close()
    """)
    assert out == ["ready: 5 5 [b'ab', b'cde\\x00\\x00\\x00\\x00\\x00\\x00\\x00']",
                   "parked readv: (6, [b'123', b'456'])", "writev: True True",
                   "writev of 40: True True"]


@pytest.mark.timeout(120)
def test_sendmsg_recvmsg_pass_an_fd():
    out = assert_same("""
        import array, socket
        a, b = socket.socketpair()
        pr, pw = os.pipe()

        def receiver():
            msg, anc, flags, addr = a.recvmsg(100, socket.CMSG_SPACE(4))
            fds = array.array("i")
            for level, kind, data in anc:
                if (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS):
                    fds.frombytes(data)
            return msg, list(fds)

        r = go(receiver)
        settle(r)
        n = b.sendmsg([b"fd", b" here"],
                      [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [pr]))])
        msg, fds = r.join()
        os.write(pw, b"through the passed fd")
        print(n, msg, len(fds), os.read(fds[0], 100))
        r = go(socket.recv_fds, a, 10, 1)
        settle(r)
        socket.send_fds(b, [b"again"], [pw])
        msg, fds2, flags, addr = r.join()
        os.write(fds2[0], b"!")
        print(msg, os.read(pr, 10))
        for fd in (pr, pw, *fds, *fds2):
            os.close(fd)
        a.close(); b.close()
    """)
    assert out == ["7 b'fd here' 1 b'through the passed fd'", "b'again' b'!'"]


@pytest.mark.timeout(120)
def test_recvfrom_sendto_udp():
    out = assert_same("""
        import socket
        u1 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u1.bind(("127.0.0.1", 0))
        u2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u2.bind(("127.0.0.1", 0))
        r = go(u1.recvfrom, 100)
        settle(r)
        print("sendto:", u2.sendto(b"0123456789", u1.getsockname()))
        data, addr = r.join()
        print("recvfrom:", data, addr == u2.getsockname())
        u2.sendto(b"abcdefghij", u1.getsockname())
        print("truncated recv:", u1.recv(4))
        u2.sendto(b"abcdefghij", u1.getsockname())
        msg, anc, flags, addr = u1.recvmsg(4)
        print("recvmsg:", msg, bool(flags & socket.MSG_TRUNC))
        u1.close(); u2.close()
    """)
    assert out == ["sendto: 10", "recvfrom: b'0123456789' True",
                   "truncated recv: b'abcd'", "recvmsg: b'abcd' True"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_recv_waitall_with_so_rcvtimeo_times_out_for_the_whole_call():
    # The kernel's SO_RCVTIMEO bounds a MSG_WAITALL recv as a whole: data
    # trickling in (10 bytes every 50 ms) does not restart it, and after
    # 0.3 s the call returns what it has.  Not acceptable: a timeout that
    # starts over with every piece (the call then waits for all 200 bytes).
    out = assert_same("""
        import socket, struct
        a, b = socket.socketpair()
        a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 300000))
        slack = 0 if HOOKED else 0.011

        def trickle():
            for _ in range(20):
                time.sleep(0.05)
                b.send(b"x" * 10)

        w = go(trickle)
        t0 = time.monotonic()
        n = len(a.recv(200, socket.MSG_WAITALL))
        print("partial:", 0 < n < 200, "not early:", time.monotonic() - t0 >= 0.3 - slack)
        w.join()
        a.close(); b.close()
    """)
    assert out == ["partial: True not early: True"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_send_so_sndtimeo_bounds_the_whole_tcp_send():
    # TCP's SO_SNDTIMEO bounds a blocking send as a whole: a slow reader
    # (32 KiB every 50 ms) does not restart it, so after 0.3 s the send
    # returns the partial count.  Not acceptable: a timeout that starts over
    # with every wait (the send then goes on until everything is written).
    out = assert_same("""
        import socket, struct
        l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen()
        c = socket.create_connection(l.getsockname())
        d, _ = l.accept()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        d.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 0, 300000))
        slack = 0 if HOOKED else 0.011
        stop = False

        def drain():
            while not stop:
                time.sleep(0.05)
                try:
                    d.recv(32768, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    pass

        r = go(drain)
        total = 1 << 20
        t0 = time.monotonic()
        n = c.send(b"y" * total)
        print("partial:", 0 < n < total, "not early:", time.monotonic() - t0 >= 0.3 - slack)
        stop = True
        r.join()
        for x in (c, d, l):
            x.close()
    """)
    assert out == ["partial: True not early: True"]


@pytest.mark.timeout(120)
def test_recv_peek_parks_and_leaves_the_data():
    out = assert_same("""
        import socket
        a, b = socket.socketpair()
        r = go(a.recv, 100, socket.MSG_PEEK)
        settle(r)
        b.send(b"peeked")
        print(r.join(), a.recv(100))
        a.close(); b.close()
    """)
    assert out == ["b'peeked' b'peeked'"]


@pytest.mark.timeout(120)
def test_recv_and_accept_wake_on_shutdown_from_another_coroutine():
    # shutdown() is the portable way to stop a reader or an acceptor.
    out = assert_same("""
        import socket

        a, b = socket.socketpair()
        r = go(attempt, a.recv, 10)
        settle(r)
        a.shutdown(socket.SHUT_RDWR)
        print("recv:", r.join())
        l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen()
        r = go(attempt, l.accept)
        settle(r)
        l.shutdown(socket.SHUT_RDWR)
        print("accept:", r.join())
        for x in (a, b, l):
            x.close()
    """)
    assert out == ["recv: b''", "accept: OSError EINVAL"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_write_with_the_gil_held_blocks_instead_of_failing():
    # faulthandler writes with the GIL held: the hook must not switch there
    # and must not give up with EAGAIN on a full socket, but block the
    # thread until the reader (another process, starting after 0.5 s)
    # drains it, as the real blocking write does.  The reader copes with a
    # non-blocking fd (see the next test), so only the writer is judged.
    out = assert_same("""
        import faulthandler, socket, subprocess
        a, b = socket.socketpair()
        for size in (65536, 4096, 1):  # fill the buffers to the last byte
            while True:
                try:
                    a.send(b"f" * size, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
        reader_code = (
            "import os, select, time\\n"
            "time.sleep(0.5)\\n"
            "data = b''\\n"
            "while True:\\n"
            "    select.select([0], [], [])\\n"
            "    try:\\n"
            "        chunk = os.read(0, 65536)\\n"
            "    except BlockingIOError:\\n"
            "        continue\\n"
            "    if not chunk:\\n"
            "        break\\n"
            "    data += chunk\\n"
            "print(b'Current thread' in data and b'File' in data)\\n")
        reader = subprocess.Popen([sys.executable, "-c", reader_code], stdin=b,
                                  stdout=subprocess.PIPE)
        b.close()
        faulthandler.dump_traceback(file=a)
        a.close()
        print("traceback delivered:", reader.communicate()[0])
    """)
    assert out == ["traceback delivered: b'True\\n'"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_socket_handed_to_a_child_process_is_blocking_there():
    # A socket the user created blocking and hands to a child as its stdin
    # (inetd-style servers, subprocess.Popen(stdin=conn)): the child shares
    # the file description and must find it blocking, so its first read
    # waits for the data.  Not acceptable: O_NONBLOCK set behind the user's
    # back leaking into the child (the read fails with EAGAIN, a read-all
    # stops short).
    out = assert_same("""
        import socket, subprocess
        a, b = socket.socketpair()
        child_code = (
            "import os, sys\\n"
            "print('blocking:', os.get_blocking(0), flush=True)\\n"
            "try:\\n"
            "    print('read:', os.read(0, 100), flush=True)\\n"
            "except OSError as e:\\n"
            "    print('read:', type(e).__name__, flush=True)\\n")
        child = subprocess.Popen([sys.executable, "-c", child_code], stdin=b,
                                 stdout=subprocess.PIPE, text=True)
        b.close()
        print("child", child.stdout.readline().strip())

        def child_waits_or_ended():
            if child.poll() is not None:
                return True
            try:
                with open(f"/proc/{child.pid}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
                with open(f"/proc/{child.pid}/wchan") as f:
                    return state == "S" and "futex" not in f.read()
            except OSError:
                return True

        wait_until(child_waits_or_ended)
        try:
            a.sendall(b"for the child")
        except BrokenPipeError:
            pass  # the child already gave up
        print("child", child.stdout.readline().strip())
        child.wait()
        a.close()
    """)
    assert out == ["child blocking: True", "child read: b'for the child'"]


@pytest.mark.timeout(120)
def test_eventfd_read_parks_until_written():
    # os.read on an eventfd goes through the read hook.
    out = assert_same("""
        import fcntl, struct
        efd = os.eventfd(0)
        t = Ticker()
        r = go(os.read, efd, 8)
        settle(r)
        t.wait_ticks(3)
        os.write(efd, struct.pack("Q", 5))
        print("read:", struct.unpack("Q", r.join()), "ticked:", t.stop() > 0)
        print("user sees blocking:", os.get_blocking(efd),
              not fcntl.fcntl(efd, fcntl.F_GETFL) & os.O_NONBLOCK)
        nb = os.eventfd(0, os.EFD_NONBLOCK)
        try:
            os.read(nb, 8)
        except OSError as e:
            print("EFD_NONBLOCK:", errname(e), os.get_blocking(nb))
        os.close(efd); os.close(nb)
    """)
    assert out == ["read: (5,) ticked: True", "user sees blocking: True True",
                   "EFD_NONBLOCK: EAGAIN False"]


@pytest.mark.timeout(120)
def test_eventfd_read_function_parks_until_written():
    # os.eventfd_read calls glibc's eventfd_read(), which reads through
    # glibc's internal __read: no read hook sees it.  The eventfd must still
    # behave as blocking (the hooks made it non-blocking in the kernel).
    out = assert_same("""
        efd = os.eventfd(0)
        t = Ticker()

        def reader():
            try:
                return os.eventfd_read(efd)
            except OSError as e:
                return type(e).__name__ + " " + errname(e)

        r = go(reader)
        settle(r)
        t.wait_ticks(3)
        os.eventfd_write(efd, 5)
        print("eventfd_read:", r.join(), "ticked:", t.stop() > 0)
        os.close(efd)
    """)
    assert out == ["eventfd_read: 5 ticked: True"]


@pytest.mark.timeout(120)
def test_write_large_to_pipe_transfers_everything():
    # A pipe is never made non-blocking; a big blocking write goes in pieces
    # that cannot block the thread, and the reader runs meanwhile.
    out = assert_same("""
        import fcntl, hashlib
        r, w = os.pipe()
        data = os.urandom(1 << 20)
        t = Ticker()

        def writer():
            n = os.write(w, data)
            os.close(w)
            return n

        wr = go(writer)
        settle(wr)
        t.wait_ticks(3)
        h = hashlib.sha256()
        while chunk := os.read(r, 65536):
            h.update(chunk)
        print("wrote:", wr.join(), h.hexdigest() == hashlib.sha256(data).hexdigest())
        print("kernel flag untouched:", kernel_nonblocking(r), os.get_blocking(r))
        print("ticked:", t.stop() > 0)
        os.close(r)
    """)
    assert out == [f"wrote: {1 << 20} True", "kernel flag untouched: False True",
                   "ticked: True"]


FOREIGN_PIPE_CHILD = """
    import fcntl
    fd = {fd}
    t = Ticker()

    def reader():
        t0 = t.ticks
        data = os.read(fd, 100)
        return data, t.ticks - t0

    r = go(reader)
    settle(r)
    t.wait_ticks(3)
    print("ready", flush=True)
    data, ticks = r.join()
    t.stop()
    print(data, "ticks during read > 0:", ticks > 0)
    print("F_GETFL O_NONBLOCK:", bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK),
          "kernel:", kernel_nonblocking(fd))
"""


def _talk_to(proc, payload, w):
    """Wait for the child's "ready" line, write payload to w, collect."""
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "the child never became ready"
        line = proc.stdout.readline()
        assert line == "ready\n", (line, proc.stderr.read() if proc.poll() is not None else "")
        os.write(w, payload)
        out, err = proc.communicate(timeout=30)
        return proc.returncode, out, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.timeout(120)
def test_read_foreign_pipe_cooperatively_leaves_o_nonblock_alone():
    # The read end comes from this (unhooked) test process: a foreign fd
    # whose file description the parent shares.  The hooked child reads it
    # in a coroutine while a ticker runs, and must never set O_NONBLOCK on it.
    results = {}
    for hooked in (True, False):
        r, w = os.pipe()
        try:
            proc = popen_snippet(FOREIGN_PIPE_CHILD.format(fd=r), hooked=hooked,
                                 pass_fds=(r,))
            rc, out, err = _talk_to(proc, b"from the parent", w)
            assert (rc, err) == (0, ""), (hooked, rc, out, err)
            assert os.get_blocking(r), "the child changed the shared file description"
            results[hooked] = out
        finally:
            os.close(r)
            os.close(w)
    assert results[True] == results[False]
    assert results[True].splitlines() == [
        "b'from the parent' ticks during read > 0: True",
        "F_GETFL O_NONBLOCK: False kernel: False",
    ]


@pytest.mark.timeout(120)
def test_recv_in_os_thread_on_hooked_socket_still_blocks():
    # A socket created by a hooked coroutine is non-blocking in the kernel;
    # an OS thread whose calls no hook may park (native threads, hooks off)
    # using it must still see a blocking recv, never EAGAIN.
    out = assert_same("""
        import contextlib, socket, threading
        a, b = socket.socketpair()
        result = []

        def reader():
            with interpose.no_hooks() if HOOKED else contextlib.nullcontext():
                result.append(a.recv(100))

        th = threading.Thread(target=reader)
        th.start()
        wait_until(lambda: _thread_blocked(th.native_id))
        b.send(b"to the thread")
        while th.is_alive():
            time.sleep(0.001)
        print(result)
        a.close(); b.close()
    """, env={"INTERPOSE_THREADS": "native"})
    assert out == ["[b'to the thread']"]


FOREIGN_SOCKET_CHILD = """
    import fcntl, hashlib, socket
    sock = socket.socket(fileno={fd})
    t = Ticker()

    def reader():
        t0 = t.ticks
        data = sock.recv(100)
        return data, t.ticks - t0

    r = go(reader)
    settle(r)
    t.wait_ticks(3)
    print("ready", flush=True)
    data, ticks = r.join()
    print(data, "ticks during recv > 0:", ticks > 0)
    payload = os.urandom(4 << 20)
    w = go(sock.sendall, payload)  # far more than the buffers: partial sends
    w.join()
    print("sent:", hashlib.sha256(payload).hexdigest())
    t.stop()
    print("F_GETFL O_NONBLOCK:", bool(fcntl.fcntl(sock.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK),
          "kernel:", kernel_nonblocking(sock.fileno()))
    sock.close()
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_foreign_socket_used_cooperatively_stays_blocking():
    # A socket inherited from this (unhooked) process: the hooks must not
    # set O_NONBLOCK on its shared file description (MSG_DONTWAIT per call
    # instead), and recv and a large sendall still work cooperatively.
    import hashlib
    import socket
    import threading

    results = {}
    for hooked in (True, False):
        mine, theirs = socket.socketpair()
        received = hashlib.sha256()
        proc = None
        try:
            proc = popen_snippet(FOREIGN_SOCKET_CHILD.format(fd=theirs.fileno()),
                                 hooked=hooked, pass_fds=(theirs.fileno(),))

            def drain():
                while data := mine.recv(1 << 16):
                    received.update(data)

            ready, _, _ = select.select([proc.stdout], [], [], 30)
            assert ready, "the child never became ready"
            assert proc.stdout.readline() == "ready\n"
            drainer = threading.Thread(target=drain)
            mine.sendall(b"from the parent")
            drainer.start()
            out, err = proc.communicate(timeout=60)
            theirs.close()
            mine.shutdown(socket.SHUT_RDWR)
            drainer.join(30)
            assert (proc.returncode, err) == (0, ""), (hooked, proc.returncode, out, err)
            assert theirs.fileno() == -1 and mine.getblocking()
            lines = out.splitlines()
            assert lines[1] == "sent: " + received.hexdigest(), (hooked, lines)
            results[hooked] = [lines[0], lines[2]]
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
            mine.close()
            theirs.close()
    assert results[True] == results[False]
    assert results[True] == ["b'from the parent' ticks during recv > 0: True",
                             "F_GETFL O_NONBLOCK: False kernel: False"]


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


@pytest.mark.timeout(120)
def test_recv_send_results_and_errno_match_libc_in_a_coroutine():
    # In a coroutine the hooks make the non-blocking attempt as a direct
    # system call, not through libc's wrapper (native/rawcall.h).  The
    # results must stay libc's: the count, -1 with the kernel's errno
    # (EFAULT for a bad buffer, EAGAIN, ENOTCONN), and errno untouched by a
    # call that succeeds.  The calls go through ctypes (which releases the
    # GIL, as the socket module does) so that a bad pointer can be passed.
    out = assert_same("""
        import ctypes, socket
        libc = ctypes.CDLL(None, use_errno=True)
        for name in ("recv", "send", "read", "write"):
            getattr(libc, name).restype = ctypes.c_ssize_t
        libc.recvfrom.restype = ctypes.c_ssize_t
        libc.sendto.restype = ctypes.c_ssize_t
        BAD = ctypes.c_void_p(8)  # unmapped: the kernel reports EFAULT

        def call(fn, *args):
            ctypes.set_errno(12345)
            n = fn(*args)
            err = ctypes.get_errno()
            return n, errno.errorcode.get(err, err)

        a, b = socket.socketpair()
        buf = ctypes.create_string_buffer(64)

        def body():
            print("send:", call(libc.send, a.fileno(), b"hello", 5, 0))
            print("recv:", call(libc.recv, b.fileno(), buf, 3, 0), buf.raw[:3])
            print("read:", call(libc.read, b.fileno(), buf, 64), buf.raw[:2])
            print("write:", call(libc.write, a.fileno(), b"xyz", 3))
            print("recv bad buffer:", call(libc.recv, b.fileno(), BAD, 3, 0))
            print("read bad buffer:", call(libc.read, b.fileno(), BAD, 3))
            print("recvfrom:", call(libc.recvfrom, b.fileno(), buf, 64, 0,
                                    None, None), buf.raw[:3])
            print("send bad buffer:", call(libc.send, a.fileno(), BAD, 3, 0))
            print("write bad buffer:", call(libc.write, a.fileno(), BAD, 3))
            print("recv dontwait:", call(libc.recv, b.fileno(), buf, 64,
                                         socket.MSG_DONTWAIT))
            t = socket.socket()
            print("send unconnected:", call(libc.send, t.fileno(), b"x", 1, 0))
            print("sendto unconnected:", call(libc.sendto, t.fileno(), b"x", 1,
                                              0, None, 0))
            t.close()

        go(body).join()
        a.close(); b.close()
    """)
    assert out == [
        "send: (5, 12345)",
        "recv: (3, 12345) b'hel'",
        "read: (2, 12345) b'lo'",
        "write: (3, 12345)",
        "recv bad buffer: (-1, 'EFAULT')",
        "read bad buffer: (-1, 'EFAULT')",
        "recvfrom: (3, 12345) b'xyz'",
        "send bad buffer: (-1, 'EFAULT')",
        "write bad buffer: (-1, 'EFAULT')",
        "recv dontwait: (-1, 'EAGAIN')",
        "send unconnected: (-1, 'EPIPE')",
        "sendto unconnected: (-1, 'EPIPE')",
    ]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_transfers_that_parked_leave_errno_untouched():
    # Regression: a hooked call that met EAGAIN, parked and then succeeded
    # returned with EAGAIN in errno (found by tests/test_rawcall.py for
    # recv); libc's wrappers leave errno alone on success.  Here the calls
    # that loop over several attempts: a 4 MiB sendfile and send to a
    # stream socket, and a write of 256 KiB to a pipe (in PIPE_BUF pieces
    # under interpose), each drained by another thread or coroutine.
    out = assert_same("""
        import ctypes, socket, tempfile
        libc = ctypes.CDLL(None, use_errno=True)
        for name in ("sendfile", "send", "write"):
            getattr(libc, name).restype = ctypes.c_ssize_t

        def call(fn, *args):
            ctypes.set_errno(12345)
            n = fn(*args)
            err = ctypes.get_errno()
            return n, errno.errorcode.get(err, err)

        def drain(read, size):
            got = 0
            while got < size:
                got += len(read(65536))
            return got

        size = 4 << 20
        f = tempfile.TemporaryFile()
        f.write(bytes(size)); f.flush()
        a, b = socket.socketpair()
        r = go(drain, b.recv, size)
        offset = ctypes.c_longlong(0)
        print("sendfile:", go(call, libc.sendfile, a.fileno(), f.fileno(),
                              ctypes.byref(offset), size).join(),
              "drained:", r.join())
        r = go(drain, b.recv, size)
        print("send:", go(call, libc.send, a.fileno(), bytes(size), size, 0).join(),
              "drained:", r.join())
        rfd, wfd = os.pipe()
        r = go(drain, lambda n: os.read(rfd, n), 256 << 10)
        print("pipe write:", go(call, libc.write, wfd, bytes(256 << 10),
                                256 << 10).join(), "drained:", r.join())
        for fd in (rfd, wfd):
            os.close(fd)
        f.close(); a.close(); b.close()
    """)
    assert out == [
        f"sendfile: ({4 << 20}, 12345) drained: {4 << 20}",
        f"send: ({4 << 20}, 12345) drained: {4 << 20}",
        f"pipe write: ({256 << 10}, 12345) drained: {256 << 10}",
    ]
