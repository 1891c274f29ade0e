"""The core's hook lists: how the integrations (threads, signals, time
slicing) take part in the scheduler's life without the core importing
them.

An integration appends its callables here when it is imported or installed;
the core calls every entry of a list in the order they were added, and
never imports an integration.  Nothing here changes the process: the core
registers its own at-fork and exit handlers with the interpreter only when
the first scheduler starts (_sched.py), so `import interpose` alone leaves
os.fork() and interpreter exit as they were.

Invariants: a hook runs with the GIL held; a hook that raises propagates to
whatever made the core call it (a spawn, a wait, os.fork()), except the
exit and fork hooks, whose errors the interpreter reports as unraisable.
"""

# fn(sched): a thread's scheduler has just been created, on that thread; its
# main coroutine exists.  sched.is_main_thread says whether it is the
# process's main thread.
scheduler_started = []

# fn(coro): a spawned coroutine has finished: its result or exception is
# published and joiners are woken.  Runs in the coroutine's own thread state
# (so _thread.get_ident() is its ident), before the thread state is deleted.
coroutine_finished = []

# fn() -> bool: whether spawn(preemptible=None) makes a preemptible
# coroutine; True if any hook says so.
preemptible_by_default = []

# fn(): a coroutine is about to become preemptible (the preemption monitor
# must be running by then).
before_preemptible = []

# fn(): interpreter exit, after the core has shut down the main thread's
# coroutines (the core's atexit handler; threading has already waited for
# non-daemon threads).
exiting = []

# fn(): os.fork() around the core's own bookkeeping.  before_fork hooks run
# in reverse order of addition, the after hooks in order, as
# os.register_at_fork runs its own; after_fork_in_child hooks run after the
# core has marked the coroutines lost in the fork finished.
before_fork = []
after_fork_in_parent = []
after_fork_in_child = []


def run(hooks, *args):
    """Call every hook of a list, in order."""
    for hook in list(hooks):
        hook(*args)
