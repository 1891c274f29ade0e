"""`import interpose` loads the library and checks it, and changes nothing
else in the process: CPython's arena allocator, the at-fork and exit
handlers, signal handling, the thread count and the switch interval stay
as they were until the first scheduler starts.  Checked in a fresh
interpreter for a plain import, `from interpose import Cancelled`, and
`python -m interpose info`; the first scheduler then shows that each probe
does see the changes it looks for."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

import interpose

pytestmark = pytest.mark.timeout(120)

PACKAGE_PARENT = os.path.dirname(interpose.__path__[0])

# Records what the process looks like, before and after `action`, then after
# its first scheduler; prints it as one JSON line tagged STATE.
PROBE = textwrap.dedent("""
    import atexit, ctypes, json, os, signal, sys, threading

    class Allocator(ctypes.Structure):  # PyObjectArenaAllocator
        _fields_ = [("ctx", ctypes.c_void_p), ("alloc", ctypes.c_void_p),
                    ("free", ctypes.c_void_p)]

    _get = ctypes.pythonapi.PyObject_GetArenaAllocator
    _get.argtypes = [ctypes.POINTER(Allocator)]
    _get.restype = None

    def allocator():
        a = Allocator()
        _get(ctypes.byref(a))
        return [a.ctx, a.alloc, a.free]

    registered = []
    _register_at_fork, _atexit_register = os.register_at_fork, atexit.register

    def register_at_fork(**hooks):
        registered.append("at-fork " + ",".join(sorted(hooks)))
        return _register_at_fork(**hooks)

    def atexit_register(fn, *args, **kwargs):
        registered.append("atexit " + getattr(fn, "__qualname__", repr(fn)))
        return _atexit_register(fn, *args, **kwargs)

    os.register_at_fork, atexit.register = register_at_fork, atexit_register

    def state():
        return {
            "allocator": allocator(),
            "registered": list(registered),
            "signal.signal": id(signal.signal),
            "handlers": {int(s): repr(signal.getsignal(s))
                         for s in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD)},
            "os threads": len(os.listdir("/proc/self/task")),
            "switch interval": sys.getswitchinterval(),
            "setswitchinterval": sys.setswitchinterval.__module__,
        }

    before = state()
    try:
        ACTION
    except SystemExit as e:
        exit_status = e.code
    else:
        exit_status = None
    after = state()
    import interpose
    interpose.current()  # the first scheduler
    started = state()
    print("STATE", json.dumps({"before": before, "after": after,
                               "started": started, "exit": exit_status}))
""")

ACTIONS = {
    "import interpose": "import interpose",
    "from interpose import Cancelled": "from interpose import Cancelled",
    # What `python -m interpose info` runs, in this process so that the probe
    # can look at it afterwards.
    "python -m interpose info": (
        "import runpy; sys.argv = ['interpose', 'info'];"
        " runpy.run_module('interpose', run_name='__main__', alter_sys=True)"),
}


def _run(action):
    code = PROBE.replace("ACTION", ACTIONS[action])
    env = {k: v for k, v in os.environ.items() if k != "INTERPOSE_AUTOSTART"}
    # Not preloaded (a sanitizer runtime the ASan run preloads stays).
    preload = [p for p in env.pop("LD_PRELOAD", "").split(":")
               if p and os.path.basename(p) != "libinterpose.so"]
    if preload:
        env["LD_PRELOAD"] = ":".join(preload)
    env["PYTHONPATH"] = PACKAGE_PARENT
    proc = subprocess.run([sys.executable, "-c", code], env=env,
                          capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("STATE ")]
    assert len(lines) == 1, proc.stdout + proc.stderr
    return json.loads(lines[0][len("STATE "):])


@pytest.mark.slow
@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_import_leaves_the_process_unchanged_until_the_first_scheduler(action):
    got = _run(action)
    before, after, started = got["before"], got["after"], got["started"]
    if action == "python -m interpose info":
        assert got["exit"] == 0
    # The import (and info) changed nothing the probe can see.
    assert after == before
    # The first scheduler does: the probe sees the allocator swap, the
    # core's at-fork and exit handlers and the main thread's signal setup.
    assert started["allocator"] != before["allocator"]
    assert started["registered"] == [
        "at-fork after_in_child,after_in_parent,before", "atexit _at_exit"]
    assert started["signal.signal"] != before["signal.signal"]
