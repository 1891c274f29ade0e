"""How the command line reports that the runtime cannot load here.

`python -m interpose ...` imports the package before the command line's own
code runs, so a library that does not load (or an interpreter it refuses)
ends the command inside that import: _native calls report() instead of
raising, and the user reads one line (or, for `info`, its report) rather
than a traceback.  It lives in the core because the core is what fails;
__main__ prints the same lines for `info` when loading succeeds.
"""
import sys

from . import _compat


def report(reason):
    """Exit status (after reporting) of a command whose package import
    failed: the runtime cannot load in this interpreter or install."""
    reason = reason.removeprefix("interpose: ")
    if sys.argv[1:2] == ["info"]:
        print_interpreter()
        return print_unusable(reason)
    sys.stderr.write(f"interpose: {reason}\n")
    return 2


def print_interpreter():
    """info's first lines: the interpreter and whether interpose supports it."""
    print(f"python: {sys.version.split()[0]} ({sys.executable})")
    reason = _compat.unsupported_reason()
    print(f"interpreter supported: {'yes' if reason is None else 'no: ' + reason}")


def print_unusable(reason):
    """info's report when the runtime does not load; its exit status."""
    print(f"runtime: not usable: {reason}")
    print("boot under run/env: no (the runtime does not load)")
    return 1
