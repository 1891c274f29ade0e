"""Boot the runtime in a preloaded process: the thread's main coroutine runs
__main__ with its hooks on.

Settings come from the environment, so child processes inherit them:
INTERPOSE_AUTOSTART=1 (boot at all), INTERPOSE_MAIN_HOOKS=0 (leave the main
coroutine's hooks off; spawned coroutines still have theirs),
INTERPOSE_STATS=1 (print the scheduler's statistics to stderr at exit),
INTERPOSE_STACK_SIZE (the default stack size, read by the library).
"""
import atexit
import os
import sys

from . import _native
from . import _sched

BOOT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_boot")

_booted = False


def booted():
    """Whether this process booted through autostart."""
    return _booted


def boot():
    global _booted
    if _booted:
        return
    if not _native.lib.preloaded():
        sys.stderr.write(
            "interpose: INTERPOSE_AUTOSTART=1 but libinterpose.so is not"
            " preloaded in this process: blocking calls stay blocking. Start it"
            " with 'python -m interpose run' or the lines of"
            " 'python -m interpose env'.\n"
        )
    _sched._scheduler()
    if os.environ.get("INTERPOSE_MAIN_HOOKS", "1") != "0":
        _native.lib.coro_set_hooks(1)
    if os.environ.get("INTERPOSE_STATS") == "1":
        atexit.register(_print_statistics)
    _booted = True


def _print_statistics():
    stats = _sched.statistics()
    fields = ", ".join(f"{k}={v}" for k, v in stats.__dict__.items())
    sys.stderr.write(f"interpose statistics (pid {os.getpid()}): {fields}\n")


def environment(stack_size=None, main_hooks=True, stats=False, base=None):
    """The environment that makes a Python process boot interpose."""
    env = dict(os.environ if base is None else base)
    env["LD_PRELOAD"] = _preload_list(env.get("LD_PRELOAD"))
    env["PYTHONPATH"] = _prepend(BOOT_DIR, env.get("PYTHONPATH"), os.pathsep)
    env["INTERPOSE_AUTOSTART"] = "1"
    if stack_size is not None:
        env["INTERPOSE_STACK_SIZE"] = str(stack_size)
    if not main_hooks:
        env["INTERPOSE_MAIN_HOOKS"] = "0"
    if stats:
        env["INTERPOSE_STATS"] = "1"
    return env


# Sanitizer runtimes must come first in LD_PRELOAD or they refuse to start
# (scripts/asan-tests preloads them for the whole test suite).
_SANITIZER_RUNTIMES = ("libasan", "libubsan", "libtsan", "liblsan",
                       "libclang_rt.")


def _preload_list(existing):
    """LD_PRELOAD with the library in front, behind any sanitizer runtime."""
    items = [i for i in (existing or "").split(":") if i and i != _native.LIBRARY_PATH]
    first = [i for i in items if os.path.basename(i).startswith(_SANITIZER_RUNTIMES)]
    rest = [i for i in items if i not in first]
    return ":".join([*first, _native.LIBRARY_PATH, *rest])


def _prepend(value, existing, sep):
    """value first, then the existing entries."""
    items = [i for i in (existing or "").split(sep) if i and i != value]
    return sep.join([value, *items])
