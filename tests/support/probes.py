"""What the test process can see of its own threads and coroutines: live
thread states, a hub blocked in epoll_wait, coroutines that have all
parked.  Read from the C-API, /proc and the scheduler's counters, never
ordered by sleeps."""
import ctypes
import platform

import pytest

import interpose


def live_thread_states():
    """Thread states of this interpreter, counted through the C-API."""
    api = ctypes.pythonapi
    api.PyInterpreterState_Get.restype = ctypes.c_void_p
    api.PyInterpreterState_ThreadHead.restype = ctypes.c_void_p
    api.PyInterpreterState_ThreadHead.argtypes = [ctypes.c_void_p]
    api.PyThreadState_Next.restype = ctypes.c_void_p
    api.PyThreadState_Next.argtypes = [ctypes.c_void_p]
    n = 0
    ts = api.PyInterpreterState_ThreadHead(api.PyInterpreterState_Get())
    while ts:
        n += 1
        ts = api.PyThreadState_Next(ts)
    return n


# epoll_wait, epoll_pwait and epoll_pwait2, by system call number.
_EPOLL_SYSCALLS = {"x86_64": {232, 281, 441}, "aarch64": {22, 441}}


def in_epoll_wait(native_id):
    """True when the OS thread is blocked in epoll_wait: the hub of a thread
    whose coroutines are all parked (read from /proc, not ordered by
    sleeps)."""
    base = f"/proc/self/task/{native_id}/"
    try:
        with open(base + "wchan") as f:
            if "epoll" in f.read():
                return True
    except OSError:
        pass
    try:
        with open(base + "syscall") as f:
            first = f.read().split()[0]
    except (OSError, IndexError):
        return False
    numbers = _EPOLL_SYSCALLS.get(platform.machine(), set())
    return first.isdigit() and int(first) in numbers


def wait_all_blocked(coroutines):
    """Yield until every coroutine in the list has parked or finished.

    A coroutine that parks hands control back, so after enough sleep(0)
    rounds every one has run up to its first real wait."""
    for _ in range(1000):
        before = interpose.statistics().parks
        interpose.sleep(0)
        interpose.sleep(0)
        if all(c.done() for c in coroutines) or interpose.statistics().parks == before + 2:
            return
    raise AssertionError("coroutines never settled")


def _max_map_count():
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


# vm.max_map_count of this machine (None when unreadable), and the mark of
# the tests that run a process into it: below 200,000 a test reaches the
# limit in seconds; above, it would take too long (or CI raised it).
MAX_MAP_COUNT = _max_map_count()
exhausts_max_map_count = pytest.mark.skipif(
    MAX_MAP_COUNT is None or MAX_MAP_COUNT > 200_000,
    reason="vm.max_map_count is unknown or too high to exhaust in a test")


def _kernel_has_guard_markers():
    """Whether this kernel installs guard markers (madvise
    MADV_GUARD_INSTALL, Linux 6.13+), the engine's default stack guard
    (native/stack.c), asked on a scratch page of our own."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                          ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = 4096 * 2
    prot_rw, map_private_anonymous, madv_guard_install = 3, 0x22, 102
    p = libc.mmap(None, size, prot_rw, map_private_anonymous, -1, 0)
    if p in (None, ctypes.c_void_p(-1).value):
        return False
    try:
        return libc.madvise(p, 4096, madv_guard_install) == 0
    finally:
        libc.munmap(p, size)


# Whether stacks get guard markers here (else PROT_NONE pages, which cost
# a mapping more per coroutine), and the mark of the tests that need them.
GUARD_MARKERS = _kernel_has_guard_markers()
needs_guard_markers = pytest.mark.skipif(
    not GUARD_MARKERS,
    reason="the kernel has no guard markers (MADV_GUARD_INSTALL, Linux 6.13+)")
