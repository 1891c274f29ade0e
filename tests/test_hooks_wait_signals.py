"""Signals during every wait hook (poll, ppoll, select, pselect, epoll_wait,
epoll_pwait): the caller's buffers are left as Linux leaves them, and the
call that follows the signal sees what it should (issue #19, 4).

Facts the snippets rely on (Linux): on EINTR select and pselect leave the
fd sets as the caller passed them, and select stores the time not slept in
its timeval; poll and ppoll write every revents (0 when nothing is ready);
epoll_wait writes no event.  CPython retries select, poll and epoll after
EINTR with the same arguments (PEP 475).

Each snippet runs plainly and under `python -m interpose run`; the outputs
must match.  A helper thread (a coroutine under interpose) sends SIGUSR1 to
the main thread with pthread_kill until the main thread reports that its
wait returned, so at least one signal lands during the wait."""
import pytest

from support.snippets import assert_same

pytestmark = pytest.mark.timeout(120)

PRELUDE = """
import ctypes, errno, os, select, signal, threading, time
hits = []
signal.signal(signal.SIGUSR1, lambda s, f: hits.append(s))
MAIN = threading.get_ident()
r, w = os.pipe()

def keep_signalling(done, then_write=False, min_hits=2):
    def run():
        while not done.is_set():
            signal.pthread_kill(MAIN, signal.SIGUSR1)
            time.sleep(0.01)
            if then_write and len(hits) >= min_hits:
                os.write(w, b"x")
                return
    t = threading.Thread(target=run)
    t.start()
    return t
"""


def test_python_waits_retry_after_signals_with_the_same_request():
    # Regression: select's probe wrote its empty answer into the caller's
    # sets and EINTR returned them so; CPython's retry then waited on empty
    # sets (until the timeout, or forever without one).
    assert_same(PRELUDE + """
def pipe_ready(wait):
    done = threading.Event()
    t = keep_signalling(done, then_write=True)
    try:
        return wait()
    finally:
        done.set()
        t.join()
        os.read(r, 1)
        hits.clear()

print("select timeout", pipe_ready(lambda: select.select([r], [], [], 60)) == ([r], [], []))
print("select forever", pipe_ready(lambda: select.select([r], [], [])) == ([r], [], []))
p = select.poll()
p.register(r, select.POLLIN)
print("poll", pipe_ready(lambda: p.poll(60000)) == [(r, select.POLLIN)])
print("poll forever", pipe_ready(lambda: p.poll()) == [(r, select.POLLIN)])
ep = select.epoll()
ep.register(r, select.EPOLLIN)
print("epoll", pipe_ready(lambda: ep.poll(60)) == [(r, select.EPOLLIN)])
ep.close()
""", prelude=False)


def test_c_waits_interrupted_leave_buffers_as_linux_does():
    # Through ctypes, which does not retry: each call returns EINTR, and
    # its buffers must hold what the kernel would leave there.
    assert_same(PRELUDE + """
libc = ctypes.CDLL(None, use_errno=True)

class FdSet(ctypes.Structure):
    _fields_ = [("bits", ctypes.c_ulong * 16)]
def fdset(*fds):
    s = FdSet()
    for fd in fds:
        s.bits[fd // 64] |= 1 << (fd % 64)
    return s
def members(s):
    return [fd for fd in range(1024) if s.bits[fd // 64] >> (fd % 64) & 1]

class Timeval(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("usec", ctypes.c_long)]
class Timespec(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]
class PollFd(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_int), ("events", ctypes.c_short),
                ("revents", ctypes.c_short)]
class EpollEvent(ctypes.Structure):
    _pack_ = 1
    _layout_ = "ms"  # what _pack_ always meant; 3.15 warns unless it is said
    _fields_ = [("events", ctypes.c_uint32), ("data", ctypes.c_uint64)]

def interrupted(call):
    done = threading.Event()
    t = keep_signalling(done)
    try:
        n = call()
        return n, errno.errorcode.get(ctypes.get_errno())
    finally:
        done.set()
        t.join()

readers, writers = fdset(r), fdset()
tv = Timeval(60, 0)
n = interrupted(lambda: libc.select(r + 1, ctypes.byref(readers),
                                   ctypes.byref(writers), None, ctypes.byref(tv)))
print("select", n, members(readers) == [r], members(writers),
      0 < tv.sec * 10**6 + tv.usec < 60 * 10**6)

readers = fdset(r)
n = interrupted(lambda: libc.select(r + 1, ctypes.byref(readers), None, None, None))
print("select forever", n, members(readers) == [r])

readers = fdset(r)
ts = Timespec(60, 0)
n = interrupted(lambda: libc.pselect(r + 1, ctypes.byref(readers), None, None,
                                    ctypes.byref(ts), None))
print("pselect", n, members(readers) == [r], (ts.sec, ts.nsec))

pfd = PollFd(r, select.POLLIN, 0x7f)
n = interrupted(lambda: libc.poll(ctypes.byref(pfd), 1, 60000))
print("poll", n, pfd.revents)

pfd = PollFd(r, select.POLLIN, 0x7f)
ts = Timespec(60, 0)
n = interrupted(lambda: libc.ppoll(ctypes.byref(pfd), 1, ctypes.byref(ts), None))
print("ppoll", n, pfd.revents, (ts.sec, ts.nsec))

ep = select.epoll()
ep.register(r, select.EPOLLIN)
events = (EpollEvent * 2)(EpollEvent(0xabc, 0xdef), EpollEvent(0xabc, 0xdef))
n = interrupted(lambda: libc.epoll_wait(ep.fileno(), events, 2, 60000))
print("epoll_wait", n, [(e.events, e.data) for e in events])
n = interrupted(lambda: libc.epoll_pwait(ep.fileno(), events, 2, -1, None))
print("epoll_pwait", n, [(e.events, e.data) for e in events])
ep.close()
print("handlers ran", len(hits) > 0)

# Ready at once, then a timeout: the sets hold the kernel's answer.
os.write(w, b"x")
readers, writers = fdset(r), fdset(w)
tv = Timeval(5, 0)
n = libc.select(w + 1, ctypes.byref(readers), ctypes.byref(writers), None,
                ctypes.byref(tv))
print("ready", n, members(readers) == [r], members(writers) == [w],
      0 < tv.sec * 10**6 + tv.usec <= 5 * 10**6)
os.read(r, 1)
readers = fdset(r)
tv = Timeval(0, 20000)
n = libc.select(r + 1, ctypes.byref(readers), None, None, ctypes.byref(tv))
print("timeout", n, members(readers), (tv.sec, tv.usec))
bad = os.dup(r)
os.close(bad)
readers = fdset(r, bad)
tv = Timeval(1, 0)
ctypes.set_errno(0)
n = libc.select(bad + 1, ctypes.byref(readers), None, None, ctypes.byref(tv))
print("EBADF", n, errno.errorcode.get(ctypes.get_errno()),
      members(readers) == sorted([r, bad]))
# An fd beyond the process's fd table: Linux ignores it (regression: the
# hook spun on it forever).
readers = fdset(r, 1000)
tv = Timeval(0, 20000)
n = libc.select(1001, ctypes.byref(readers), None, None, ctypes.byref(tv))
print("beyond the table", n, members(readers))
""", prelude=False)
