"""The direct system calls of native/rawcall.h, which a hooked data call
makes for its non-blocking attempt inside a coroutine (hookcore.c's
io_loop; the mapping of calls to system calls is hooks_data.c's
read_attempt/write_attempt), checked against libc's wrappers on both
architectures: natively (x86-64 here) and, for aarch64, under qemu-user
(the aarch64 code cannot run any other way on this machine).

Two levels:
 * tests/native/rawcall_test.c calls IP_RAWCALL and libc's wrapper on the
   same fresh fds for every system call the hooks can make directly
   (read, readv, recvfrom, recvmsg, write, writev, sendto, sendmsg) on
   their success and error paths, and compares everything a caller can
   observe; it also checks the errno conversion at the edges of glibc's
   error range.  Cross-built static for aarch64 and run by qemu-aarch64.
 * DATA_CALLS, a Python program whose threads make every data call on
   sockets, runs plainly and with the library preloaded (threads become
   coroutines), in the aarch64 guest and natively; the transcripts must be
   equal.  tests/native/libc_spy.c, preloaded after libinterpose, counts
   the calls libinterpose passes to libc's wrappers per fd: 0 for every
   case that moved data proves the calls were made directly.

What runs directly: in a coroutine, the fds a hook retries (sockets, made
non-blocking by us or not) carry MSG_DONTWAIT, so read, readv, write and
writev on a socket become recvfrom, recvmsg, sendto and sendmsg; the
direct read/readv/write/writev system calls are reached only by a
non-socket fd we made non-blocking, which no hook makes today.  Calls on
the user's own O_NONBLOCK fds, with MSG_DONTWAIT from the user, or on a
closed fd go to libc (the "libc_path_calls" case shows the spy sees them).

qemu-user emulates EFAULT itself: it checks guest pointers before making
the host system call (so a recvfrom with a bad address length consumes no
data there, where the kernel does); plain and hooked runs agree either
way, and the result still comes back through the asm's x0 and the errno
conversion."""
import ast
import os
import subprocess

import pytest

from support.aarch64 import cross_cc, guest, qemu_aarch64
from support.snippets import run_hooked, run_plain

HERE = os.path.dirname(os.path.abspath(__file__))
NATIVE_TESTS = os.path.join(HERE, "native")
CHECKOUT = os.path.dirname(HERE)
CFLAGS = ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", "-D_GNU_SOURCE"]

# Every case below runs in a thread (a coroutine under the preload); under
# the preload the program then prints two lines the plain run has not:
# the spy's count of libc-wrapper calls per case, and whether every case
# ran in a coroutine, with the scheduler's park count.
DATA_CALLS = r'''
import ctypes, errno, hashlib, os, socket, struct, threading

try:
    from interpose import _autostart
    import interpose
    HOOKED = _autostart.booted()
except ImportError:
    HOOKED = False
if HOOKED:
    MAIN, MAIN_OS_THREAD = interpose.current(), threading.get_native_id()
LIBC = ctypes.CDLL(None, use_errno=True)
SPY = getattr(LIBC, "libc_spy_take", None)
if SPY is not None:
    SPY.restype = ctypes.c_uint
for name in ("recv", "send", "recvfrom", "read", "write"):
    getattr(LIBC, name).restype = ctypes.c_ssize_t
BAD = ctypes.c_void_p(8)  # unmapped: EFAULT
spied, coroutines = {}, set()


def say(line):
    # At once: a run that hangs shows how far it got.
    print(line, flush=True)


def errname(e):
    return errno.errorcode.get(e.errno, e.errno)


def outcome(fn, *args):
    try:
        return repr(fn(*args))
    except OSError as e:
        return type(e).__name__ + " " + errname(e)


def cfun(fn, *args):
    # A libc call through ctypes: the result and errno, errno preset so
    # that a success must leave it.
    ctypes.set_errno(12345)
    n = fn(*args)
    err = ctypes.get_errno()
    return n, errno.errorcode.get(err, err)


def track(*socks):
    # New fds: forget the spy's counts of earlier owners of the numbers.
    if SPY is not None:
        for s in socks:
            SPY(s if isinstance(s, int) else s.fileno())
    return socks


def take(case, *socks):
    if SPY is not None:
        spied[case] = spied.get(case, 0) + sum(
            SPY(s if isinstance(s, int) else s.fileno()) for s in socks)


def case(fn):
    # Run in a thread (a coroutine under the preload), as every call below
    # must be made from a coroutine to take the direct path.
    def body():
        if HOOKED:
            # A coroutine of its own, on the main OS thread.
            me = interpose.current()
            coroutines.add(me is not None and me is not MAIN
                           and threading.get_native_id() == MAIN_OS_THREAD)
        fn()
    t = threading.Thread(target=body, name=fn.__name__)
    t.start()
    t.join()
    return fn


def wait_parked(before):
    # Hooked: until a coroutine parked since `before` (the reader waits in
    # the hook); plain: nothing to wait for, the outcome is the same.
    if HOOKED:
        for _ in range(100000):
            if interpose.statistics().parks > before:
                return
            interpose.sleep(0)
        raise AssertionError("never parked")


def start_parked(target):
    # A thread running target, returned once it has parked (see wait_parked).
    before = parks()
    t = threading.Thread(target=target)
    t.start()
    wait_parked(before)
    return t


def parks():
    return interpose.statistics().parks if HOOKED else 0


def pair(kind=socket.SOCK_STREAM):
    a, b = socket.socketpair(socket.AF_UNIX, kind)
    return track(a, b)


def tcp_pair():
    with socket.create_server(("127.0.0.1", 0)) as srv:
        c = socket.create_connection(srv.getsockname())
        s, _ = srv.accept()
    return track(c, s)


@case
def recv_send_data():
    a, b = pair()
    say(f"send: {outcome(a.send, b'hello')}")
    say(f"recv 3: {outcome(b.recv, 3)}")
    say(f"recv rest: {outcome(b.recv, 64)}")
    buf = bytearray(8)
    a.send(b"into")
    say(f"recv_into: {outcome(b.recv_into, buf)} {bytes(buf)}")
    a.sendall(b"peek!")
    say(f"recv peek: {outcome(b.recv, 4, socket.MSG_PEEK)}")
    say(f"recv after peek: {outcome(b.recv, 64)}")
    take("recv_send_data", a, b)
    a.close(); b.close()


@case
def os_read_write_readv_writev_on_sockets():
    a, b = pair()
    say(f"os.write: {outcome(os.write, a.fileno(), b'abcdef')}")
    say(f"os.read: {outcome(os.read, b.fileno(), 4)}")
    bufs = [bytearray(1), bytearray(3)]
    say(f"os.readv: {outcome(os.readv, b.fileno(), bufs)} {bufs}")
    say(f"os.writev: {outcome(os.writev, a.fileno(), [b'gh', b'', b'ijk'])}")
    bufs = [bytearray(2), bytearray(8)]
    say(f"os.readv partial: {outcome(os.readv, b.fileno(), bufs)} {bufs}")
    a.shutdown(socket.SHUT_WR)
    say(f"os.read at EOF: {outcome(os.read, b.fileno(), 4)}")
    say(f"os.readv at EOF: {outcome(os.readv, b.fileno(), [bytearray(2)])}")
    take("os_read_write_readv_writev_on_sockets", a, b)
    a.close(); b.close()


@case
def datagrams_with_addresses():
    # Six-argument sendto/recvfrom: the address rides in the fifth and
    # sixth registers.
    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    track(r, s)
    r.bind(("127.0.0.1", 0)); s.bind(("127.0.0.1", 0))
    say(f"sendto: {outcome(s.sendto, b'datagram', r.getsockname())}")
    data, addr = r.recvfrom(64)
    say(f"recvfrom: {data!r} from sender {addr == s.getsockname()}")
    s.sendto(b"into", r.getsockname())
    buf = bytearray(16)
    n, addr = r.recvfrom_into(buf)
    say(f"recvfrom_into: {n} {bytes(buf[:n])!r} from sender {addr == s.getsockname()}")
    s.sendto(b"a long datagram", r.getsockname())
    say(f"recv truncated datagram: {outcome(r.recv, 6)}")
    say(f"sendto too big: {outcome(s.sendto, bytes(70000), r.getsockname())}")
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    track(u)
    say(f"send without address: {outcome(u.send, b'x')}")
    take("datagrams_with_addresses", r, s, u)
    r.close(); s.close(); u.close()


@case
def sendmsg_recvmsg_scatter_gather_and_fds():
    a, b = pair()
    say(f"sendmsg: {outcome(a.sendmsg, [b'sca', b'', b'tter'])}")
    say(f"recvmsg: {outcome(b.recvmsg, 64)}")
    a.sendmsg([b'gather'])
    bufs = [bytearray(2), bytearray(10)]
    n, anc, flags, _ = b.recvmsg_into(bufs)
    say(f"recvmsg_into: {n} {bufs} {anc} {flags}")
    r, w = os.pipe()
    say(f"send_fds: {outcome(socket.send_fds, a, [b'fd'], [r])}")
    msg, fds, flags, _ = socket.recv_fds(b, 16, 4)
    same = os.fstat(fds[0]).st_ino == os.fstat(r).st_ino
    say(f"recv_fds: {msg!r} {len(fds)} same file {same} flags {flags}")
    os.close(fds[0])
    socket.send_fds(a, [b'fd'], [r])
    msg, anc, flags, _ = b.recvmsg(16, 0)  # no room: MSG_CTRUNC
    say(f"recvmsg control truncated: {msg!r} {anc} {flags == socket.MSG_CTRUNC}")
    os.close(r); os.close(w)
    d1, d2 = pair(socket.SOCK_DGRAM)
    d1.send(b"a long datagram")
    msg, anc, flags, _ = d2.recvmsg(4)
    say(f"recvmsg truncated datagram: {msg!r} {flags == socket.MSG_TRUNC}")
    take("sendmsg_recvmsg_scatter_gather_and_fds", a, b, d1, d2)
    for s in (a, b, d1, d2):
        s.close()


@case
def big_transfers_park_and_resume():
    # 4 MiB through a socket buffer of a few hundred KiB: the writer's
    # attempts meet EAGAIN, park, and continue with the rest (partial
    # writes); MSG_WAITALL reads park with part of the buffer filled.
    a, b = pair()
    data = bytes(range(256)) * (16 << 10)
    got = []

    def drain():
        h, n = hashlib.sha256(), 0
        while n < len(data):
            chunk = b.recv(65536)
            h.update(chunk)
            n += len(chunk)
        got.append((n, h.hexdigest() == hashlib.sha256(data).hexdigest()))

    t = threading.Thread(target=drain)
    t.start()
    say(f"sendall 4 MiB: {outcome(a.sendall, data)}")
    t.join()
    say(f"drained: {got}")
    t = threading.Thread(target=drain)
    del got[:]
    t.start()
    say(f"send 4 MiB (a blocking send sends all): {outcome(a.send, data)}")
    t.join()
    say(f"drained: {got}")
    box = []
    t = start_parked(lambda: box.append(b.recv(1 << 20, socket.MSG_WAITALL)))
    a.sendall(data[:1 << 19])
    a.sendall(data[1 << 19:1 << 20])
    t.join()
    say(f"recv MSG_WAITALL 1 MiB: {len(box[0])} {box[0] == data[:1 << 20]}")
    a.sendall(b"short")
    a.shutdown(socket.SHUT_WR)
    say(f"recv MSG_WAITALL at EOF: {outcome(b.recv, 64, socket.MSG_WAITALL)}")
    take("big_transfers_park_and_resume", a, b)
    a.close(); b.close()


@case
def blocking_recv_parks_and_is_woken():
    a, b = pair()
    box = []
    t = start_parked(lambda: box.append(outcome(b.recv, 64)))
    a.send(b"wake")
    t.join()
    say(f"woken recv: {box}")
    t = start_parked(lambda: box.append(outcome(b.recv, 64)))
    a.shutdown(socket.SHUT_WR)
    t.join()
    say(f"woken by EOF: {box}")
    c, d = pair()
    d.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 20000))
    say(f"recv past SO_RCVTIMEO: {outcome(d.recv, 64)}")
    take("blocking_recv_parks_and_is_woken", a, b, c, d)
    for s in (a, b, c, d):
        s.close()


@case
def connection_errors():
    c, s = tcp_pair()
    c.sendall(b"unread")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()  # unread data: the kernel resets the connection
    say(f"recv after reset: {outcome(c.recv, 64)}")
    say(f"recv after the reset was reported: {outcome(c.recv, 64)}")
    say(f"send after reset: {outcome(c.send, b'x')}")
    take("connection_errors", c)
    c.close()
    c, s = tcp_pair()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    say(f"sendall to a reset peer: {outcome(c.sendall, b'x' * 100)}")
    take("connection_errors", c)
    c.close()
    a, b = pair()
    b.close()
    say(f"send to a closed peer (SIGPIPE ignored): {outcome(a.send, b'x')}")
    say(f"recv from a closed peer: {outcome(a.recv, 4)}")
    take("connection_errors", a)
    a.close()
    t = socket.socket()
    track(t)
    say(f"recv unconnected: {outcome(t.recv, 4)}")
    say(f"send unconnected: {outcome(t.send, b'x')}")
    take("connection_errors", t)
    t.close()
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    dead = probe.getsockname()
    probe.close()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    track(u)
    u.connect(dead)
    u.send(b"x")
    say(f"recv after ICMP port unreachable: {outcome(u.recv, 4)}")
    take("connection_errors", u)
    u.close()


@case
def efault_through_ctypes():
    a, b = pair()
    a.sendall(b"hello")
    buf = ctypes.create_string_buffer(16)
    say(f"libc recv: {cfun(LIBC.recv, b.fileno(), buf, 3, 0)} {buf.raw[:3]}")
    say(f"libc recv bad buffer: {cfun(LIBC.recv, b.fileno(), BAD, 3, 0)}")
    say(f"libc read bad buffer: {cfun(LIBC.read, b.fileno(), BAD, 3)}")
    say(f"libc recvfrom bad length: {cfun(LIBC.recvfrom, b.fileno(), buf, 3, 0, buf, BAD)}")
    a.sendall(b"more")  # whatever the failed recvfrom consumed
    n, err = cfun(LIBC.read, b.fileno(), buf, 16)
    say(f"libc read: {(n, err)} {buf.raw[:max(n, 0)]}")
    say(f"libc send bad buffer: {cfun(LIBC.send, a.fileno(), BAD, 3, 0)}")
    say(f"libc write bad buffer: {cfun(LIBC.write, a.fileno(), BAD, 3)}")
    say(f"libc write: {cfun(LIBC.write, a.fileno(), b'xyz', 3)}")
    say(f"libc recv: {cfun(LIBC.recv, b.fileno(), buf, 16, 0)} {buf.raw[:3]}")
    take("efault_through_ctypes", a, b)
    a.close(); b.close()


@case
def libc_path_calls():
    # Calls the hooks hand to libc's wrapper even in a coroutine: the
    # user's own O_NONBLOCK, MSG_DONTWAIT, and an fd that is not open.
    a, b = pair()
    b.setblocking(False)
    say(f"recv on the user's O_NONBLOCK socket: {outcome(b.recv, 4)}")
    say(f"recv MSG_DONTWAIT: {outcome(a.recv, 4, socket.MSG_DONTWAIT)}")
    take("libc_path_calls", a, b)
    fd = a.detach()
    os.close(fd)
    say(f"os.read of a closed fd: {outcome(os.read, fd, 4)}")
    take("libc_path_calls", fd)
    b.close()


if HOOKED:
    print("spy", sorted(spied.items()) if SPY is not None else None)
    print("coroutines", sorted(coroutines), "parks", parks())
'''


def run(cmd, **kwargs):
    return subprocess.run([str(c) for c in cmd], capture_output=True,
                          text=True, timeout=110, **kwargs)


def compile_c(cc, source, out, *extra):
    cmd = [cc, *CFLAGS, *extra, "-o", out, os.path.join(NATIVE_TESTS, source)]
    proc = run(cmd)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout}{proc.stderr}"
    return out


def build_rawcall_test(cc, out, *extra):
    # rawcall.h from the checkout's native/ (the tests always have the
    # sources, even when the suite runs against an installed wheel).
    return compile_c(cc, "rawcall_test.c", out,
                     "-I" + os.path.join(CHECKOUT, "native"), *extra)


def build_spy(cc, out):
    return compile_c(cc, "libc_spy.c", out, "-shared", "-fPIC", "-ldl")


def assert_rawcall_test_ok(proc, arch):
    assert proc.returncode == 0, proc.stdout + proc.stderr
    words = proc.stdout.split()
    assert words[:3] == ["rawcall_test:", "ok", arch], proc.stdout
    assert int(words[3]) >= 40, proc.stdout


def guest_run(aarch64_site, code, **kwargs):
    """guest(), bounded well under the test's timeout: a run normally takes
    a few seconds; a broken direct path can leave a coroutine waiting for
    ever, and then the transcript so far says where."""
    try:
        return guest(aarch64_site, code, timeout=90, **kwargs)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout
        pytest.fail(f"the guest hung; its transcript so far:\n{out}")


# Cases whose calls the hooks hand to libc's wrapper (see the docstring);
# every other case must make no call there.
LIBC_PATH_CASES = {"libc_path_calls"}


def assert_hooked_same_and_direct(plain, hooked):
    assert plain.returncode == 0 and plain.stderr == "", plain.stderr
    assert hooked.returncode == 0 and hooked.stderr == "", hooked.stderr
    plain_lines = plain.stdout.splitlines()
    *hooked_lines, spy_line, coro_line = hooked.stdout.splitlines()
    assert hooked_lines == plain_lines, (
        f"hooked and plain differ\nhooked:\n{hooked.stdout}\nplain:\n{plain.stdout}")
    assert len(plain_lines) >= 50
    assert spy_line.startswith("spy [("), spy_line
    spied = dict(ast.literal_eval(spy_line[len("spy "):]))
    assert len(spied) == 9, spied
    assert {c for c, n in spied.items() if n} == LIBC_PATH_CASES, spied
    # Every case thread was a coroutine, and coroutines parked (the
    # blocking reads and the 4 MiB writes waited in the hooks).
    words = coro_line.split()
    assert words[:3] == ["coroutines", "[True]", "parks"], coro_line
    assert int(words[3]) >= 10, coro_line


# ---- native ------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_rawcall_results_and_errno_match_libc_natively(tmp_path):
    exe = build_rawcall_test("gcc", str(tmp_path / "rawcall_test"))
    arch = {"x86_64": "x86_64", "aarch64": "aarch64"}.get(os.uname().machine,
                                                           "generic")
    assert_rawcall_test_ok(run([exe]), arch)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_data_calls_in_coroutines_match_plain_and_go_direct_natively(tmp_path):
    spy = build_spy("gcc", str(tmp_path / "libc_spy.so"))
    code = DATA_CALLS
    plain = run_plain(code, prelude=False)
    hooked = run_hooked(code, prelude=False, env={"LD_PRELOAD": spy})
    assert_hooked_same_and_direct(plain, hooked)


# ---- aarch64 under qemu-user ---------------------------------------------------

@pytest.fixture(scope="module")
def aarch64_builds(tmp_path_factory):
    """(rawcall_test static for aarch64, libc_spy.so for aarch64)."""
    cc = cross_cc()
    tmp = tmp_path_factory.mktemp("rawcall-aarch64")
    return (build_rawcall_test(cc, str(tmp / "rawcall_test"), "-static"),
            build_spy(cc, str(tmp / "libc_spy.so")))


@pytest.mark.timeout(120)
def test_rawcall_results_and_errno_match_libc_under_qemu_aarch64(aarch64_builds):
    exe, _ = aarch64_builds
    assert_rawcall_test_ok(run([qemu_aarch64(), exe]), "aarch64")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_data_calls_in_coroutines_match_plain_and_go_direct_under_qemu_aarch64(
        aarch64_site, aarch64_builds):
    _, spy = aarch64_builds
    plain = guest_run(aarch64_site, DATA_CALLS, preload=False)
    hooked = guest_run(aarch64_site, DATA_CALLS, preload=True,
                       also_preload=[spy])
    assert_hooked_same_and_direct(plain, hooked)
