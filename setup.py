"""Build glue: compile native/ into interpose/libinterpose.so with make.

libinterpose.so is a plain shared library loaded through ctypes, not an
extension module, so it is built by native/Makefile rather than by
setuptools' compiler; it must not link libpython.  The distribution still
declares binary content so that wheels are tagged for the platform.
"""
import os
import subprocess

from setuptools import Distribution, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildNative(build_ext):
    def run(self):
        if self.inplace:
            out_dir = os.path.join(HERE, "interpose")
        else:
            out_dir = os.path.join(os.path.abspath(self.build_lib), "interpose")
        out = os.path.join(out_dir, "libinterpose.so")
        subprocess.check_call(
            ["make", "-C", os.path.join(HERE, "native"), f"OUT={out}"]
        )
        self._outputs = [out]

    def get_outputs(self):
        return getattr(self, "_outputs", [])

    def get_output_mapping(self):
        return {}


class BinaryDistribution(Distribution):
    def has_ext_modules(self):
        return True


setup(distclass=BinaryDistribution, cmdclass={"build_ext": BuildNative})
