"""The aarch64 guest: a real arm64 CPython (Debian's packages, unpacked by
scripts/install-test-deps) run under qemu-user, with the aarch64 wheel
cross-built from a clean copy of the checkout, and small C programs
cross-compiled for it.

Missing tools fail (never skip) the tests that need them, naming the fix:
the aarch64 checks are part of the suite."""
import glob
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from support.install import check, copy_checkout, user_env

CROSS_CC = "aarch64-linux-gnu-gcc"
ARM64_ROOT = os.environ.get("INTERPOSE_ARM64_ROOT",
                            "/var/cache/interpose-tests/arm64-python")


def qemu_aarch64():
    qemu = shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")
    if qemu is None:
        pytest.fail("no qemu-aarch64: install the Debian package qemu-user"
                    " (scripts/install-test-deps does)")
    return qemu


def cross_cc():
    if shutil.which(CROSS_CC) is None:
        pytest.fail(f"{CROSS_CC} not found: run scripts/install-test-deps")
    return CROSS_CC


def arm64_python():
    """(qemu, the guest interpreter as qemu -L sees it)."""
    qemu = qemu_aarch64()
    cross_cc()
    # Debian's own python3 version (scripts/install-test-deps unpacks it),
    # whichever interpreter runs the suite.
    found = sorted(glob.glob(os.path.join(ARM64_ROOT, "usr", "bin", "python3.[0-9]*")))
    if not found:
        pytest.fail(f"no arm64 CPython in {ARM64_ROOT}: run"
                    " scripts/install-test-deps")
    return qemu, found[-1]


def build_site(tmp):
    """(qemu, guest python, site dir holding the unpacked aarch64 wheel),
    the wheel built in tmp from a clean copy of the checkout."""
    qemu, python = arm64_python()
    src = copy_checkout(os.path.join(tmp, "src"))
    dist = os.path.join(tmp, "dist")
    check([sys.executable, "-m", "build", "--no-isolation", "--wheel",
           "--outdir", dist, src], cwd=tmp,
          env=user_env(CC=CROSS_CC, INTERPOSE_WERROR="1"))
    (wheel,) = os.listdir(dist)
    assert wheel.endswith("-py3-none-linux_aarch64.whl"), wheel
    site = os.path.join(tmp, "site")
    with zipfile.ZipFile(os.path.join(dist, wheel)) as z:
        z.extractall(site)
    return qemu, python, site


def guest(aarch64_site, script, *, preload, also_preload=(), timeout=120):
    """Run script in the guest interpreter; with preload, under the
    preloaded wheel as `interpose env` sets it up (autostart on), and
    also_preload after libinterpose.  A CompletedProcess (text)."""
    qemu, python, site = aarch64_site
    env = [f"PYTHONPATH={site}"]
    if preload:
        # What `interpose env` exports, for the guest only (qemu itself
        # is an x86-64 process and must not see the aarch64 LD_PRELOAD).
        libs = [f"{site}/interpose/libinterpose.so", *map(str, also_preload)]
        env = [f"PYTHONPATH={site}/interpose/_boot:{site}",
               f"LD_PRELOAD={':'.join(libs)}",
               "INTERPOSE_AUTOSTART=1"]
    argv = [qemu, "-L", ARM64_ROOT]
    if not preload:
        # qemu hands the guest its own environment: the host's sanitizer
        # runtimes (scripts/asan-tests preloads them into qemu) are no
        # aarch64 libraries.
        argv += ["-U", "LD_PRELOAD"]
    for item in env:
        argv += ["-E", item]
    return subprocess.run([*argv, python, "-c", script], capture_output=True,
                          text=True, timeout=timeout, env=user_env())
