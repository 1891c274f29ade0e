"""Shared test helpers: run a snippet in a fresh interpreter, count live
thread states, wait until coroutines are parked."""
import ctypes
import os
import subprocess
import sys
import textwrap

import pytest

import interpose

# The directory holding the interpose package under test (a source checkout,
# site-packages, or the ASan tree of scripts/asan-tests): snippets import the
# same package as the test process.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(interpose.__file__)))


def run_snippet(code, *, timeout=60, env=None, python=sys.executable):
    """Run code in a fresh interpreter; return CompletedProcess (text)."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = ROOT + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    return subprocess.run(
        [python, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=timeout, env=full_env,
    )


def live_thread_states():
    """Thread states of this interpreter, counted through the C-API."""
    api = ctypes.pythonapi
    api.PyInterpreterState_Get.restype = ctypes.c_void_p
    api.PyInterpreterState_ThreadHead.restype = ctypes.c_void_p
    api.PyInterpreterState_ThreadHead.argtypes = [ctypes.c_void_p]
    api.PyThreadState_Next.restype = ctypes.c_void_p
    api.PyThreadState_Next.argtypes = [ctypes.c_void_p]
    n = 0
    ts = api.PyInterpreterState_ThreadHead(api.PyInterpreterState_Get())
    while ts:
        n += 1
        ts = api.PyThreadState_Next(ts)
    return n


def wait_all_blocked(coroutines):
    """Yield until every coroutine in the list has parked or finished.

    A coroutine that parks hands control back, so after enough sleep(0)
    rounds every one has run up to its first real wait."""
    for _ in range(1000):
        before = interpose.statistics().parks
        interpose.sleep(0)
        interpose.sleep(0)
        if all(c.done() for c in coroutines) or interpose.statistics().parks == before + 2:
            return
    raise AssertionError("coroutines never settled")


@pytest.fixture
def snippet():
    return run_snippet
