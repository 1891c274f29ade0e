"""A call the kernel refuses at once fails at once under the runtime (issue
#13 item 2): same exception, same errno, no wait first.  The snippet runs
as a script under plain python and under `python -m interpose run`;
outputs and exit statuses must match.
"""
import pytest

from support.snippets import assert_script_same


pytestmark = pytest.mark.slow


REFUSED_AT_ONCE = """
    import errno, os, select, socket, time
    def t(name, fn):
        try:
            r = fn()
            print(name, "->", repr(r))
        except OSError as e:
            print(name, "->", type(e).__name__, errno.errorcode.get(e.errno))
        except Exception as e:
            print(name, "->", type(e).__name__, e)
    r, w = os.pipe()
    t("write to a pipe's read end", lambda: os.write(r, b"x"))
    t("read from a pipe's write end", lambda: os.read(w, 1))
    t("readv from a pipe's write end", lambda: os.readv(w, [bytearray(3)]))
    t("writev to a pipe's read end", lambda: os.writev(r, [b"ab"]))
    t("read of 0 bytes from an empty pipe", lambda: os.read(r, 0))
    t("write of 0 bytes", lambda: os.write(w, b""))
    e = os.eventfd(0)
    t("eventfd read of 4 bytes", lambda: os.read(e, 4))
    t("eventfd write of 4 bytes", lambda: os.write(e, b"1234"))
    t("eventfd write of 2**64-1", lambda: os.write(e, b"\\xff" * 8))
    d = os.open("/", os.O_RDONLY)
    t("read from a directory", lambda: os.read(d, 10))
    p = os.open("/etc", os.O_PATH)
    t("read from an O_PATH fd", lambda: os.read(p, 10))
    s = socket.socket()
    t("recv on an unconnected socket", lambda: s.recv(1))
    t("send on an unconnected socket", lambda: s.send(b"x"))
    t("accept on a socket not listening", lambda: s.accept())
    l = socket.socket()
    l.bind(("127.0.0.1", 0))
    l.listen()
    t("recv on a listening socket", lambda: l.recv(1))
    port = l.getsockname()[1]
    l.close()
    t("connect to a closed port",
      lambda: socket.create_connection(("127.0.0.1", port)))
    a, b = socket.socketpair()
    b.close()
    t("send to a closed peer", lambda: a.send(b"x"))
    t("recv from a closed peer", lambda: a.recv(1))
    a2, b2 = socket.socketpair()
    a2.shutdown(socket.SHUT_RD)
    t("recv after SHUT_RD", lambda: a2.recv(1))
    a2.shutdown(socket.SHUT_WR)
    t("send after SHUT_WR", lambda: a2.send(b"x"))
    c = socket.socket()
    c.close()
    t("recv on a closed socket object", lambda: c.recv(1))
    r2, w2 = os.pipe()
    os.close(r2)
    t("write with no reader", lambda: os.write(w2, b"x"))
    r3, w3 = os.pipe()
    os.close(w3)
    t("read with no writer", lambda: os.read(r3, 1))
    t("read from a closed fd", lambda: os.read(w3, 1))
    t("write to a closed fd", lambda: os.write(w3, b"x"))
    t("select on a closed fd", lambda: select.select([w3], [], [], None))
    pl = select.poll()
    pl.register(w3)
    t("poll on a closed fd", lambda: [ev for _, ev in pl.poll()])
    t("waitpid of a process not our child", lambda: os.waitpid(1, 0))
    t("waitpid of ourselves", lambda: os.waitpid(os.getpid(), 0))
    t("waitpid of any child, with none", lambda: os.waitpid(-1, 0))
    t("waitpid with bad options", lambda: os.waitpid(1, 0x7fffffff))
    t("sleep(-1)", lambda: time.sleep(-1))
    l2 = socket.socket()
    l2.bind(("127.0.0.1", 0))
    l2.listen()
    c2 = socket.create_connection(l2.getsockname())
    t("connect twice", lambda: c2.connect(l2.getsockname()))
    # Calls C code makes on fds no hook created (a raw socket(2) is such a
    # "foreign" socket, blocking in the kernel) and on fds of another kind.
    import ctypes, platform
    libc = ctypes.CDLL(None, use_errno=True)
    def c_call(fn, *args):
        r = fn(*args)
        return r if r >= 0 else errno.errorcode[ctypes.get_errno()]
    buf = ctypes.create_string_buffer(8)
    r4, w4 = os.pipe()
    t("recv on a pipe", lambda: c_call(libc.recv, r4, buf, 1, 0))
    t("send on a pipe", lambda: c_call(libc.send, w4, buf, 1, 0))
    t("accept on a pipe", lambda: c_call(libc.accept, r4, None, None))
    sys_socket = {"x86_64": 41, "aarch64": 198}[platform.machine()]
    udp = libc.syscall(sys_socket, socket.AF_INET, socket.SOCK_DGRAM, 0)
    t("accept on a foreign UDP socket", lambda: c_call(libc.accept, udp, None, None))
    tcp = libc.syscall(sys_socket, socket.AF_INET, socket.SOCK_STREAM, 0)
    t("accept on a foreign TCP socket not listening",
      lambda: c_call(libc.accept, tcp, None, None))
"""


def test_calls_refused_by_the_kernel_fail_at_once(tmp_path):
    # Regression: os.write on a pipe's read end (test_signal
    # test_wakeup_write_error) and os.waitpid of a process that is not our
    # child waited forever.  Acceptable: the same line per call as plain
    # Python.  Unacceptable: a hang (the timeout), another errno.
    plain, _ = assert_script_same(tmp_path, REFUSED_AT_ONCE, timeout=30)
    assert "EBADF" in plain.stdout and "ECHILD" in plain.stdout
