"""Exceptions of the public API and the mapping from engine results to them."""
import errno
import os


class NativeLibraryError(ImportError):
    """libinterpose.so is missing, stale or refuses this interpreter."""


class Cancelled(OSError):
    """The coroutine was cancelled: its waits fail with ECANCELED.

    Raised inside a cancelled coroutine by every wait, and by join() on a
    coroutine that ended because it was cancelled.
    """

    def __init__(self, message="the coroutine was cancelled"):
        super().__init__(errno.ECANCELED, message)


def raise_for(code):
    """Raise the exception for a negative park result other than -EINTR."""
    if code == -errno.ETIMEDOUT:
        raise TimeoutError(errno.ETIMEDOUT, "interpose: the deadline has passed")
    if code == -errno.ECANCELED:
        raise Cancelled()
    if code == -errno.EDEADLK:
        raise RuntimeError(
            "interpose: a wait was entered with the GIL held or on a thread"
            " without a scheduler; interpose waits must be called from Python"
            " code running in a coroutine or a thread's main context"
        )
    raise OSError(-code, os.strerror(-code))


def spawn_error(err):
    """Turn a failed spawn's OSError into one that says what to do."""
    if err.errno == errno.ENOMEM:
        try:
            with open("/proc/sys/vm/max_map_count") as f:
                limit = f.read().strip()
        except OSError:
            limit = "unknown"
        return OSError(
            errno.ENOMEM,
            "interpose: cannot map a stack for a new coroutine: the process is"
            f" out of memory or of memory mappings (vm.max_map_count={limit};"
            " each coroutine needs 2). Raise the limit with"
            " 'sysctl -w vm.max_map_count=N' or use smaller/fewer coroutines.",
        )
    return err

