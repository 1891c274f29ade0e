"""Boots interpose in a Python process started with `interpose run` or with
the lines `interpose env` prints: this directory is put first on PYTHONPATH,
so this module is imported as sitecustomize at start-up.  It boots the
runtime only when INTERPOSE_AUTOSTART=1, then removes itself from sys.path
and imports the sitecustomize it shadowed, if there is one.

When the runtime cannot boot (an interpreter interpose does not support, a
bad INTERPOSE_* setting, the library missing or not preloaded), the process
prints one line that says why:
* started by `interpose run` (INTERPOSE_BOOT_REQUIRED=1), it exits with
  status 2 before the program runs: `run` never runs a program without the
  runtime;
* otherwise (`interpose env`), the program runs with the runtime off, as
  plain Python, and the line says so.  Never a traceback, never "Error in
  sitecustomize": this runs in every Python process of the shell.

Kept parseable by any Python 3 (no f-strings): a child process running
another interpreter imports it too.
"""
import os
import sys


def _in_subinterpreter():
    """Whether this is a subinterpreter, which imports site (and so this
    module) as it starts.  The runtime belongs to the main interpreter:
    booting it again here would replace the main interpreter's state under
    its coroutines.  Silent, so a subinterpreter prints what it would
    without interpose.  3.12+ tells directly; 3.11 only through
    _xxsubinterpreters, which is removed again from sys.modules so that
    the interpreter's module set stays as it would be."""
    import _thread
    is_main = getattr(_thread, "_is_main_interpreter", None)
    if is_main is not None:
        return not is_main()
    had = "_xxsubinterpreters" in sys.modules
    try:
        import _xxsubinterpreters as interpreters
    except ImportError:
        return False  # a build without it: subinterpreters come from C only
    try:
        return interpreters.get_current() != interpreters.get_main()
    finally:
        if not had:
            sys.modules.pop("_xxsubinterpreters", None)


def _boot():
    if os.environ.get("INTERPOSE_AUTOSTART") != "1":
        return
    if _in_subinterpreter():
        return
    # Only the process `interpose run` started must boot; its children boot
    # as under `interpose env` (a child may be another, unsupported Python).
    required = os.environ.pop("INTERPOSE_BOOT_REQUIRED", None) == "1"
    # Import the package this file belongs to, whose library is the one
    # preloaded, even if another copy of interpose comes first on sys.path
    # (a source checkout next to an installed one); the script then finds it
    # in sys.modules.
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, root)
    try:
        from interpose import _autostart
    except (ImportError, ValueError, SyntaxError) as e:
        # ImportError: unsupported interpreter, library missing or stale;
        # ValueError: a bad INTERPOSE_STACK_SIZE (the library reads it);
        # SyntaxError: a Python too old to read the package.
        _not_booted(_reason(e), required)
        return
    finally:
        sys.path.remove(root)
    try:
        _autostart.boot()
    except (_autostart.BootError, ValueError) as e:
        # ValueError: any other bad INTERPOSE_* setting.  Anything else is
        # a bug: site reports it with its traceback.
        _not_booted(_reason(e), required)


def _reason(exc):
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    prefix = "interpose: "
    return text[len(prefix):] if text.startswith(prefix) else text


def _not_booted(reason, required):
    if required:
        sys.stderr.write("interpose run: the runtime did not boot, so the"
                         " program was not started: %s\n" % (reason,))
        sys.stderr.flush()
        os._exit(2)  # SystemExit here would make site print a traceback
    sys.stderr.write("interpose: %s; the runtime is off in this process"
                     " (it runs as plain Python).\n" % (reason,))


def _chain():
    """Import the sitecustomize this one shadows, as Python would have."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    me = sys.modules.pop("sitecustomize")
    try:
        import sitecustomize  # noqa: F401  (the next one on sys.path)
    except ImportError as e:
        if getattr(e, "name", None) != "sitecustomize":
            raise
    finally:
        # The import machinery that is running this module pops its name
        # from sys.modules when it finishes: leave an entry there.
        sys.modules.setdefault("sitecustomize", me)


_boot()
_chain()
