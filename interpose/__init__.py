"""interpose: run blocking Python code on coroutines.

This file only re-exports the public API; everything else is private.
Layout (docs/design.md, "Python layout"; imports go down this list only):
  __main__, _demo_echo     the command line (python -m interpose)
  _autostart, _boot/       boots the runtime in a preloaded process
  _diagnostics/            dump, deadlock report, blocking monitor, ps, stats
  _integrations/           threads, signals, sync primitives, time slicing:
                           they register with the core's hook lists
  _core/                   native binding, errors, versions, settings,
                           scheduler and wait queue: imports nothing above
"""
from ._core._errors import Cancelled as Cancelled
from ._core._errors import NativeLibraryError as NativeLibraryError
from ._core._sched import Coroutine as Coroutine
from ._core._statistics import CoroutineStatistics as CoroutineStatistics
from ._core._statistics import Statistics as Statistics
from ._core._sched import current as current
from ._core._sched import deadline as deadline
from ._core._sched import no_hooks as no_hooks
from ._core._sched import run as run
from ._core._sched import sleep as sleep
from ._core._sched import spawn as spawn
from ._core._statistics import statistics as statistics
from ._core._sched import wait_readable as wait_readable
from ._core._sched import wait_writable as wait_writable
from ._integrations._sync import Condition as Condition
from ._integrations._sync import Event as Event
from ._integrations._sync import Lock as Lock
from ._integrations._sync import Queue as Queue
from ._integrations._sync import RLock as RLock
from ._integrations._sync import Semaphore as Semaphore
from ._diagnostics._dump import dump as dump
from ._diagnostics._monitor import start as start_blocking_monitor
from ._version import __version__ as __version__

__all__ = [
    "Cancelled",
    "Condition",
    "Coroutine",
    "CoroutineStatistics",
    "Event",
    "Lock",
    "NativeLibraryError",
    "Queue",
    "RLock",
    "Semaphore",
    "Statistics",
    "__version__",
    "current",
    "deadline",
    "dump",
    "no_hooks",
    "run",
    "sleep",
    "spawn",
    "start_blocking_monitor",
    "statistics",
    "wait_readable",
    "wait_writable",
]
