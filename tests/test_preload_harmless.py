"""Preloaded into processes that never start the runtime, the library
changes nothing: output, errors and exit status are the same as without it
(issue #3, "harmless elsewhere")."""
import http.server
import os
import shutil
import subprocess
import sys
import threading

import pytest

import interpose
from interpose._core import _native
from support.snippets import check_ok, run_plain

pytestmark = pytest.mark.timeout(120)

LIB = _native.LIBRARY_PATH


def _run(argv, preload, **kw):
    # Whatever the test run itself preloads (scripts/asan-tests: the
    # sanitizer runtimes, which must stay first) is in both runs.
    env = dict(os.environ)
    env.pop("INTERPOSE_AUTOSTART", None)
    base = env.get("LD_PRELOAD", "")
    if preload:
        env["LD_PRELOAD"] = f"{base}:{LIB}" if base else LIB
    elif not base:
        env.pop("LD_PRELOAD", None)
    return subprocess.run(argv, capture_output=True, timeout=60, env=env, **kw)


def _same(argv, **kw):
    plain = _run(argv, False, **kw)
    hooked = _run(argv, True, **kw)
    assert (hooked.returncode, hooked.stdout, hooked.stderr) == (
        plain.returncode, plain.stdout, plain.stderr)
    return plain


@pytest.fixture
def http_server(tmp_path):
    (tmp_path / "hello.txt").write_text("hello from the test server\n")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(tmp_path), **kw)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def still_tree(tmp_path):
    """A directory nobody else changes, with every timestamp fixed: `ls -la
    /` differed between the plain and the preloaded run whenever another
    process started or exited (the link count of /proc is the number of
    processes) or wrote to /tmp (its link count and mtime), which on a
    shared machine happened between the two runs now and then."""
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "file.txt").write_text("twelve bytes")
    (tree / "link").symlink_to("file.txt")
    for path in (tree / "link", tree / "file.txt", tree / "sub", tree, tmp_path):
        os.utime(path, (0, 0), follow_symlinks=False)
    return tree


@pytest.mark.parametrize("argv", [
    ["ls", "-la", "{still_tree}"],
    ["ls", "/no/such/dir"],
    ["sh", "-c", "echo out; echo err >&2; exit 3"],
    ["sh", "-c", "printf 'a\\nb\\n' | sort -r | cat -n"],
    ["sleep", "0.05"],
    ["git", "--version"],
    ["git", "-C", "/", "rev-parse", "--git-dir"],  # not a repository: 128
    ["bash", "-c", "for i in 1 2 3; do echo $i; done | tac; read -t 0.01 x < /dev/null; exit 4"],
    ["sh", "-c", "tar -cf - -C /etc hostname passwd | tar -tvf - | wc -l; tar -xf /no/such.tar"],
    ["sh", "-c", "seq 1 50 | sort -rn | head -3; wc -c < /etc/passwd; date -u -d @0;"
                 " env -i printenv; cp /no/such /tmp/x; mkdir -p /; stat -c %F /"],
    ["cat", "/proc/self/cmdline"],
], ids=lambda a: " ".join(a)[:40])
def test_command_is_unchanged_by_the_preload(argv, still_tree):
    argv = [a.format(still_tree=still_tree) for a in argv]
    if shutil.which(argv[0]) is None:
        pytest.fail(f"{argv[0]} is needed by this test and is not installed")
    if argv[0] == "cat":  # the command line differs by nothing, but check it ran
        assert b"/proc/self/cmdline" in _same(argv).stdout
        return
    _same(argv)


def test_curl_against_local_server_is_unchanged(http_server):
    if shutil.which("curl") is None:
        pytest.fail("curl is needed by this test and is not installed")
    r = _same(["curl", "-sS", f"{http_server}/hello.txt"])
    assert r.stdout == b"hello from the test server\n"
    _same(["curl", "-sS", f"{http_server}/missing", "-o", "/dev/null", "-w", "%{http_code}"])


def test_plain_python_script_is_unchanged(tmp_path, http_server):
    script = tmp_path / "plain.py"
    script.write_text(
        "import os, socket, sys, time, urllib.request, subprocess\n"
        f"print(urllib.request.urlopen('{http_server}/hello.txt').read())\n"
        "a, b = socket.socketpair()\n"
        "a.sendall(b'x' * 100000)\n"
        "print(len(b.recv(10)), os.get_blocking(a.fileno()))\n"
        "time.sleep(0.01)\n"
        "print(subprocess.run(['echo', 'child'], capture_output=True).stdout)\n"
        "try:\n"
        "    socket.create_connection(('127.0.0.1', 1), timeout=2)\n"
        "except OSError as e:\n"
        "    print(type(e).__name__, e.errno)\n"
        "sys.exit(7)\n"
    )
    r = _same([sys.executable, str(script)])
    assert r.returncode == 7


def test_python_with_preload_but_no_autostart_runs_without_hooks(tmp_path):
    # The runtime stays off: a blocking recv blocks (times out via
    # settimeout, as with plain Python) and no scheduler exists.
    code = ("import socket, interpose; a, b = socket.socketpair();"
            " a.settimeout(0.1)\n"
            "try:\n    a.recv(1)\nexcept TimeoutError:\n    print('timeout')\n"
            "print(interpose.statistics())\n")
    env_path = os.path.dirname(os.path.dirname(_native.__file__))
    r = _same([sys.executable, "-c", code], cwd=env_path)
    assert b"timeout" in r.stdout


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
    preloaded = run_plain(code, env={"LD_PRELOAD": interpose._core._native.LIBRARY_PATH})
    plain = run_plain(code)
    pre_lines, plain_lines = check_ok(preloaded, "preloaded"), check_ok(plain, "plain")
    assert pre_lines[-1] == "maps: True" and plain_lines[-1] == "maps: False"
    assert pre_lines[:-1] == plain_lines[:-1]
    assert pre_lines[0] == "view: True False"
