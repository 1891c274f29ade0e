"""Version support (native/pyver.c, interpose/_core/_compat.py): the refusals,
and what each supported CPython must give coroutines.  The suite runs on
every supported version (scripts/interpreters), so each test here checks its
contract on the interpreter running it; where versions differ, the expected
outcome is chosen from _compat, never skipped."""
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

import interpose
from interpose._core import _compat, _native

from support.snippets import ROOT, assert_same, check_ok, run_hooked, run_snippet
from support.probes import live_thread_states
from support.stack_overflow import CATCH_RECURSION, DEEP_BODIES


# ---- refusals: one line each, no traceback ---------------------------------


@pytest.mark.parametrize("version, impl, free, words", [
    ((3, 14, 0), "CPython", False, "3.14.1 or later"),
    ((3, 10, 12), "CPython", False, "supports 3.11 to 3.15"),
    ((3, 16, 0), "CPython", False, "supports 3.11 to 3.15"),
    ((3, 13, 1), "CPython", True, "free-threaded"),
    ((3, 14, 2), "CPython", True, "free-threaded"),
    ((3, 11, 4), "PyPy", False, "needs CPython"),
])
def test_unsupported_interpreter_reason_is_one_line(version, impl, free, words):
    reason = _compat.unsupported_reason(version, impl, free)
    assert reason is not None and words in reason
    assert "\n" not in reason


@pytest.mark.parametrize("version", [(3, 11, 0), (3, 12, 1), (3, 13, 0),
                                     (3, 14, 1), (3, 14, 10), (3, 15, 0)])
def test_supported_interpreters_have_no_reason(version):
    assert _compat.unsupported_reason(version, "CPython", False) is None


def test_this_interpreter_is_supported():
    assert _compat.unsupported_reason() is None


_FAKE_VERSION_CLI = """
import runpy, sys
sys.version_info = {version!r}
sys.orig_argv = [sys.executable, "-m", "interpose", "run", "-c", "print('ran')"]
sys.argv = ["-m", "run", "-c", "print('ran')"]
runpy.run_module("interpose", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("version", [(3, 14, 0, "final", 0),
                                     (3, 16, 0, "final", 0)])
def test_cli_on_unsupported_interpreter_prints_one_line_and_exits_2(version):
    # runpy imports the package before interpose's own command line runs, so
    # the refusal must come from the import, as one line, not a traceback.
    r = run_snippet(_FAKE_VERSION_CLI.format(version=version))
    assert r.returncode == 2, r.stderr
    assert "ran" not in r.stdout
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("interpose: this is CPython"), r.stderr
    assert "Traceback" not in r.stderr


def test_import_on_unsupported_interpreter_raises_nativelibraryerror():
    r = run_snippet("""
        import sys
        sys.version_info = (3, 14, 0, "final", 0)
        try:
            import interpose
        except ImportError as e:
            print(type(e).__name__, e)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("NativeLibraryError interpose: this is CPython 3.14.0")


def test_library_refuses_versions_python_would_refuse():
    # interpose_py_init is the engine's own check, independent of _compat;
    # it serves the first interpreter that passes it, so each refusal is
    # asked of the library loaded afresh, without importing interpose.
    r = run_snippet(f"""
        import ctypes
        lib = ctypes.PyDLL({_native.LIBRARY_PATH!r})
        lib.interpose_py_init.argtypes = [ctypes.c_ulong, ctypes.c_void_p]
        for hexversion in (0x030E00F0, 0x030A0CF0, 0x031000A1, 0x020712F0):
            print(hex(hexversion), lib.interpose_py_init(hexversion, 1))
    """)
    assert r.returncode == 0, r.stderr
    assert [line.split()[1] for line in r.stdout.splitlines()] == ["-95"] * 4


def test_pyproject_classifiers_list_the_supported_versions():
    pyproject = pathlib.Path(ROOT, "pyproject.toml")
    if not pyproject.exists():  # an installed wheel: its metadata says it
        from importlib.metadata import metadata
        classifiers = metadata("interpose").get_all("Classifier")
    else:
        classifiers = re.findall(r'"(Programming Language :: Python :: 3\.\d+)"',
                                 pyproject.read_text())
    listed = sorted(c.rsplit(":: ", 1)[1] for c in classifiers
                    if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c))
    assert listed == sorted(_compat.SUPPORTED_VERSIONS)


# ---- stacks ------------------------------------------------------------------


def test_stack_minimum_is_what_cpython_needs():
    expected = 96 * 1024 if _compat.PY314 else 16 * 1024
    assert _native.lib.stack_minimum() == expected == _compat.STACK_MINIMUM


def test_stack_limits_are_the_librarys():
    from interpose._core import _settings
    assert _settings.STACK_MIN == _native.lib.stack_minimum()
    assert _settings.STACK_MAX == _native.lib.stack_maximum()


def test_spawn_below_minimum_says_why():
    minimum = _native.lib.stack_minimum()
    with pytest.raises(ValueError) as e:
        interpose.spawn(lambda: None, stack_size=minimum - 4096)
    assert _compat.STACK_MINIMUM_REASON in str(e.value)
    assert str(minimum) in str(e.value)


def test_interpose_stack_size_env_below_minimum_says_why():
    minimum_k = _native.lib.stack_minimum() // 1024
    r = run_snippet("import interpose",
                    env={"INTERPOSE_STACK_SIZE": f"{minimum_k - 4}K"})
    assert r.returncode != 0
    assert f"at least {minimum_k}K" in r.stderr


def test_smallest_stack_runs_deep_c_recursion_to_recursionerror_on_314():
    # 3.14+: told its stack, CPython raises RecursionError before the guard
    # page at the smallest stack it accepts.  Before 3.14 CPython counts C
    # recursion and knows no stack: a stack that small overflows, which
    # tests/test_stack_overflow.py checks (the guard page reports it).
    if not _compat.PY314:
        assert _native.lib.stack_minimum() == 16 * 1024
        return
    r = run_snippet(textwrap.dedent(DEEP_BODIES["nested_list_repr"]) + CATCH_RECURSION
                    + textwrap.dedent("""
        import interpose
        def main():
            size = interpose._core._native.lib.stack_minimum()
            return interpose.spawn(catch_recursion, stack_size=size).join()
        print(interpose.run(main))
    """))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "RecursionError"


# ---- the done-when checks, on the running interpreter ---------------


def test_socket_dropped_in_coroutine_is_closed_before_the_coroutine_ends():
    # Regression (3.14 without stack protection): objects freed in a
    # coroutine were deferred forever, so the fd stayed open and __del__
    # never ran.  Differential: a thread in plain python sees the same.
    lines = assert_same("""
        import gc, socket
        gc.disable()  # only reference counting may free them
        seen = []
        class Witness:
            def __del__(self):
                seen.append("del")
        def body():
            s = socket.socket()
            fd = s.fileno()
            w = Witness()
            del s, w
            try:
                os.fstat(fd)
                fd_state = "open"
            except OSError as e:
                fd_state = errname(e)
            return fd_state, list(seen)
        print(*go(body).join())
    """)
    assert lines == ["EBADF ['del']"]


@pytest.mark.parametrize("kind", ["python", "nested_list_repr", "json_loads"])
def test_deep_recursion_in_coroutine_raises_recursionerror(kind):
    lines = assert_same("import json\n" + textwrap.dedent(DEEP_BODIES[kind])
                        + CATCH_RECURSION + "print(go(catch_recursion).join())\n")
    assert lines == ["RecursionError"]


@pytest.mark.timeout(120)
def test_spawn_and_join_10000_coroutines_frees_every_thread_state():
    # The cost is measured by scripts/bench_spawn.py (docs/platforms.md); the
    # test checks the work completes and leaves no thread state or stack
    # behind (3.14 without stack protection spent 19 s on 3,000).
    before = live_thread_states()

    def main():
        for _ in range(10):
            coros = [interpose.spawn(int, i) for i in range(1000)]
            assert [c.join() for c in coros] == list(range(1000))

    interpose.run(main)
    assert live_thread_states() == before
    assert interpose.statistics().coroutines_alive == 0


def _read_syscalls():
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("syscr:")).split()[1])


def test_spawn_cost_does_not_grow_with_coroutines_alive():
    # Regression (3.14): the first attach of a coroutine's thread state
    # computed its stack limits with pthread_getattr_np, which on the main
    # thread reads all of /proc/self/maps (two lines per coroutine stack):
    # spawning n coroutines that stay alive cost O(n^2), 17 s for 3,000.
    # Counted, not timed: read system calls while 3,000 coroutines start
    # and park, which was hundreds per coroutine and must stay well under
    # one per coroutine.
    n = 3000
    gate = interpose.Event()
    arrived = []

    def waiter():
        arrived.append(1)
        gate.wait()

    def main():
        interpose.spawn(int).join()  # the scheduler and its hub exist
        before = _read_syscalls()
        coros = [interpose.spawn(waiter) for _ in range(n)]
        while len(arrived) < n:
            interpose.sleep(0)
        reads = _read_syscalls() - before
        gate.set()
        for c in coros:
            c.join()
        return reads

    assert interpose.run(main) < n // 10


# ---- thread states and threads (API that changed from 3.11 to 3.15) --------


def test_converted_thread_leaves_the_os_thread_name_alone():
    # 3.14's threading names the OS thread after each Thread (gh-59705);
    # all coroutines share the OS thread, which keeps its own name.
    r = run_hooked("""
        import threading
        def comm():
            with open(f"/proc/self/task/{threading.get_native_id()}/comm") as f:
                return f.read().strip()
        before = comm()
        names = []
        def work():
            names.append(comm())
        threads = [threading.Thread(target=work, name=f"worker-{i}") for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(before == comm() == names[0] == names[-1], threads[0].name)
    """)
    assert check_ok(r, "hooked") == ["True worker-0"]


def test_frames_and_recursion_depth_are_per_coroutine():
    # Each coroutine has its own thread state: its own frame chain and
    # recursion depth (3.12 moved the depth to py_recursion_remaining, 3.14
    # measures the C part on the coroutine's stack).
    def main():
        import inspect

        def nest(n, ev):
            if n:
                return nest(n - 1, ev)
            ev.wait()
            return len(inspect.stack(0))

        ev = interpose.Event()
        deep = interpose.spawn(nest, 300, ev)
        shallow = interpose.spawn(nest, 3, ev)
        interpose.sleep(0)
        ev.set()
        return deep.join() - shallow.join()

    assert interpose.run(main) == 297


def test_daemon_thread_parked_at_exit_does_not_hang_finalization():
    # 3.14 hangs (instead of exiting) a thread that attaches its thread state
    # while the interpreter finalizes: no coroutine may be resumed then.
    r = run_hooked("""
        import threading
        ev = threading.Event()
        t = threading.Thread(target=ev.wait, daemon=True)
        t.start()
        print("main done")
    """, timeout=30)
    assert check_ok(r, "hooked") == ["main done"]


def test_thread_names_reported_by_current_thread_in_coroutines():
    # _thread names: threading.current_thread().name per converted thread.
    r = run_hooked("""
        import threading
        seen = []
        ts = [threading.Thread(target=lambda: seen.append(threading.current_thread().name),
                               name=f"t{i}") for i in range(3)]
        for t in ts: t.start()
        for t in ts: t.join()
        print(sorted(seen))
    """)
    assert check_ok(r, "hooked") == ["['t0', 't1', 't2']"]


def test_interpose_stack_size_env_sets_the_librarys_default():
    # The library no longer parses the variable: Python parses it and hands
    # the bytes over at load time (interpose_stack_set_default).
    code = "from interpose._core import _native; print(_native.lib.stack_default())"
    env = dict(os.environ, INTERPOSE_STACK_SIZE="256K")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == 256 * 1024
