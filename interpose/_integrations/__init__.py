"""The integrations around the core: threading on coroutines (_threads,
with one module per CPython version range), signals in the main coroutine
(_signals), cooperative sync primitives (_sync), time slicing (_preempt,
_forkwarn).  Each imports the core and registers with its hook lists
(_core/_hooks.py); the core never imports them.

Importing this package registers every integration: the package
interpose imports it before any public name is used.  Registering only
appends to the core's lists; nothing changes in the process until the
first scheduler starts.
"""
from . import _preempt as _preempt
from . import _signals as _signals
from . import _sync as _sync
from . import _threads as _threads
