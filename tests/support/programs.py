"""Programs under `python -m interpose run`, watched from outside (the
diagnostics tests): start one from source in its own process group, read
its "ready" line, ask it with `interpose ps` or its control socket, and
poll the program (never the clock) until a state shows.  Also how its dumps
name a lock on this CPython."""
import re
import subprocess
import sys
import textwrap
import time

from interpose._core import _compat
from interpose._diagnostics import _watch
from support.processes import interpose_run
from support.snippets import snippet_env

# Lock names are known on every version; the holder of a plain Lock (so a
# cycle of Locks) only on 3.11 and 3.12 (interpose/_core/_compat.py).
OWNERS = _compat.LOCK_OWNERS_KNOWN
WAITER = "lock 'waiter'"

WAIT = 30  # seconds: a bound for states to appear, never a measurement


def start_program(procs, tmp_path, code, env=None, stdin=subprocess.DEVNULL):
    """Write code to tmp_path/program.py and start it under `interpose run`
    in procs (a ProcessGroup, the conftest fixture)."""
    path = tmp_path / "program.py"
    path.write_text(textwrap.dedent(code))
    full_env = snippet_env(env)
    return procs.start(interpose_run(path), env=full_env, stdin=stdin)


def read_ready(proc):
    """The words after "ready" on the program's first line."""
    line = proc.stdout.readline()
    assert line.startswith("ready"), (line, proc.poll())
    return line.split()[1:]


def interpose_ps(pid, *args):
    """`python -m interpose ps ARGS PID`, completed."""
    return subprocess.run(
        [sys.executable, "-m", "interpose", "ps", *args, str(pid)],
        capture_output=True, text=True, timeout=WAIT, env=snippet_env(None))


def poll_until(predicate, what):
    """Poll predicate (which asks the program, not the clock) until true."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def watcher_examined(pid):
    """How many stuck schedulers the program's watcher has examined."""
    text = _watch.request(pid, b"watch")
    return int(re.search(r"examined (\d+)", text).group(1))


def assert_exits_cleanly(proc, stdout):
    """The program exits 0 within WAIT, having printed exactly stdout and
    nothing on stderr."""
    assert proc.wait(WAIT) == 0
    assert proc.stdout.read() == stdout
    assert proc.stderr.read() == ""


def lock_order_program(kind):
    """Two threads taking two threading.<kind>s in opposite orders: the
    lock-order deadlock, every time (each holds its first lock before
    either asks for its second)."""
    return """
    import threading
    a = threading.{kind}(); b = threading.{kind}()
    got_a = threading.Event(); got_b = threading.Event()
    def first():
        with a:
            got_a.set(); got_b.wait()
            with b: pass
    def second():
        with b:
            got_b.set(); got_a.wait()
            with a: pass
    ts = [threading.Thread(target=first, name="first"),
          threading.Thread(target=second, name="second")]
    for t in ts: t.start()
    for t in ts: t.join()
""".format(kind=kind)
