"""Snippets that overflow a coroutine's C stack, shared by the stack tests
(test_stack_overflow.py, test_guard_handler.py, test_pyver.py): bodies
of deep() that recurse in Python or in C, the program that overflows a
small stack on purpose, and the check of the engine's report.
"""
import signal
import subprocess
import sys

import interpose


# Bodies of deep(), each recursing past any default limit: in Python code
# (CPython's recursion limit), or in C inside repr() and json (CPython's C
# recursion check, or from 3.14 the stack it is told).
DEEP_BODIES = {
    "python": """
        def deep(n=0):
            return deep(n + 1)
    """,
    "repr_method": """
        class Node:
            def __init__(self, child):
                self.child = child
            def __repr__(self):
                return "Node(" + repr(self.child) + ")"
        def deep():
            node = None
            for _ in range(sys.getrecursionlimit() * 2):
                node = Node(node)
            return repr(node)
    """,
    "nested_list_repr": """
        def deep():
            x = []
            for _ in range(100_000):
                x = [x]
            return repr(x)
    """,
    "json_loads": """
        def deep():
            return json.loads("[" * 100_000 + "]" * 100_000)
    """,
}


# Runs deep() and says whether RecursionError stopped it.
CATCH_RECURSION = """
def catch_recursion():
    try:
        deep()
    except RecursionError:
        return "RecursionError"
    return "no error"
"""


# What reaches the guard page.  Before 3.14 CPython counts C recursion and
# knows nothing of a coroutine's stack, so Python code (a deep repr, deep
# JSON) overflows a small stack.  From 3.14 CPython is told each
# coroutine's stack (native/pyver.c) and raises RecursionError first
# (tests/test_pyver.py); only native code that recurses without CPython's
# checks still reaches the guard page: via_c, a C function built here.
DEEP_C_SOURCE = r"""
int interpose_test_recurse(int n) {
  volatile char frame[512];
  frame[0] = (char) n;
  return n == 0 ? 0 : interpose_test_recurse(n - 1) + frame[0];
}
"""


PY314 = sys.version_info >= (3, 14)


PYTHON_OVERFLOWERS = [] if PY314 else ["via_repr", "via_json"]


SMALL_STACKS = [interpose._core._native.lib.stack_minimum() * k for k in (1, 2)]


# The overflow the remaining tests provoke: Python code where it can.
OVERFLOW_FN = "via_c" if PY314 else "via_repr"


def build_deep_c(d):
    """Build, in directory d (a pathlib.Path), a shared library with an
    unchecked C recursion (gcc, as the build); return its path."""
    (d / "deep.c").write_text(DEEP_C_SOURCE)
    subprocess.run(["gcc", "-O0", "-shared", "-fPIC", "-o", str(d / "deep.so"),
                    str(d / "deep.c")], check=True, timeout=60)
    return str(d / "deep.so")


OVERFLOW = """
import ctypes, json, sys, interpose
DEEP_C = {deep_c!r}

class Node:
    def __init__(self, child):
        self.child = child
    def __repr__(self):
        return "Node(" + repr(self.child) + ")"

def via_repr():
    node = None
    for _ in range(sys.getrecursionlimit() - 50):
        node = Node(node)
    return repr(node)

def via_json():
    depth = sys.getrecursionlimit() - 50
    return json.loads("[" * depth + "]" * depth)

def via_c():
    return ctypes.CDLL(DEEP_C).interpose_test_recurse(10_000_000)

def main():
    coro = interpose.spawn({fn}, name={name!r}{stack_arg})
    print("id", coro.id, flush=True)
    coro.join()

{prelude}
interpose.run(main)
print("survived", flush=True)
"""


def overflow_program(deep_c, name, *, fn=OVERFLOW_FN, size=None, prelude=""):
    """OVERFLOW for a coroutine called name that runs fn on a stack of size
    bytes (None: the default, or INTERPOSE_STACK_SIZE), after prelude."""
    stack_arg = "" if size is None else f", stack_size={size}"
    return OVERFLOW.format(fn=fn, name=name, stack_arg=stack_arg,
                           prelude=prelude, deep_c=deep_c)


def assert_overflow_reported(r, name, usable):
    # Acceptable: the named report on stderr, then death by SIGABRT (or by
    # SIGSEGV).  Unacceptable: no report, a RecursionError or a clean exit.
    tail = r.stderr[-1500:]
    assert r.returncode in (-signal.SIGABRT, -signal.SIGSEGV), (r.returncode, tail)
    assert "survived" not in r.stdout
    words = r.stdout.split()
    cid = int(words[words.index("id") + 1])
    expected = f"interpose: coroutine {cid} '{name}' overflowed its C stack"
    assert expected in r.stderr, tail
    assert f"overflowed its C stack of {usable} bytes" in r.stderr, tail
