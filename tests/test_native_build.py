"""Builds of the native library: the standalone context-switch test (native
and, under qemu, aarch64), the aarch64 cross build, the refusal of an
unsupported architecture, and what the built library links and exports.

Everything is built into tmp_path, never into the source tree."""
import os
import platform
import re
import shutil
import stat
import struct
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NATIVE = os.path.join(ROOT, "native")
SWITCH_TEST = os.path.join(ROOT, "tests", "native", "switch_test.c")
CROSS_CC = "aarch64-linux-gnu-gcc"
CROSS_PACKAGES = "gcc-aarch64-linux-gnu libc6-dev-arm64-cross"
EM_X86_64 = 62
EM_AARCH64 = 183
CFLAGS = ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror"]


# ---- helpers ---------------------------------------------------------------

def run(cmd, **kwargs):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=110,
                          **kwargs)


def native_arch():
    machine = platform.machine()
    if machine in ("x86_64", "amd64"):
        return "x86_64"
    if machine in ("aarch64", "arm64"):
        return "aarch64"
    pytest.fail(f"no native/switch_<arch>.S for this machine ({machine})")


def require_cross_compiler():
    """The aarch64 checks are part of the suite: a machine without the
    cross toolchain fails them rather than passing them silently."""
    cc = shutil.which(CROSS_CC)
    if cc is None:
        pytest.fail(f"{CROSS_CC} not found: install the Debian packages "
                    f"{CROSS_PACKAGES} (apt-get install -y {CROSS_PACKAGES})")
    return cc


def build_switch_test(cc, arch, out, extra=()):
    cmd = [cc, *CFLAGS, *extra, "-o", str(out), SWITCH_TEST,
           os.path.join(NATIVE, f"switch_{arch}.S"), "-lm"]
    proc = run(cmd)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout}{proc.stderr}"
    return out


def make_library(out, cc=None):
    cmd = ["make", "-C", NATIVE, f"OUT={out}"]
    if cc is not None:
        cmd.append(f"CC={cc}")
    return run(cmd)


def assert_switch_test_ok(proc, arch):
    assert proc.returncode == 0, proc.stdout + proc.stderr
    words = proc.stdout.split()
    assert words[:3] == ["switch_test:", "ok", arch], proc.stdout
    assert float(words[3]) > 0, proc.stdout


class Elf:
    """The few ELF facts these tests need, read with struct: the machine,
    the DT_NEEDED list and the defined, visible dynamic symbols."""

    SHT_DYNSYM = 11
    SHT_DYNAMIC = 6
    DT_NEEDED = 1

    def __init__(self, path):
        with open(path, "rb") as f:
            self.data = f.read()
        assert self.data[:4] == b"\x7fELF", f"{path} is not an ELF file"
        self.is64 = {1: False, 2: True}[self.data[4]]
        self.end = {1: "<", 2: ">"}[self.data[5]]
        self.machine = self.unpack("H", 18)[0]
        if self.is64:
            shoff, = self.unpack("Q", 0x28)
            shentsize, shnum = self.unpack("HH", 0x3A)
            fmt = "IIQQQQIIQQ"
        else:
            shoff, = self.unpack("I", 0x20)
            shentsize, shnum = self.unpack("HH", 0x2E)
            fmt = "IIIIIIIIII"
        self.sections = [self.unpack(fmt, shoff + i * shentsize)
                         for i in range(shnum)]

    def unpack(self, fmt, offset):
        return struct.unpack_from(self.end + fmt, self.data, offset)

    def string(self, section, offset):
        start = section[4] + offset
        return self.data[start:self.data.index(b"\0", start)].decode()

    def entries(self, section, fmt):
        size = struct.calcsize(self.end + fmt)
        offset, total = section[4], section[5]
        return [self.unpack(fmt, offset + i) for i in range(0, total, size)]

    def needed(self):
        names = []
        for sec in self.sections:
            if sec[1] == self.SHT_DYNAMIC:
                strtab = self.sections[sec[6]]
                for tag, val in self.entries(sec, "qQ" if self.is64 else "iI"):
                    if tag == self.DT_NEEDED:
                        names.append(self.string(strtab, val))
        return names

    def exported(self):
        names = []
        fmt = "IBBHQQ" if self.is64 else "IIIBBH"
        for sec in self.sections:
            if sec[1] != self.SHT_DYNSYM:
                continue
            strtab = self.sections[sec[6]]
            for sym in self.entries(sec, fmt):
                if self.is64:
                    name, info, other, shndx = sym[0], sym[1], sym[2], sym[3]
                else:
                    name, info, other, shndx = sym[0], sym[3], sym[4], sym[5]
                binding, visibility = info >> 4, other & 3
                if shndx != 0 and binding in (1, 2) and visibility in (0, 3):
                    names.append(self.string(strtab, name))
        return names


def header_functions():
    """Names of the functions native/interpose.h declares IP_EXPORT."""
    with open(os.path.join(NATIVE, "interpose.h")) as f:
        text = f.read()
    return set(re.findall(r"IP_EXPORT[^;{]*?\b(interpose_\w+)\s*\(", text))


# Hooked names that are not calls the engine itself makes through the real
# table: the fortified variants and vfork (which the library turns into fork).
EXTRA_HOOKS = {"__read_chk", "__recv_chk", "__recvfrom_chk", "__poll_chk", "vfork",
               "eventfd_read", "eventfd_write"}


def hooked_functions():
    """The libc names the library interposes: its real-function tables in
    native/internal.h and native/hooks_pthread.c (every hooked call has a
    real twin) plus EXTRA_HOOKS."""
    with open(os.path.join(NATIVE, "internal.h")) as f:
        text = f.read()
    block = re.search(r"#define IP_REAL_FUNCTIONS\(X\)(.*?)\n\n", text, re.S).group(1)
    # hooks_pthread.c keeps its own table of the pthread functions it hooks.
    with open(os.path.join(NATIVE, "hooks_pthread.c")) as f:
        pthread = re.search(r"#define PTHREAD_FUNCTIONS\(X\)((?:.*\\\n)*.*)",
                            f.read()).group(1)
    return (set(re.findall(r"X\((\w+)\)", block))
            | set(re.findall(r"X\((\w+)\)", pthread)) | EXTRA_HOOKS)


def expected_exports():
    return header_functions() | hooked_functions()


@pytest.fixture(scope="module")
def aarch64_switch_test(tmp_path_factory):
    cc = require_cross_compiler()
    out = tmp_path_factory.mktemp("aarch64") / "switch_test"
    return build_switch_test(cc, "aarch64", out, extra=["-static"])


# ---- the context switch on its own -----------------------------------------

@pytest.mark.timeout(120)
def test_switch_test_native_reports_ok(tmp_path):
    arch = native_arch()
    exe = build_switch_test("gcc", arch, tmp_path / "switch_test")
    assert_switch_test_ok(run([str(exe)]), arch)


@pytest.mark.timeout(120)
def test_switch_test_cross_compiles_static_for_aarch64(aarch64_switch_test):
    elf = Elf(aarch64_switch_test)
    assert elf.machine == EM_AARCH64
    assert elf.needed() == [], "a static binary needs no shared library"


@pytest.mark.timeout(120)
def test_switch_test_under_qemu_aarch64_reports_ok(aarch64_switch_test):
    qemu = shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")
    if qemu is None:
        pytest.fail("no qemu-aarch64: install the Debian package qemu-user"
                    " (scripts/install-test-deps does)")
    assert_switch_test_ok(run([qemu, str(aarch64_switch_test)]), "aarch64")


# ---- the library build -----------------------------------------------------

@pytest.mark.timeout(120)
def test_make_cross_aarch64_builds_aarch64_without_libpython(tmp_path):
    cc = require_cross_compiler()
    out = tmp_path / "libinterpose.so"
    proc = make_library(out, cc=cc)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    elf = Elf(out)
    assert elf.machine == EM_AARCH64
    needed = elf.needed()
    assert "libc.so.6" in needed
    assert not [n for n in needed if "python" in n], needed
    assert set(elf.exported()) == expected_exports()


@pytest.mark.timeout(120)
def test_make_unknown_architecture_fails_with_message(tmp_path):
    fake_cc = tmp_path / "riscv64-fake-gcc"
    fake_cc.write_text(
        "#!/bin/sh\n"
        "if [ \"$1\" = -dumpmachine ]; then\n"
        "  echo riscv64-linux-gnu; exit 0\n"
        "fi\n"
        "echo 'fake compiler: only -dumpmachine works' >&2\n"
        "exit 1\n")
    fake_cc.chmod(fake_cc.stat().st_mode | stat.S_IXUSR)
    out = tmp_path / "libinterpose.so"
    proc = make_library(out, cc=fake_cc)
    assert proc.returncode != 0
    assert "no context switch for 'riscv64-linux-gnu'" in \
        proc.stdout + proc.stderr
    assert not out.exists()


@pytest.mark.timeout(120)
def test_make_native_links_no_libpython_and_exports_the_abi_and_hooks(tmp_path):
    out = tmp_path / "libinterpose.so"
    proc = make_library(out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    elf = Elf(out)
    assert elf.machine == {"x86_64": EM_X86_64,
                           "aarch64": EM_AARCH64}[native_arch()]
    assert not [n for n in elf.needed() if "python" in n], elf.needed()
    ldd = run(["ldd", str(out)])
    assert ldd.returncode == 0, ldd.stderr
    assert "python" not in ldd.stdout, ldd.stdout

    nm = run(["nm", "-D", "--defined-only", str(out)])
    assert nm.returncode == 0, nm.stderr
    names = [line.split()[-1] for line in nm.stdout.splitlines() if line]
    assert names, nm.stdout
    assert sorted(elf.exported()) == sorted(names)
    assert set(names) == expected_exports(), \
        sorted(set(names) ^ expected_exports())
