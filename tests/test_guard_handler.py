"""The guard-page SIGSEGV handler is async-signal-safe (issue #12 item 4):
it reports a coroutine's C-stack overflow with the raw write system call,
never through an interposable write() (the library's own hook takes locks,
may allocate and may park), and dies as it always did, of SIGABRT.

A library preloaded ahead of everything defines write() and marks stderr
when the report reaches it.  Acceptable: the named report, no mark, death
by SIGABRT.  Unacceptable: the mark (the report went through write()), a
missing report, another status."""
import os
import shutil
import signal
import subprocess

import pytest

from support.snippets import run_snippet
from support.stack_overflow import SMALL_STACKS, assert_overflow_reported, overflow_program

pytestmark = pytest.mark.timeout(120)

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def write_spy(tmp_path_factory):
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        pytest.fail("a C compiler (cc) is needed to build the write() spy")
    out = tmp_path_factory.mktemp("spy") / "libwrite_spy.so"
    cmd = [cc, "-std=gnu11", "-O1", "-Wall", "-Wextra", "-Werror", "-shared",
           "-fPIC", "-o", str(out), os.path.join(HERE, "native", "write_spy.c")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=110)
    assert r.returncode == 0, f"{cmd}\n{r.stdout}{r.stderr}"
    return str(out)


def _preloading(lib):
    # After the sanitizer runtimes that scripts/asan-tests preloads (they
    # must come first), before anything else.
    base = [p for p in os.environ.get("LD_PRELOAD", "").split(":") if p]
    return {"LD_PRELOAD": ":".join(base + [lib])}


@pytest.mark.parametrize("prelude", ["", "import faulthandler; interpose.sleep(0); faulthandler.enable()"],
                         ids=["alone", "under_faulthandler"])
def test_overflow_report_uses_no_interposable_write(write_spy, prelude, deep_c):
    # From CPython 3.14 Python code raises RecursionError before the guard
    # page: the overflow is then an unchecked C recursion (support/stack_overflow.py).
    name = "spied"
    size = SMALL_STACKS[1]
    code = overflow_program(deep_c, name, size=size, prelude=prelude)
    r = run_snippet(code, env=_preloading(write_spy))
    assert_overflow_reported(r, name, size)
    assert r.returncode == -signal.SIGABRT, r.stderr[-1500:]
    assert "write_spy" not in r.stderr, r.stderr[-1500:]


def test_write_spy_sees_ordinary_writes(write_spy):
    # The spy works: a report-like line written by the program reaches it.
    r = run_snippet("import os; os.write(2, b'x overflowed y\\n')",
                    env=_preloading(write_spy))
    assert r.returncode == 0
    assert "write_spy: the report went through write()" in r.stderr
