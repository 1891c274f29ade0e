"""The aarch64 wheel, cross-built from a clean copy of the checkout, runs a
real aarch64 CPython (Debian's arm64 packages, unpacked by
scripts/install-test-deps) under qemu-user.

What runs here: the library's engine, the aarch64 context switch, the
hooks and the boot through the preload (the lines of `interpose env`, given
to the guest with qemu's -E).  What cannot: `interpose run` and `info`'s
probe, which exec a new interpreter (qemu-user only emulates the process
it started; with no binfmt_misc handler the host kernel refuses an aarch64
executable).  Thread counts include qemu's own helper thread, so the test
compares the same script with and without the preload."""
import subprocess

import pytest

from support.aarch64 import ARM64_ROOT, guest
from support.install import BLOCKED_THREADS, os_threads, user_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

# After BLOCKED_THREADS: what the runtime did (0 parks means no coroutine
# ever waited, i.e. the threads were OS threads).
REPORT = """
from interpose import _autostart
import interpose
print("booted", _autostart.booted(), "parks>=20", interpose.statistics().parks >= 20)
"""


def test_aarch64_wheel_under_qemu_turns_blocked_threads_into_coroutines(
        aarch64_site):
    plain = guest(aarch64_site, BLOCKED_THREADS, preload=False)
    assert plain.returncode == 0, plain.stderr
    hooked = guest(aarch64_site, BLOCKED_THREADS + REPORT, preload=True)
    assert hooked.returncode == 0 and hooked.stderr == "", hooked.stderr
    # 20 threads become coroutines; interpose adds its preemption monitor.
    assert os_threads(plain) - os_threads(hooked) == 20 - 1
    assert hooked.stdout.splitlines()[-1] == "booted True parks>=20 True"


def test_aarch64_wheel_under_qemu_reports_a_bad_setting_in_one_line(
        aarch64_site):
    qemu, python, site = aarch64_site
    proc = subprocess.run(
        [qemu, "-L", ARM64_ROOT, "-E", f"PYTHONPATH={site}/interpose/_boot:{site}",
         "-E", f"LD_PRELOAD={site}/interpose/libinterpose.so",
         "-E", "INTERPOSE_AUTOSTART=1", "-E", "INTERPOSE_STACK_SIZE=lots",
         python, "-c", "print('ran')"],
        capture_output=True, text=True, timeout=120, env=user_env())
    assert proc.returncode == 0 and proc.stdout == "ran\n"
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "INTERPOSE_STACK_SIZE='lots'" in proc.stderr
    assert "the runtime is off" in proc.stderr
