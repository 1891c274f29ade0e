"""interpose: run blocking Python code on coroutines.

Layout:
  _native      loads libinterpose.so (the C engine) and binds it with ctypes
  _compat      the supported interpreter versions
  _sched       coroutines and the per-thread scheduler
  _waitqueue   the parking primitive the sync primitives share
  _sync        cooperative Event, Lock, RLock, Semaphore, Condition, Queue
  _threads     threading on coroutines (interpose run), or native threads
  _signals     signal handlers in the main coroutine, the wakeup fd
  _monitor     reports coroutines that keep their thread too long
  _errors      exceptions
  _demo_echo   the no-argument echo demo (python -m interpose demo)
  _autostart   boots the runtime in a preloaded process (with _boot/)
  _settings    the INTERPOSE_* environment settings and their checks
  __main__     the command line
"""
from ._errors import Cancelled as Cancelled
from ._errors import NativeLibraryError as NativeLibraryError
from ._monitor import start as start_blocking_monitor
from ._sched import Coroutine as Coroutine
from ._sched import Statistics as Statistics
from ._sched import current as current
from ._sched import deadline as deadline
from ._sched import no_hooks as no_hooks
from ._sched import run as run
from ._sched import sleep as sleep
from ._sched import spawn as spawn
from ._sched import statistics as statistics
from ._sched import wait_readable as wait_readable
from ._sched import wait_writable as wait_writable
from ._sync import Condition as Condition
from ._sync import Event as Event
from ._sync import Lock as Lock
from ._sync import Queue as Queue
from ._sync import RLock as RLock
from ._sync import Semaphore as Semaphore
from ._version import __version__ as __version__

__all__ = [
    "Cancelled",
    "Condition",
    "Coroutine",
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
    "no_hooks",
    "run",
    "sleep",
    "spawn",
    "start_blocking_monitor",
    "statistics",
    "wait_readable",
    "wait_writable",
]
