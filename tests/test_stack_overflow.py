"""The C stack of a coroutine: deep recursion with the default stack raises
RecursionError inside the coroutine; an overflow of a small stack hits the
guard page below it, and the engine reports the named coroutine (also
with faulthandler on) before it aborts.
"""
import textwrap

import pytest

from support.snippets import run_snippet
from support.stack_overflow import (CATCH_RECURSION, DEEP_BODIES, PYTHON_OVERFLOWERS,
                                    SMALL_STACKS, assert_overflow_reported,
                                    overflow_program)


@pytest.mark.parametrize("kind", ["json_loads", "nested_list_repr", "repr_method"])
@pytest.mark.timeout(60)
def test_deep_recursion_with_default_stack_raises_recursionerror(kind):
    # Acceptable: RecursionError inside the coroutine, caught there, exit 0.
    # Unacceptable: the guard page (or anything else) killing the process.
    r = run_snippet(
        "import json, sys, interpose\n"
        + textwrap.dedent(DEEP_BODIES[kind])
        + CATCH_RECURSION
        + textwrap.dedent(
            """
            def main():
                return interpose.spawn(catch_recursion, name="deep").join()
            expected = 4 if (3, 13) <= sys.version_info < (3, 14) else 1
            assert interpose._core._native.lib.stack_default() == expected * 1024 * 1024
            print(interpose.run(main), flush=True)
            """
        ),
        env={"INTERPOSE_STACK_SIZE": ""},
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "RecursionError"
    assert "overflowed" not in r.stderr


@pytest.mark.parametrize("size", SMALL_STACKS)
@pytest.mark.parametrize("fn", [*PYTHON_OVERFLOWERS, "via_c"])
@pytest.mark.timeout(60)
def test_tiny_stack_overflow_reports_named_coroutine_and_aborts(fn, size, deep_c):
    name = f"tiny-{fn}-{size}"
    code = overflow_program(deep_c, name, fn=fn, size=size)
    assert_overflow_reported(run_snippet(code), name, size)


@pytest.mark.timeout(60)
def test_stack_overflow_with_interpose_stack_size_env_reports_named_coroutine(deep_c):
    code = overflow_program(deep_c, "env-sized")
    size = SMALL_STACKS[1]
    r = run_snippet(code, env={"INTERPOSE_STACK_SIZE": f"{size // 1024}K"})
    assert_overflow_reported(r, "env-sized", size)


@pytest.mark.timeout(60)
def test_stack_overflow_reported_with_x_faulthandler(deep_c):
    size = SMALL_STACKS[1]
    code = overflow_program(deep_c, "with-faulthandler", size=size)
    r = run_snippet(code, python_args=["-X", "faulthandler"])
    assert_overflow_reported(r, "with-faulthandler", size)


@pytest.mark.timeout(60)
def test_stack_overflow_reported_when_faulthandler_enabled_after_start(deep_c):
    # faulthandler.enable() after the scheduler exists installs its SIGSEGV
    # handler on top of interpose's.  The guard-page report must survive
    # that: a program (or a test runner) may turn faulthandler on at any time.
    size = SMALL_STACKS[1]
    code = overflow_program(
        deep_c, "late-faulthandler", size=size,
        prelude="import faulthandler; interpose.sleep(0); faulthandler.enable()")
    r = run_snippet(code)
    assert_overflow_reported(r, "late-faulthandler", size)


@pytest.mark.timeout(60)
def test_stack_overflow_with_mprotect_guard_reports_named_coroutine(deep_c):
    # The fallback guard (a PROT_NONE page, native/stack.c), forced.
    size = SMALL_STACKS[1]
    code = overflow_program(deep_c, "mprotect-guard", size=size)
    r = run_snippet(code, env={"INTERPOSE_STACK_GUARD": "mprotect"})
    assert_overflow_reported(r, "mprotect-guard", size)


FORK_CHILD_OVERFLOW = """
import ctypes, os, sys, interpose

def noop():
    return None

def via_c():
    return ctypes.CDLL({deep_c!r}).interpose_test_recurse(10_000_000)

def main():
    interpose.spawn(noop).join()  # its stack goes to the pool
    pid = os.fork()
    if pid == 0:
        coro = interpose.spawn(via_c, name="forked")  # the pooled stack
        print("id", coro.id, flush=True)
        coro.join()
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    print("child", os.WTERMSIG(status) if os.WIFSIGNALED(status) else None)

interpose.run(main)
"""


@pytest.mark.timeout(60)
def test_stack_overflow_in_fork_child_on_parents_stack_reports_named_coroutine(
        deep_c):
    # The child's coroutine runs on a stack the parent mapped and guarded
    # (the pool survives fork); its guard, a marker or a PROT_NONE page,
    # must still be there.  Acceptable: the child reports the named
    # coroutine and dies of SIGABRT.  Unacceptable: the recursion running
    # on into the stack below (stacks are adjacent) and dying unreported.
    size = SMALL_STACKS[1]
    r = run_snippet(FORK_CHILD_OVERFLOW.format(deep_c=deep_c),
                    env={"INTERPOSE_STACK_SIZE": f"{size // 1024}K"})
    assert r.returncode == 0, r.stderr[-1500:]
    assert "child 6" in r.stdout, (r.stdout, r.stderr[-1500:])
    words = r.stdout.split()
    cid = words[words.index("id") + 1]
    assert (f"interpose: coroutine {cid} 'forked' overflowed its C stack of"
            f" {size} bytes") in r.stderr, r.stderr[-1500:]
