"""The state hooks (native/hooks_state.c, DESIGN §5-6): fcntl, ioctl(FIONBIO),
setsockopt, close, dup, dup2, dup3.

The user's view of an fd is the one libc would give (F_GETFL hides the
O_NONBLOCK the hooks set in the kernel; setblocking / F_SETFL / FIONBIO
change only the user's view), and close or dup2 onto an fd wakes the
coroutines waiting on it with EBADF instead of leaving them asleep.
"""
import pytest

from support.snippets import assert_same, check_ok, run_hooked

# Prints the user's view of an fd's blocking mode; under the preload also
# asserts that the kernel keeps the fd non-blocking (`ours` = made by a hook).
VIEW_PRELUDE = """
import fcntl, socket, struct, termios

def view(label, fd, ours=True):
    fd = fd if isinstance(fd, int) else fd.fileno()
    nb = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK)
    print(f"{label}: O_NONBLOCK={nb} get_blocking={os.get_blocking(fd)}")
    if HOOKED and ours:
        assert kernel_nonblocking(fd), f"{label}: the hooks' O_NONBLOCK is gone"
"""


def same(code):
    import textwrap
    return assert_same(VIEW_PRELUDE + textwrap.dedent(code))


@pytest.mark.timeout(120)
def test_fcntl_getfl_shows_the_users_view():
    out = same("""
        s = socket.socket()
        view("new", s)
        print("getblocking:", s.getblocking(), s.gettimeout())
        s.setblocking(False)
        view("setblocking(False)", s)
        s.setblocking(True)
        view("setblocking(True)", s)
        s.settimeout(1.5)
        view("settimeout(1.5)", s)
        s.settimeout(None)
        view("settimeout(None)", s)
        os.set_blocking(s.fileno(), False)
        view("os.set_blocking(False)", s)
        os.set_blocking(s.fileno(), True)
        view("os.set_blocking(True)", s)
        fl = fcntl.fcntl(s.fileno(), fcntl.F_GETFL)
        fcntl.fcntl(s.fileno(), fcntl.F_SETFL, fl | os.O_NONBLOCK)
        view("F_SETFL O_NONBLOCK", s)
        fcntl.fcntl(s.fileno(), fcntl.F_SETFL, fl & ~os.O_NONBLOCK)
        view("F_SETFL 0", s)
        fcntl.ioctl(s.fileno(), termios.FIONBIO, struct.pack("i", 1))
        view("FIONBIO 1", s)
        fcntl.ioctl(s.fileno(), termios.FIONBIO, struct.pack("i", 0))
        view("FIONBIO 0", s)
        print("full F_GETFL equal:", fcntl.fcntl(s.fileno(), fcntl.F_GETFL) == fl)

        a, b = socket.socketpair()
        view("socketpair", a); view("socketpair peer", b)
        l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen()
        c = socket.create_connection(l.getsockname())
        acc, _ = l.accept()
        view("listener", l); view("connected", c); view("accepted", acc)
        d = os.dup(a.fileno())
        view("dup", d)
        a.setblocking(False)
        view("original set non-blocking", a)
        view("its dup (same file description)", d)
        a.setblocking(True)
        r, w = os.pipe()
        view("pipe", r, ours=False); view("pipe write end", w, ours=False)
        print("pipe kernel:", kernel_nonblocking(r), kernel_nonblocking(w))
        for x in (s, a, b, l, c, acc):
            x.close()
        for fd in (d, r, w):
            os.close(fd)
    """)
    views = [line for line in out if "O_NONBLOCK=" in line]
    blocking = "O_NONBLOCK=False get_blocking=True"
    nonblocking = "O_NONBLOCK=True get_blocking=False"
    assert views == [
        f"new: {blocking}",
        f"setblocking(False): {nonblocking}",
        f"setblocking(True): {blocking}",
        f"settimeout(1.5): {nonblocking}",  # CPython's own O_NONBLOCK
        f"settimeout(None): {blocking}",
        f"os.set_blocking(False): {nonblocking}",
        f"os.set_blocking(True): {blocking}",
        f"F_SETFL O_NONBLOCK: {nonblocking}",
        f"F_SETFL 0: {blocking}",
        f"FIONBIO 1: {nonblocking}",
        f"FIONBIO 0: {blocking}",
        f"socketpair: {blocking}",
        f"socketpair peer: {blocking}",
        f"listener: {blocking}",
        f"connected: {blocking}",
        f"accepted: {blocking}",
        f"dup: {blocking}",
        f"original set non-blocking: {nonblocking}",
        f"its dup (same file description): {nonblocking}",
        f"pipe: {blocking}",
        f"pipe write end: {blocking}",
    ]
    assert "pipe kernel: False False" in out


@pytest.mark.timeout(120)
def test_recv_follows_the_users_blocking_mode_as_it_changes():
    # Non-blocking in the user's view: EAGAIN at once; blocking again: the
    # recv parks until data comes (and the kernel fd stayed non-blocking).
    out = same("""
        a, b = socket.socketpair()

        def attempt():
            try:
                return a.recv(10)
            except OSError as e:
                return errname(e)

        for how in ("setblocking", "F_SETFL", "FIONBIO", "os.set_blocking"):
            fd = a.fileno()
            if how == "setblocking":
                a.setblocking(False)
            elif how == "F_SETFL":
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
            elif how == "FIONBIO":
                fcntl.ioctl(fd, termios.FIONBIO, struct.pack("i", 1))
            else:
                os.set_blocking(fd, False)
            print(how, "non-blocking:", attempt())
            a.setblocking(True)
            r = go(attempt)
            settle(r)
            b.send(how.encode()[:10])
            print(how, "blocking again:", r.join())
        view("end", a)
        a.close(); b.close()
    """)
    assert out == [
        "setblocking non-blocking: EAGAIN", "setblocking blocking again: b'setblockin'",
        "F_SETFL non-blocking: EAGAIN", "F_SETFL blocking again: b'F_SETFL'",
        "FIONBIO non-blocking: EAGAIN", "FIONBIO blocking again: b'FIONBIO'",
        "os.set_blocking non-blocking: EAGAIN",
        "os.set_blocking blocking again: b'os.set_blo'",
        "end: O_NONBLOCK=False get_blocking=True",
    ]


@pytest.mark.timeout(120)
def test_fcntl_other_commands_pass_through():
    out = same("""
        import tempfile
        a, b = socket.socketpair()
        fd = a.fileno()
        print("FD_CLOEXEC:", fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)
        fcntl.fcntl(fd, fcntl.F_SETFD, 0)
        print("cleared:", fcntl.fcntl(fd, fcntl.F_GETFD), os.get_inheritable(fd))
        d = fcntl.fcntl(fd, fcntl.F_DUPFD, 100)
        print("F_DUPFD >= 100:", d >= 100, fcntl.fcntl(d, fcntl.F_GETFD))
        view("F_DUPFD copy", d)
        d2 = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 200)
        print("F_DUPFD_CLOEXEC:", d2 >= 200, fcntl.fcntl(d2, fcntl.F_GETFD))
        view("F_DUPFD_CLOEXEC copy", d2)
        r = go(os.read, d, 10)
        settle(r)
        b.send(b"via F_DUPFD")
        print("read on the copy:", r.join())
        with tempfile.TemporaryFile() as f:
            fl = fcntl.fcntl(f.fileno(), fcntl.F_GETFL)
            fcntl.fcntl(f.fileno(), fcntl.F_SETFL, fl | os.O_APPEND)
            print("regular file O_APPEND:",
                  bool(fcntl.fcntl(f.fileno(), fcntl.F_GETFL) & os.O_APPEND))
            print("lockf:", fcntl.lockf(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB))
        print("bad fd:", end=" ")
        try:
            fcntl.fcntl(12345, fcntl.F_GETFL)
        except OSError as e:
            print(errname(e))
        for x in (d, d2):
            os.close(x)
        a.close(); b.close()
    """)
    assert out[:2] == ["FD_CLOEXEC: 1", "cleared: 0 True"]
    assert "read on the copy: b'via F_DUPF'" in out
    assert "bad fd: EBADF" in out


@pytest.mark.timeout(60)
def test_recv_wakes_with_ebadf_on_close():
    # Plain libc leaves a thread blocked in recv asleep when another thread
    # closes the fd (Linux keeps the file alive), so this runs hooked only.
    # Acceptable: the waiter wakes with EBADF.  Unacceptable: it sleeps on
    # (the snippet times out), gets data or EOF, or the process crashes.
    out = check_ok(run_hooked("""
        import socket
        a, b = socket.socketpair()
        t = Ticker()

        def reader():
            try:
                return repr(a.recv(10))
            except OSError as e:
                return type(e).__name__ + " " + errname(e)

        r = go(reader)
        settle(r)
        a.close()
        print("recv:", r.join(timeout=10))
        # The number is free and reusable; the new socket works normally.
        c, d = socket.socketpair()
        r = go(c.recv, 10)
        settle(r)
        d.send(b"reused")
        print("new socket:", r.join(timeout=10), "ticked:", t.stop() > 0)
        for x in (b, c, d):
            x.close()
    """, timeout=30))
    assert out == ["recv: OSError EBADF", "new socket: b'reused' ticked: True"]


@pytest.mark.timeout(60)
def test_accept_and_read_wake_with_ebadf_on_close():
    out = check_ok(run_hooked("""
        import select, socket
        l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen()

        r = go(attempt, l.accept)
        settle(r)
        l.close()
        print("accept:", r.join(timeout=10))
        a, b = socket.socketpair()
        fd = a.fileno()
        r = go(attempt, os.read, fd, 10)
        settle(r)
        os.close(fd)
        a.detach()
        print("os.read:", r.join(timeout=10))
        b.close()
    """, timeout=30))
    assert out == ["accept: OSError EBADF", "os.read: OSError EBADF"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("inheritable", [True, False], ids=["dup2", "dup3"])
def test_recv_wakes_with_ebadf_on_dup2_over_its_fd(inheritable):
    # os.dup2(..., inheritable=False) is dup3(O_CLOEXEC).  Linux would leave
    # a thread blocked on the old file asleep: hooked only.
    out = check_ok(run_hooked(f"""
        import socket
        a, b = socket.socketpair()
        c, d = socket.socketpair()

        def reader():
            try:
                return repr(a.recv(10))
            except OSError as e:
                return type(e).__name__ + " " + errname(e)

        r = go(reader)
        settle(r)
        os.dup2(c.fileno(), a.fileno(), inheritable={inheritable})
        print("recv:", r.join(timeout=10))
        # a's number now names c's socket, and waits on it work.
        r = go(a.recv, 10)
        settle(r)
        d.send(b"to c")
        print("after dup2:", r.join(timeout=10))
        print("blocking view:", os.get_blocking(a.fileno()), kernel_nonblocking(a.fileno()))
        for x in (a, b, c, d):
            x.close()
    """, timeout=30))
    assert out == ["recv: OSError EBADF", "after dup2: b'to c'",
                   "blocking view: True True"]


@pytest.mark.timeout(120)
def test_recv_on_dup_follows_nonblocking_set_through_the_original():
    # O_NONBLOCK belongs to the open file description, which a dup shares:
    # after a.setblocking(False), a recv on a dup of a fails with EAGAIN at
    # once.  A hook that keeps treating the dup as blocking parks instead
    # (reported here as "parked", then unblocked with data).
    out = same("""
        a, b = socket.socketpair()
        d = socket.socket(fileno=os.dup(a.fileno()))
        a.setblocking(False)
        view("dup", d)

        def attempt():
            try:
                return repr(d.recv(10))
            except OSError as e:
                return errname(e)

        r = go(attempt)
        settle(r)
        if not r.done():
            b.send(b"unblock")
            print("recv on the dup: parked, then", r.join())
        else:
            print("recv on the dup:", r.join())
        for x in (a, b, d):
            x.close()
    """)
    assert out == ["dup: O_NONBLOCK=True get_blocking=False",
                   "recv on the dup: EAGAIN"]


@pytest.mark.timeout(120)
def test_dup_then_close_original_keeps_working():
    # The epoll trap of DESIGN §5: after dup(fd); close(fd) a registration
    # by the old number can never be removed; waits on the dup still work.
    out = same("""
        a, b = socket.socketpair()
        r = go(a.recv, 10)  # registers a's number with the scheduler
        settle(r)
        b.send(b"one")
        print(r.join())
        d = socket.socket(fileno=os.dup(a.fileno()))
        a.close()
        r = go(d.recv, 10)
        settle(r)
        b.send(b"two")
        print("dup after close:", r.join())
        view("dup", d)
        # Reuse of the closed number by a new socket.
        c, e = socket.socketpair()
        r = go(c.recv, 10)
        settle(r)
        e.send(b"three")
        print("new socket:", r.join())
        r = go(d.recv, 10)
        settle(r)
        b.send(b"four")
        print("dup again:", r.join())
        for x in (b, c, d, e):
            x.close()
    """)
    assert out == ["b'one'", "dup after close: b'two'",
                   "dup: O_NONBLOCK=False get_blocking=True",
                   "new socket: b'three'", "dup again: b'four'"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_setsockopt_timeouts_read_back_and_apply_to_dups():
    # SO_RCVTIMEO belongs to the socket, which every dup of its fd shares:
    # set before or after the dup, through either fd, it applies to both.
    # A read that should time out but does not is reported, after 3 s, as
    # "no timeout" and unblocked with data (no hang).
    out = same("""
        a, b = socket.socketpair()
        a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 200000))
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 1, 500000))
        for opt in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
            print(struct.unpack("ll", a.getsockopt(socket.SOL_SOCKET, opt, 16)))
        slack = 0 if HOOKED else 0.011

        def timed_read(fd):
            t0 = time.monotonic()
            try:
                return repr(os.read(fd, 10))
            except OSError as e:
                return errname(e), time.monotonic() - t0 >= 0.2 - slack

        def read_with_rescue(label, fd):
            r = go(timed_read, fd)
            settle(r)
            t0 = time.monotonic()
            wait_until(lambda: r.done() or time.monotonic() - t0 > 3)
            if not r.done():
                b.send(b"rescue")
                print(label, "no timeout:", r.join())
            else:
                print(label, r.join())

        d = os.dup(a.fileno())
        read_with_rescue("dup made after the timeout:", d)
        a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 0))
        r = go(timed_read, d)
        t0 = time.monotonic()
        wait_until(lambda: time.monotonic() - t0 > 0.4)
        print("timeout cleared through the original, dup still waiting:", not r.done())
        b.send(b"late data")
        print(r.join())
        try:  # drop what a wrong timeout left unread
            a.recv(100, socket.MSG_DONTWAIT)
        except BlockingIOError:
            pass
        os.close(d)

        d = os.dup(a.fileno())
        a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 200000))
        read_with_rescue("timeout set after the dup:", d)
        os.close(d); a.close(); b.close()
    """)
    assert out == ["(0, 200000)", "(1, 500000)",
                   "dup made after the timeout: ('EAGAIN', True)",
                   "timeout cleared through the original, dup still waiting: True",
                   "b'late data'",
                   "timeout set after the dup: ('EAGAIN', True)"]
