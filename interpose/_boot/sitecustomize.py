"""Boots interpose in a Python process started with `interpose run` or with
the lines `interpose env` prints: this directory is put first on PYTHONPATH,
so this module is imported as sitecustomize at start-up.  It boots the
runtime only when INTERPOSE_AUTOSTART=1, then removes itself from sys.path
and imports the sitecustomize it shadowed, if there is one.

Kept compatible with any Python: an interpreter interpose does not support
(a child process running another version) gets a one-line warning and runs
without coroutines.
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
    # Import the package this file belongs to, whose library is the one
    # preloaded, even if another copy of interpose comes first on sys.path
    # (a source checkout next to an installed one); the script then finds it
    # in sys.modules.
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, root)
    try:
        from interpose import _autostart
    except ImportError as e:
        sys.stderr.write("interpose: not started in this process: %s\n" % (e,))
        return
    finally:
        sys.path.remove(root)
    _autostart.boot()


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
