"""Build glue: compile native/ into interpose/libinterpose.so with the C
compiler alone (no make), and tag the wheel for the platform only.

libinterpose.so is a plain shared library loaded through ctypes, not an
extension module: it must not link libpython, and one build serves every
supported CPython, so the wheel is tagged py3-none-<platform>.

This is the build a user's `pip install` runs, from a checkout or from the
sdist.  It repeats the compile line of native/Makefile (the developers'
build, which also makes ASan and cross builds); tests/test_install_build.py
checks that the two stay the same.  Decisions (docs/install.md):

* -Werror only when INTERPOSE_WERROR=1 (CI and scripts/build-wheel set it):
  a newer compiler's new warning must not break a user's install, while
  development and CI builds still fail on any warning.
* CC and CFLAGS/LDFLAGS from the environment are honoured, as for any
  C build; CC defaults to the first of cc, gcc, clang on PATH.
"""
import glob
import hashlib
import os
import shlex
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
NATIVE = os.path.join(HERE, "native")

# The flags native/Makefile uses, minus -Werror (see WERROR below).
REQUIRED_CFLAGS = ["-std=gnu11", "-fPIC", "-fvisibility=hidden", "-Wall",
                   "-Wextra", "-D_GNU_SOURCE"]
REQUIRED_LDFLAGS = ["-shared", "-Wl,-z,noexecstack", "-Wl,--no-undefined"]
LDLIBS = ["-lpthread"]
DEFAULT_CFLAGS = "-O2 -g"
ARCHES = {"x86_64": "x86_64", "aarch64": "aarch64"}


class NativeBuildError(Exception):
    """The native library cannot be built here; the message says why."""


def compiler():
    """The C compiler command (a list): $CC, else cc, gcc or clang."""
    cc = os.environ.get("CC")
    if cc:
        return shlex.split(cc)
    for name in ("cc", "gcc", "clang"):
        if shutil.which(name):
            return [name]
    raise NativeBuildError(
        "interpose: building libinterpose.so needs a C compiler (cc, gcc or"
        " clang; set CC to choose another). Install one, e.g. 'apt-get install"
        " gcc', or install a prebuilt manylinux wheel (docs/install.md).")


def build_id(native_dir=NATIVE):
    """SHA-256 of every *.c, *.h and *.S in name order: the same value
    native/Makefile and interpose/_core/_native.py compute."""
    digest = hashlib.sha256()
    for name in sorted(os.listdir(native_dir)):
        if name.endswith((".c", ".h", ".S")):
            with open(os.path.join(native_dir, name), "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


def target_arch(cc):
    """The architecture the compiler builds for, or NativeBuildError."""
    try:
        machine = subprocess.run([*cc, "-dumpmachine"], capture_output=True,
                                 text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as e:
        raise NativeBuildError(f"interpose: cannot run the C compiler"
                               f" {shlex.join(cc)}: {e}") from None
    arch = ARCHES.get(machine.split("-")[0])
    if arch is None:
        raise NativeBuildError(
            f"interpose: no context switch for '{machine}'; supported: "
            f"{', '.join(ARCHES)} (native/switch_<arch>.S)")
    return arch


def compile_command(out, *, cc=None, werror=None, native_dir=NATIVE):
    """The one command line that builds the library into out."""
    cc = compiler() if cc is None else cc
    if werror is None:
        werror = os.environ.get("INTERPOSE_WERROR") == "1"
    cflags = shlex.split(os.environ.get("CFLAGS", DEFAULT_CFLAGS))
    cflags += REQUIRED_CFLAGS + (["-Werror"] if werror else [])
    cflags.append(f'-DIP_BUILD_ID="{build_id(native_dir)}"')
    ldflags = shlex.split(os.environ.get("LDFLAGS", "")) + REQUIRED_LDFLAGS
    sources = sorted(glob.glob(os.path.join(native_dir, "*.c")))
    asm = os.path.join(native_dir, f"switch_{target_arch(cc)}.S")
    return [*cc, *cflags, *ldflags, "-o", out, *sources, asm, *LDLIBS]


def build_library(out):
    os.makedirs(os.path.dirname(out), exist_ok=True)
    cmd = compile_command(out)
    print(shlex.join(cmd), flush=True)
    subprocess.check_call(cmd)


def _setup():
    from setuptools import Extension, setup
    from setuptools.command.build_ext import build_ext
    try:
        from setuptools.command.bdist_wheel import bdist_wheel
    except ImportError:  # setuptools < 70.1 keeps it in the wheel package
        from wheel.bdist_wheel import bdist_wheel

    class BuildNative(build_ext):
        """Builds the library instead of extension modules (there are none:
        the placeholder Extension below only marks the distribution as
        binary, so setuptools runs this command and installs to platlib)."""

        def run(self):
            base = HERE if self.inplace else os.path.abspath(self.build_lib)
            out = os.path.join(base, "interpose", "libinterpose.so")
            try:
                build_library(out)
            except NativeBuildError as e:
                sys.exit(str(e))
            self._outputs = [out]

        def get_outputs(self):
            return getattr(self, "_outputs", [])

        def get_output_mapping(self):
            return {}

    class PlatformWheel(bdist_wheel):
        """py3-none-<platform>: the library is for the platform, not for one
        CPython ABI (it is loaded through ctypes by 3.11 to 3.13 alike).
        The architecture is the compiler's, so a cross build (CC=
        aarch64-linux-gnu-gcc, scripts/build-wheel --arch aarch64) is
        tagged for the machine it runs on."""

        def get_tag(self):
            plat = super().get_tag()[2]
            if plat.startswith("linux_"):
                try:
                    plat = "linux_" + target_arch(compiler())
                except NativeBuildError as e:
                    sys.exit(str(e))
            return ("py3", "none", plat)

    setup(
        ext_modules=[Extension("interpose.libinterpose", sources=[])],
        cmdclass={"build_ext": BuildNative, "bdist_wheel": PlatformWheel},
    )


if __name__ == "__main__":
    _setup()
