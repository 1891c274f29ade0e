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
import glob
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from support.install import (BLOCKED_THREADS, check, copy_checkout,
                             os_threads, user_env)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CROSS_CC = "aarch64-linux-gnu-gcc"
ARM64_ROOT = os.environ.get("INTERPOSE_ARM64_ROOT",
                            "/var/cache/interpose-tests/arm64-python")

# After BLOCKED_THREADS: what the runtime did (0 parks means no coroutine
# ever waited, i.e. the threads were OS threads).
REPORT = """
from interpose import _autostart
import interpose
print("booted", _autostart.booted(), "parks>=20", interpose.statistics().parks >= 20)
"""


def _arm64_python():
    """The guest interpreter, as qemu -L sees it; fails (not skips) when
    the machine lacks it, naming the fix."""
    qemu = shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")
    if qemu is None:
        pytest.fail("no qemu-aarch64: install the Debian package qemu-user"
                    " (scripts/install-test-deps does)")
    if shutil.which(CROSS_CC) is None:
        pytest.fail(f"{CROSS_CC} not found: run scripts/install-test-deps")
    # Debian's own python3 version (scripts/install-test-deps unpacks it),
    # whichever interpreter runs the suite.
    found = sorted(glob.glob(os.path.join(ARM64_ROOT, "usr", "bin", "python3.[0-9]*")))
    if not found:
        pytest.fail(f"no arm64 CPython in {ARM64_ROOT}: run"
                    " scripts/install-test-deps")
    root_python = found[-1]
    return qemu, root_python


@pytest.fixture(scope="module")
def aarch64_site(tmp_path_factory):
    """(qemu, guest python, site dir holding the unpacked aarch64 wheel)."""
    qemu, python = _arm64_python()
    tmp = tmp_path_factory.mktemp("aarch64")
    src = copy_checkout(str(tmp / "src"))
    check([sys.executable, "-m", "build", "--no-isolation", "--wheel",
           "--outdir", tmp / "dist", src], cwd=tmp,
          env=user_env(CC=CROSS_CC, INTERPOSE_WERROR="1"))
    (wheel,) = os.listdir(tmp / "dist")
    assert wheel.endswith("-py3-none-linux_aarch64.whl"), wheel
    site = tmp / "site"
    with zipfile.ZipFile(tmp / "dist" / wheel) as z:
        z.extractall(site)
    return qemu, python, str(site)


def guest(aarch64_site, script, *, preload):
    qemu, python, site = aarch64_site
    env = [f"PYTHONPATH={site}"]
    if preload:
        # What `interpose env` exports, for the guest only (qemu itself
        # is an x86-64 process and must not see the aarch64 LD_PRELOAD).
        env = [f"PYTHONPATH={site}/interpose/_boot:{site}",
               f"LD_PRELOAD={site}/interpose/libinterpose.so",
               "INTERPOSE_AUTOSTART=1"]
    argv = [qemu, "-L", ARM64_ROOT]
    for item in env:
        argv += ["-E", item]
    return subprocess.run([*argv, python, "-c", script], capture_output=True,
                          text=True, timeout=120, env=user_env())


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
