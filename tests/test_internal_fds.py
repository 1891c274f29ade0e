"""The runtime's own fds never reach a child (issue #12 item 7): the epoll
sets and eventfds of every thread's scheduler, the signal wakeup pipe and
whatever the resolver pool opens are all close-on-exec, so a subprocess
child, with pass_fds or close_fds=False, sees exactly the fds a plain
Python parent gives it.  The runtime's fds also live above a floor
(native/fdtable.c), so the program's own fds get the numbers plain Python
gives them, and a dup2() onto a low number cannot replace the hub's epoll
set.

The snippet runs plain and under `interpose run`, with a second OS thread
whose scheduler is alive and a name lookup done, and starts a child that
lists its fds by number."""
import subprocess
import sys
import textwrap

import pytest

from support.snippets import snippet_env, assert_same

pytestmark = pytest.mark.timeout(120)

SETUP = r"""
import _thread, json, socket, subprocess

# A child that is plain Python whatever its parent is, listing its fds.
LISTER = ("import json, os; out = {}\n"
          "for fd in os.listdir('/proc/self/fd'):\n"
          "    try: out[int(fd)] = os.readlink('/proc/self/fd/' + fd)\n"
          "    except OSError: pass\n"
          "print(json.dumps(out))")
CHILD_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}

socket.getaddrinfo("localhost", 80)  # the resolver pool, under the preload
parked = threading.Event()
release = threading.Event()

def second_thread():
    # An OS thread with a live scheduler (its own epoll set and eventfd).
    if HOOKED:
        interpose.spawn(lambda: None).join()
    parked.set()
    release.wait()

_thread.start_new_thread(second_thread, ())
parked.wait()
r, w = os.pipe()


def described(listing):
    # The lister's own directory fd is open while it lists: leave it out.
    out = []
    for fd, target in sorted((int(k), v) for k, v in listing.items()):
        if target.startswith("/proc/") and target.endswith("/fd"):
            continue
        out.append(f"{fd}:{target.split(':')[0]}")
    return out


def child_fds(**kw):
    p = subprocess.run([sys.executable, "-c", LISTER], capture_output=True,
                       text=True, env=CHILD_ENV, **kw)
    assert p.returncode == 0, p.stderr
    return described(json.loads(p.stdout))
"""


def _with_setup(body):
    return SETUP + textwrap.dedent(body)


def test_child_with_pass_fds_sees_only_what_was_passed():
    assert_same(_with_setup("""
        print(r, w)  # plain Python's numbers: the runtime's are out of the way
        print(child_fds(pass_fds=(r,)))
        print(child_fds(pass_fds=(r, w)))
        release.set()
    """))


def test_child_with_close_fds_false_sees_only_inheritable_fds():
    assert_same(_with_setup("""
        print(child_fds(close_fds=False))
        os.set_inheritable(r, True)
        print(child_fds(close_fds=False))
        release.set()
    """))


def test_every_fd_of_the_runtime_is_close_on_exec():
    # The same check from the inside: apart from 0, 1 and 2, no fd of the
    # process lacks FD_CLOEXEC, plain or with the runtime's fds open.
    lines = assert_same(_with_setup("""
        import fcntl
        inheritable = []
        for fd in sorted(map(int, os.listdir('/proc/self/fd'))):
            try:
                flags = fcntl.fcntl(fd, fcntl.F_GETFD)
            except OSError:
                continue  # listdir's own fd, closed by now
            if fd > 2 and not flags & fcntl.FD_CLOEXEC:
                inheritable.append(os.readlink(f'/proc/self/fd/{fd}'))
        print(inheritable)
        print(len(os.listdir('/proc/self/fd')) > 3)
        release.set()
    """))
    assert lines == ["[]", "True"]


def test_dup2_onto_a_low_fd_leaves_the_runtime_working():
    # Socket activation style: the program puts a socket at fd 3 and 4.
    # Under the preload these were the hub's epoll set and eventfd, which
    # dup2 silently replaced (the next epoll_wait failed: abort).
    assert_same(_with_setup("""
        a, b = socket.socketpair()
        for fd in (3, 4):
            os.dup2(a.fileno(), fd)
        def echo():
            data = os.read(3, 5)
            os.write(4, data.upper())
        t = go(echo)
        settle(t)
        b.sendall(b"hello")
        t.join()
        print(b.recv(5))
        time.sleep(0.01)
        release.set()
    """))


@pytest.mark.parametrize("soft", [None, 200, 40])
def test_ctypes_import_holds_the_same_floor_as_the_engine(soft):
    # interpose/_core/_ctypes_import.py holds the fds below the engine's floor
    # while ctypes is imported (libffi 3.5 keeps an fd from that import);
    # it must compute the floor the engine uses, under any RLIMIT_NOFILE.
    code = textwrap.dedent(f"""
        import resource
        soft = {soft!r}
        if soft is not None:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        from interpose._core import _ctypes_import, _native
        print(_ctypes_import.internal_fd_floor() == _native.lib.fd_internal_floor())
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=60, env=snippet_env(None))
    assert (p.returncode, p.stdout, p.stderr) == (0, "True\n", "")
