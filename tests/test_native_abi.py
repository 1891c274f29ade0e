"""Every ctypes declaration in interpose/_core/_native.py matches
native/interpose.h (the idea behind trio's gen_exports --test): a signature
changed on one side only fails here instead of corrupting memory at run
time."""
import ctypes
import os
import re
import subprocess

import pytest

from interpose._core import _native

HEADER = os.path.join(os.path.dirname(os.path.dirname(__file__)), "native", "interpose.h")

C_TYPES = {
    "int": ctypes.c_int,
    "void *": ctypes.c_void_p,
    "const char *": ctypes.c_char_p,
    "uint64_t": ctypes.c_uint64,
    "int64_t": ctypes.c_int64,
    "size_t": ctypes.c_size_t,
    "uintptr_t": ctypes.c_size_t,
    "unsigned long": ctypes.c_ulong,
    "uint64_t *": ctypes.POINTER(ctypes.c_uint64),
    "int64_t *": ctypes.POINTER(ctypes.c_int64),
    "void **": ctypes.POINTER(ctypes.c_void_p),
    "int *": ctypes.POINTER(ctypes.c_int),
    "interpose_stats_t *": ctypes.POINTER(_native.Stats),
    "interpose_coro_info_t *": ctypes.POINTER(_native.CoroInfo),
    "interpose_sched_info_t *": ctypes.POINTER(_native.SchedInfo),
    "long": ctypes.c_long,
    "char *": ctypes.c_char_p,
}


def _header_text():
    if not os.path.exists(HEADER):
        pytest.fail(f"{HEADER} is missing: run the tests from a source checkout")
    with open(HEADER) as f:
        return f.read()


def _declarations():
    text = re.sub(r"/\*.*?\*/", "", _header_text(), flags=re.S)
    pattern = re.compile(r"IP_EXPORT\s+([\w\s\*]+?)\s*\b(interpose_\w+)\s*\(([^)]*)\)\s*;")
    found = {}
    for ret, name, params in pattern.findall(text):
        params = " ".join(params.split())
        args = []
        if params != "void":
            for p in params.split(","):
                p = p.strip()
                m = re.match(r"(.*?)(\w+)$", p)
                args.append(" ".join(m.group(1).replace("*", " * ").split()).replace(" *", " *"))
        found[name] = (" ".join(ret.replace("*", " * ").split()), args)
    return found


def _ctype(decl):
    decl = decl.replace(" * ", " *").strip()
    decl = re.sub(r"\s+\*", " *", decl)
    return C_TYPES[decl]


def test_every_exported_function_is_declared_once():
    declared = _declarations()
    assert set(declared) == set(_native.SIGNATURES)


@pytest.mark.parametrize("name", sorted(_native.SIGNATURES))
def test_signature_matches_header(name):
    ret, args = _declarations()[name]
    restype, argtypes, _ = _native.SIGNATURES[name]
    if name in ("interpose_coro_spawn", "interpose_diag_start_thread"):
        # body is a PyObject * declared as void * in C.
        assert argtypes[0] is ctypes.py_object
        args, argtypes = args[1:], argtypes[1:]
    assert _ctype(ret) is restype or (ret == "void *" and restype is ctypes.c_void_p)
    assert [_ctype(a) for a in args] == list(argtypes)


def test_abi_version_matches_header():
    m = re.search(r"#define INTERPOSE_ABI_VERSION (\d+)", _header_text())
    assert int(m.group(1)) == _native.ABI_VERSION == _native.lib.abi_version()


def test_stats_struct_matches_header():
    body = re.search(r"typedef struct interpose_stats \{(.*?)\}", _header_text(), re.S).group(1)
    fields = re.findall(r"uint64_t (\w+);", body)
    assert fields == [name for name, _ in _native.Stats._fields_]


def test_constants_match_header():
    text = _header_text()
    for macro, value in [("INTERPOSE_PARK_TIMEOUT", _native.PARK_TIMEOUT),
                         ("INTERPOSE_READABLE", _native.READABLE),
                         ("INTERPOSE_WRITABLE", _native.WRITABLE)]:
        assert int(re.search(rf"#define {macro} (\d+)", text).group(1)) == value


def _c_layout(tmp_path, struct, fields):
    """sizeof(struct) and offsetof(struct, f) for each field, from a C
    program compiled against native/interpose.h."""
    src = tmp_path / "layout.c"
    lines = ['#include <stddef.h>', '#include <stdio.h>', '#include "interpose.h"',
             "int main(void) {", f'  printf("%zu\\n", sizeof({struct}));']
    lines += [f'  printf("%zu\\n", offsetof({struct}, {f}));' for f in fields]
    lines += ["  return 0;", "}"]
    src.write_text("\n".join(lines) + "\n")
    exe = tmp_path / "layout"
    subprocess.run(["cc", "-I", os.path.dirname(HEADER), "-o", str(exe), str(src)],
                   check=True, capture_output=True, text=True)
    return [int(x) for x in subprocess.run([str(exe)], check=True, capture_output=True,
                                           text=True).stdout.split()]


@pytest.mark.parametrize("struct, ctype", [
    ("interpose_coro_info_t", "CoroInfo"), ("interpose_sched_info_t", "SchedInfo")])
def test_diagnostics_structs_match_header(tmp_path, struct, ctype):
    cls = getattr(_native, ctype)
    fields = [name for name, _ in cls._fields_]
    size, *offsets = _c_layout(tmp_path, struct, fields)
    assert size == ctypes.sizeof(cls)
    assert offsets == [getattr(cls, f).offset for f in fields]


def test_wait_kinds_match_header():
    kinds = dict(re.findall(r"#define INTERPOSE_WAIT_(\w+) (\d+)", _header_text()))
    assert kinds.pop("NONE") == "0"
    assert {k: int(v) for k, v in kinds.items()} == {
        k: getattr(_native, "WAIT_" + k) for k in kinds}
