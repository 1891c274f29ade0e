"""Boot the runtime in a preloaded process: the thread's main coroutine runs
__main__ with its hooks on.

Settings come from the environment, so child processes inherit them:
INTERPOSE_AUTOSTART=1 (boot at all), INTERPOSE_MAIN_HOOKS=0 (leave the main
coroutine's hooks off; spawned coroutines still have theirs),
INTERPOSE_STATS=1 (print the scheduler's statistics to stderr at exit),
INTERPOSE_STACK_SIZE (the default stack size, handed to the library),
INTERPOSE_THREADS=native (threads stay OS threads, each with a scheduler of
its own, instead of becoming coroutines), INTERPOSE_MONITOR=SECONDS (report
coroutines that run longer than SECONDS without reaching a hooked call),
INTERPOSE_PREEMPT=threads|all|off (which coroutines take turns at bytecode
boundaries: threads and main coroutines, also spawned ones, or none).
Diagnostics (docs/diagnostics.md): INTERPOSE_CONTROL=0 (no control socket
for `interpose ps`), INTERPOSE_DEADLOCK=report|exit|off, and
INTERPOSE_DUMP_SIGNAL=SIGQUIT (dump every coroutine on that signal).
"""
import atexit
import os
import sys

from ._diagnostics import _startup as _diagnostics_startup
from ._diagnostics import _monitor
from ._core import _native
from ._integrations import _preempt
from ._core import _sched
from ._core import _settings
from ._integrations import _threads

BOOT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_boot")
BOOT_HOOK = os.path.join(BOOT_DIR, "sitecustomize.py")

_booted = False


class BootError(Exception):
    """The runtime cannot boot in this process; the message says why."""


def booted():
    """Whether this process booted through autostart."""
    return _booted


def boot():
    """Start the runtime in this process, or raise BootError (or
    SettingError) before changing anything."""
    global _booted
    if _booted:
        return
    _settings.check()
    if not _native.lib.preloaded():
        # Threads would become coroutines whose blocking calls block every
        # other coroutine of the thread: worse than no runtime at all.
        raise BootError(
            f"{_native.LIBRARY_PATH} is not preloaded in this process"
            " (LD_PRELOAD was changed or dropped on the way)")
    _sched._scheduler()
    _preempt.mode = _settings.get("INTERPOSE_PREEMPT") or "threads"
    if _preempt.threads_preemptible():  # the main thread takes turns too
        _sched.set_preemptible(_native.lib.coro_current(), True)
    if _settings.get("INTERPOSE_THREADS") == "native":
        _threads.install_native()
    else:
        _threads.install()
    if _settings.get("INTERPOSE_MAIN_HOOKS") != "0":
        _native.lib.coro_set_hooks(1)
    if _settings.get("INTERPOSE_STATS") == "1":
        atexit.register(_print_statistics)
    _diagnostics_startup.boot()
    monitor = _settings.get("INTERPOSE_MONITOR")
    if monitor is not None:
        _monitor.start(monitor)
    _booted = True


def boot_problem():
    """Why a process started with environment() would not boot, as far as
    this process can tell without starting one, or None."""
    if not os.path.isfile(BOOT_HOOK):
        return (f"the boot hook {BOOT_HOOK} is missing from this install of"
                " interpose (a broken wheel or a partial copy): reinstall it")
    bad = sorted({c for c in " :" if c in _native.LIBRARY_PATH})
    if bad:
        return (f"the library path {_native.LIBRARY_PATH} contains"
                f" {' and '.join(map(repr, bad))}, which LD_PRELOAD cannot"
                " carry: install interpose in a directory without them")
    flags = [opt for opt, on in (("-I", sys.flags.isolated),
                                 ("-E", sys.flags.ignore_environment
                                  and not sys.flags.isolated),
                                 ("-S", sys.flags.no_site)) if on]
    if flags:
        return (f"python {' '.join(flags)} ignores the PYTHONPATH or the site"
                " hook that boots the runtime: run interpose without it")
    return None


def _print_statistics():
    from ._diagnostics import _stats

    sys.stderr.write(_stats.format_all())


def environment(stack_size=None, main_hooks=True, stats=False, base=None,
                native_threads=False, monitor=None, deadlock=None,
                dump_signal=None):
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
    if native_threads:
        env["INTERPOSE_THREADS"] = "native"
    if monitor is not None:
        env["INTERPOSE_MONITOR"] = str(monitor)
    if deadlock is not None:
        env["INTERPOSE_DEADLOCK"] = deadlock
    if dump_signal is not None:
        env["INTERPOSE_DUMP_SIGNAL"] = dump_signal
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
