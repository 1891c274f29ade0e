"""The guard below each coroutine stack (native/stack.c): a guard marker
(madvise MADV_GUARD_INSTALL, Linux 6.13+) that costs no memory mapping of
its own, else a PROT_NONE page that costs one more, when the kernel
refuses markers or INTERPOSE_STACK_GUARD=mprotect asks for it.  What the
guard catches is tested in test_stack_overflow.py under both."""
import json

import pytest

from interpose._core import _settings
from support.probes import needs_guard_markers
from support.snippets import run_snippet

# N coroutines each run (mapping its frame data stack) and park before the
# next is spawned, the pattern of a thread-per-connection server; prints
# the mappings each added, the guard in use and whether all finished.
PARKED_MAPPINGS = """
import ctypes, json, interpose
from interpose._core import _native

N = {n}
{prelude}

def mappings():
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)

event = interpose.Event()

def waiter(i):
    event.wait()
    return i

def main():
    before = mappings()
    coros = []
    for i in range(N):
        coros.append(interpose.spawn(waiter, i, stack_size={stack_size}))
        interpose.sleep(0)
    during = mappings()
    event.set()
    ok = [c.join() for c in coros] == list(range(N))
    return {{"per_coroutine": (during - before) / N,
             "guard": _native.lib.stack_guard(), "ok": ok}}

print(json.dumps(interpose.run(main)))
"""

# mlockall(MCL_FUTURE | MCL_ONFAULT) (MCL_CURRENT would lock the
# interpreter): every later mapping is locked, and no kernel puts guard
# markers in a locked mapping (EINVAL, as a kernel without markers
# answers).  The raw system call: ASan's mlockall does nothing.
LOCK_FUTURE_MAPPINGS = """
import platform
libc = ctypes.CDLL(None, use_errno=True)
SYS_MLOCKALL = {"x86_64": 151, "aarch64": 230}[platform.machine()]
MCL_FUTURE, MCL_ONFAULT = 2, 4
assert libc.syscall(SYS_MLOCKALL, MCL_FUTURE | MCL_ONFAULT) == 0, ctypes.get_errno()
"""


def _parked(n, *, env=None, prelude="", stack_size=None):
    r = run_snippet(PARKED_MAPPINGS.format(n=n, prelude=prelude,
                                           stack_size=stack_size),
                    env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.splitlines()[-1])


@needs_guard_markers
@pytest.mark.timeout(120)
def test_stack_guard_markers_give_parked_coroutines_no_mapping_of_their_own():
    # Stacks mapped one after another merge into one VMA when nothing
    # splits them; the frame data stacks come one slab per 64 coroutines.
    # With PROT_NONE guards the same run costs two mappings per coroutine.
    report = _parked(3000, env={"INTERPOSE_STACK_GUARD": ""})
    assert report["ok"]
    assert report["guard"] == 1
    assert report["per_coroutine"] < 0.1, report


@pytest.mark.timeout(120)
def test_stack_guard_mprotect_setting_costs_two_mappings_per_coroutine():
    report = _parked(3000, env={"INTERPOSE_STACK_GUARD": "mprotect"})
    assert report["ok"]
    assert report["guard"] == 0
    assert 1.9 <= report["per_coroutine"] <= 2.1, report


@pytest.mark.timeout(60)
def test_stack_guard_falls_back_to_mprotect_when_the_kernel_refuses_markers():
    # Acceptable: every coroutine runs on a PROT_NONE-guarded stack (two
    # mappings each) and the engine stops asking for markers.  Unacceptable:
    # spawn failing, or a stack left without a guard.  Few, small stacks:
    # locked mappings count against RLIMIT_MEMLOCK.
    report = _parked(4, prelude=LOCK_FUTURE_MAPPINGS, stack_size=128 * 1024,
                     env={"INTERPOSE_STACK_GUARD": ""})
    assert report["ok"]
    assert report["guard"] == 0
    assert report["per_coroutine"] >= 1.5, report


def test_stack_guard_setting_rejects_other_values_in_one_line():
    problems = _settings.problems({"INTERPOSE_STACK_GUARD": "none"})
    assert problems == ["INTERPOSE_STACK_GUARD='none' is not one of"
                        " 'markers', 'mprotect'"]
    assert _settings.problems({"INTERPOSE_STACK_GUARD": "mprotect"}) == []
