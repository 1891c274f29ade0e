"""The wait hooks (native/hooks_wait.c, DESIGN §6): poll, select, epoll_wait
-- and Python's select module and selectors built on them -- return exactly
what the kernel returns (ready fds, revents, empty lists on timeout, never
before the timeout), while the coroutine waiting parks and others run.

Each snippet runs hooked and plain (go() = OS threads, the libc baseline)
and both must print the same.  fd numbers differ between the runs (the
runtime holds an epoll fd and an eventfd), so snippets print names.
"""
import textwrap

import pytest

from support.snippets import assert_same

# What the wait tests share: pairs a/b (a readable once b writes), the
# names of fds, and a ticker.
WAIT_PRELUDE = """
import select, selectors, socket
pairs = {name: socket.socketpair() for name in ("p", "q", "r")}
names = {}
for name, (x, y) in pairs.items():
    names[x.fileno()] = name
    names[y.fileno()] = name + "'"

def named(fds):
    return sorted(names[f if isinstance(f, int) else f.fileno()] for f in fds)

def close_all():
    for x, y in pairs.values():
        x.close(); y.close()
"""


def same(code):
    return assert_same(WAIT_PRELUDE + textwrap.dedent(code))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_poll_times_out_empty_and_never_early():
    out = same("""
        p, q = pairs["p"][0], pairs["q"][0]
        t = Ticker()

        def waiter(timeout_ms):
            po = select.poll()
            po.register(p, select.POLLIN)
            po.register(q, select.POLLIN | select.POLLPRI)
            t0, k = time.monotonic(), t.ticks
            res = po.poll(timeout_ms)
            return res, time.monotonic() - t0 >= timeout_ms / 1000, t.ticks > k

        print("poll:", go(waiter, 300).join())
        print("poll 1 ms:", go(waiter, 1).join()[:2])
        t.stop()
        close_all()
    """)
    assert out == ["poll: ([], True, True)", "poll 1 ms: ([], True)"]


@pytest.mark.timeout(120)
def test_poll_reports_ready_fds_like_the_kernel():
    out = same("""
        (p, p2), (q, q2), (r, r2) = pairs.values()
        q2.send(b"x")
        r2.close()
        closed = socket.socket()
        closed_fd = closed.fileno()
        closed.close()  # a closed number: POLLNVAL
        po = select.poll()
        po.register(p, select.POLLIN)
        po.register(p2, select.POLLOUT)
        po.register(q, select.POLLIN | select.POLLOUT)
        po.register(r, select.POLLIN | select.POLLRDHUP)
        po.register(closed_fd, select.POLLIN)
        names[closed_fd] = "closed"
        for timeout in (0, 1000, None):
            print(sorted((names[fd], ev) for fd, ev in po.poll(timeout)))

        # A poll parked with no timeout wakes when another task writes.
        po = select.poll()
        po.register(p, select.POLLIN)
        w = go(po.poll)
        settle(w)
        p2.send(b"wake")
        print("woken:", [(names[fd], ev) for fd, ev in w.join()])
        close_all()
    """)
    import select as s
    expected = sorted([("p'", s.POLLOUT), ("q", s.POLLIN | s.POLLOUT),
                       ("r", s.POLLIN | s.POLLRDHUP | s.POLLHUP),
                       ("closed", s.POLLNVAL)])
    assert out == [str(expected)] * 3 + [f"woken: [('p', {s.POLLIN})]"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_select_times_out_empty_and_reports_ready_fds():
    out = same("""
        (p, p2), (q, q2), (r, r2) = pairs.values()
        t = Ticker()

        def waiter(timeout):
            t0, k = time.monotonic(), t.ticks
            res = select.select([p, q], [], [p], timeout)
            return res, time.monotonic() - t0 >= timeout, t.ticks > k

        print("timeout:", go(waiter, 0.3).join())
        q2.send(b"x")
        for timeout in (0, 1.0, None):
            rl, wl, xl = select.select([p, q, r], [p2, q2], [p, q], timeout)
            print(named(rl), named(wl), named(xl))
        w = go(select.select, [p, r], [], [], None)
        settle(w)
        r2.send(b"wake")
        print("woken:", [named(x) for x in w.join()])
        t.stop()
        close_all()
    """)
    assert out == ["timeout: (([], [], []), True, True)"] + \
        ["['q'] [\"p'\", \"q'\"] []"] * 3 + ["woken: [['r'], [], []]"]


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("selector", ["DefaultSelector", "PollSelector",
                                      "SelectSelector", "EpollSelector"])
def test_selector_times_out_and_reports_ready(selector):
    out = same(f"""
        (p, p2), (q, q2), (r, r2) = pairs.values()
        sel = selectors.{selector}()
        sel.register(p, selectors.EVENT_READ, "p")
        sel.register(q, selectors.EVENT_READ, "q")
        sel.register(r2, selectors.EVENT_WRITE, "r'")
        sel.register(q2, selectors.EVENT_READ, "q'")
        t = Ticker()
        sel.unregister(r2)

        def waiter(timeout):
            t0, k = time.monotonic(), t.ticks
            events = sel.select(timeout)
            return events, time.monotonic() - t0 >= timeout, t.ticks > k

        print("timeout:", go(waiter, 0.3).join())
        sel.register(r2, selectors.EVENT_WRITE, "r'")
        q2.send(b"x")
        for timeout in (0, 1.0, None):
            print(sorted((key.data, mask) for key, mask in sel.select(timeout)))
        sel.unregister(r2)
        q.recv(10)
        w = go(sel.select, None)
        settle(w)
        p2.send(b"wake")
        print("woken:", [(key.data, mask) for key, mask in w.join()])
        t.stop()
        sel.close()
        close_all()
    """)
    assert out == ["timeout: ([], True, True)"] + \
        ["[('q', 1), (\"r'\", 2)]"] * 3 + ["woken: [('p', 1)]"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_epoll_poll_in_coroutine_is_cooperative():
    out = same("""
        (p, p2), (q, q2), (r, r2) = pairs.values()
        ep = select.epoll()
        ep.register(p, select.EPOLLIN)
        ep.register(q, select.EPOLLIN | select.EPOLLET)
        t = Ticker()

        def waiter(timeout):
            t0, k = time.monotonic(), t.ticks
            events = ep.poll(timeout)
            return ([(names[fd], ev) for fd, ev in events],
                    time.monotonic() - t0 >= timeout, t.ticks > k)

        print("timeout:", go(waiter, 0.3).join())
        w = go(waiter, 30)
        settle(w)
        t.wait_ticks(3)
        q2.send(b"x")
        print("woken:", w.join())
        print("edge consumed:", ep.poll(0))
        p2.send(b"y")
        print("level:", [(names[fd], ev) for fd, ev in ep.poll(1.0)],
              [(names[fd], ev) for fd, ev in ep.poll(1.0)])

        # The epoll fd is itself pollable, and an epoll inside a select.
        ep2 = select.epoll()
        ep2.register(r, select.EPOLLIN)
        names[ep2.fileno()] = "ep2"
        w = go(select.select, [ep2], [], [], 30)
        settle(w)
        r2.send(b"z")
        print("epoll fd readable:", named(w.join()[0]))
        t.stop()
        ep.close(); ep2.close()
        close_all()
    """)
    assert out == ["timeout: ([], True, True)",
                   "woken: ([('q', 1)], False, True)",
                   "edge consumed: []",
                   "level: [('p', 1)] [('p', 1)]",
                   "epoll fd readable: ['ep2']"]


@pytest.mark.timeout(120)
def test_poll_with_many_fds_wakes_on_the_last():
    # More fds than the hook's small on-stack arrays hold.
    out = assert_same("""
        import select, socket
        pairs = [socket.socketpair() for _ in range(40)]
        po = select.poll()
        for a, b in pairs:
            po.register(a, select.POLLIN)
        index = {a.fileno(): i for i, (a, b) in enumerate(pairs)}
        w = go(po.poll, 30000)
        settle(w)
        pairs[-1][1].send(b"x")
        print("poll:", [(index[fd], ev) for fd, ev in w.join()])
        pairs[-1][0].recv(1)
        w = go(select.select, [a for a, b in pairs], [], [], 30)
        settle(w)
        pairs[17][1].send(b"x")
        print("select:", sorted(index[s.fileno()] for s in w.join()[0]))
        for a, b in pairs:
            a.close(); b.close()
    """)
    assert out == ["poll: [(39, 1)]", "select: [17]"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_wait_calls_without_fds_sleep_cooperatively():
    # select([], [], [], t) and an empty poll are the classic portable sleeps.
    out = same("""
        t = Ticker()

        def sleeps():
            lines = []
            for label, fn, timeout in (
                ("select", lambda: select.select([], [], [], 0.2), 0.2),
                ("poll", lambda: select.poll().poll(200), 0.2),
                ("epoll", lambda: select.epoll().poll(0.2), 0.2),
            ):
                t0, k = time.monotonic(), t.ticks
                res = fn()
                lines.append(f"{label}: {res} not early: {time.monotonic() - t0 >= timeout}"
                             f" ticked: {t.ticks > k}")
            return lines

        for line in go(sleeps).join():
            print(line)
        t.stop()
        close_all()
    """)
    assert out == ["select: ([], [], []) not early: True ticked: True",
                   "poll: [] not early: True ticked: True",
                   "epoll: [] not early: True ticked: True"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_epoll_wait_wakes_when_another_coroutine_registers_a_ready_fd():
    out = same("""
        (p, p2), (q, q2), (r, r2) = pairs.values()
        q2.send(b"already readable")
        ep = select.epoll()
        ep.register(p, select.EPOLLIN)
        w = go(ep.poll, 30)
        settle(w)
        ep.register(q, select.EPOLLIN)
        print("woken:", [(names[fd], ev) for fd, ev in w.join()])
        ep.modify(q, select.EPOLLOUT)
        w = go(ep.poll, 30)
        print("modified:", [(names[fd], ev) for fd, ev in w.join()])
        ep.close()
        close_all()
    """)
    assert out == ["woken: [('q', 1)]", "modified: [('q', 4)]"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_poll_that_parked_leaves_errno_untouched():
    # Regression: errno is the OS thread's, and while a coroutine was parked
    # in poll the hub (draining its eventfd ends in EAGAIN) and the other
    # coroutines changed it, so a poll that parked and then succeeded
    # returned with their errno.
    # libc's poll leaves errno alone on success; ctypes shows it after the
    # call (preset so that a change shows).
    out = assert_same("""
        import ctypes, select, socket
        libc = ctypes.CDLL(None, use_errno=True)

        class pollfd(ctypes.Structure):
            _fields_ = [("fd", ctypes.c_int), ("events", ctypes.c_short),
                        ("revents", ctypes.c_short)]

        a, b = socket.socketpair()

        def poller():
            p = pollfd(b.fileno(), select.POLLIN, 0)
            ctypes.set_errno(12345)
            n = libc.poll(ctypes.byref(p), 1, 60000)
            err = ctypes.get_errno()
            return n, p.revents == select.POLLIN, errno.errorcode.get(err, err)

        t = go(poller)
        settle(t)
        try:
            os.close(-1)  # sets this thread's errno (EBADF); not the poller's
        except OSError:
            pass
        a.send(b"x")
        print("poll:", t.join())
        a.close(); b.close()
    """)
    assert out == ["poll: (1, True, 12345)"]
