"""Imports ctypes so that the fd libffi keeps for good lands above the
runtime's internal fd floor, not at the program's first free number.

Why: libffi 3.5 (Debian sid; trixie's 3.4 does not) makes closures from
static trampolines.  The first closure (ctypes makes one as it is imported)
opens libffi's own shared object and keeps that fd for the life of the
process, to map further trampoline tables from it.  A plain Python program
that never imports ctypes has no such fd, so under the runtime its first
os.pipe() would get (4, 5) instead of (3, 4) (tests/test_internal_fds.py).
libffi keeps the number it was given, so the fd cannot be moved afterwards:
it must get a high number to begin with.  open() returns the lowest free
number, so while ctypes is imported every free number below the floor is
held by a duplicate of one /dev/null fd, and released right after.  Cost:
at most a few hundred dup() and close() calls, once.

If ctypes is already imported, the program imported it (and libffi's fd,
if any, is where plain Python puts it too): nothing to do.
"""
import os
import resource
import sys

# Must equal interpose_fd_internal_floor() (native/fdtable.c), which cannot
# be asked yet: the library is loaded through ctypes.  256, or a quarter of
# a soft RLIMIT_NOFILE below 1024 (0 below 64).
_FLOOR = 256


def internal_fd_floor():
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 4 * _FLOOR:
        return soft // 4 if soft >= 64 else 0
    return _FLOOR


def _import_with_low_fds_held():
    floor = internal_fd_floor()
    held = []
    try:
        try:
            fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            while fd < floor:
                held.append(fd)
                fd = os.dup(held[0])
            os.close(fd)  # the first one at or above the floor
        except OSError:
            pass  # EMFILE or no /dev/null: hold what we could
        import ctypes
    finally:
        for fd in held:
            os.close(fd)
    return ctypes


if "ctypes" in sys.modules:
    import ctypes
else:
    ctypes = _import_with_low_fds_held()
