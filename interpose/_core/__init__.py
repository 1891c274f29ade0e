"""The core: the native binding and the scheduler, knowing no integration.

Modules here import only each other (and the standard library), never a
module outside _core/; tests/test_import_graph.py checks it.  The
integrations around the core (threads, signals, time slicing) register
with the hook lists of _hooks.py instead of being called by name; the sync
primitives and the diagnostics only use the core.

Import direction inside the core, lowest first:
  _compat, _errors, _hooks    version facts, exceptions, hook lists
  _settings, _ctypes_import, _unloadable
  _native                     loads libinterpose.so, checks its ABI
  _time                       timeouts and deadlines in engine nanoseconds
  _sched                      coroutines, schedulers, the wait queue
  _statistics                 interpose.statistics()
"""
