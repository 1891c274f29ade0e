"""scripts/cpython-oracle: its verdict parsing, its comparison rules
(unexplained, allowed, stale, a crashed run's unreached tests) and its
one-line errors.  The oracle itself runs in CI (.ci/run), not here: it
takes minutes."""
import importlib.machinery
import importlib.util
import os
import subprocess
import sys

import pytest

# The checkout this test file is in (the ASan run copies only the package).
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(CHECKOUT, "scripts", "cpython-oracle")
ALLOWED = os.path.join(CHECKOUT, "tests", "cpython-oracle-allowed.txt")


def _load():
    loader = importlib.machinery.SourceFileLoader("cpython_oracle", SCRIPT)
    spec = importlib.util.spec_from_loader("cpython_oracle", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


oracle = _load()


def test_verbose_output_gives_a_verdict_per_test_id():
    out = (
        "test_a (test.test_x.C.test_a) ... ok\n"
        "test_b (test.test_x.C.test_b)\nA docstring line. ... FAIL\n"
        "test_c (test.test_x.C.test_c) ... skipped 'no'\n"
        "test_d (test.test_x.C.test_d) ... ERROR\n"
        "test_e (test.test_x.C.test_e) ... expected failure\n"
        "test_f (test.test_x.C.test_f) ... \n"  # the run died here
    )
    assert oracle.verbose_verdicts(out) == {
        "test.test_x.C.test_a": "ok", "test.test_x.C.test_b": "failure",
        "test.test_x.C.test_c": "skipped", "test.test_x.C.test_d": "error",
        "test.test_x.C.test_e": "xfail"}


def test_junit_file_gives_a_verdict_per_test_id(tmp_path):
    xml = tmp_path / "j.xml"
    xml.write_text(
        '<testsuites><testsuite>'
        '<testcase name="test.test_x.C.test_a" />'
        '<testcase name="test.test_x.C.test_b"><failure>x</failure></testcase>'
        '<testcase name="test.test_x.C.test_c"><skipped>y</skipped></testcase>'
        '</testsuite></testsuites>')
    assert oracle.junit_verdicts(str(xml)) == {
        "test.test_x.C.test_a": "ok", "test.test_x.C.test_b": "failure",
        "test.test_x.C.test_c": "skipped"}
    assert oracle.junit_verdicts(str(tmp_path / "none.xml")) is None


class _Opts:
    modules = ["test_x"]


def _report(entries, plain, inter, capsys):
    results = {("test_x", False): plain, ("test_x", True): inter}
    status = oracle.report(_Opts(), entries, results)
    return status, capsys.readouterr().out


def test_unexplained_difference_fails(capsys):
    plain = ({"test.test_x.C.a": "ok"}, "normal", 1, "", "")
    inter = ({"test.test_x.C.a": "failure"}, "normal", 1, "", "")
    status, out = _report([], plain, inter, capsys)
    assert status == 1
    assert "UNEXPLAINED test.test_x.C.a: plain ok, interpose failure" in out


def test_allowed_difference_passes_and_a_stale_one_fails(capsys):
    plain = ({"test.test_x.C.a": "ok", "test.test_x.C.b": "ok"}, "normal", 1, "", "")
    inter = ({"test.test_x.C.a": "failure", "test.test_x.C.b": "ok"},
             "normal", 1, "", "")
    allowed = [("differs", "test.test_x.C.a", "why")]
    assert _report(allowed, plain, inter, capsys)[0] == 0
    stale = allowed + [("differs", "test.test_x.C.b", "fixed since")]
    status, out = _report(stale, plain, inter, capsys)
    assert status == 1
    assert "STALE allowed difference no longer occurs: test.test_x.C.b" in out


def test_a_deadlock_report_under_interpose_fails_with_equal_verdicts(capsys):
    # A report names a deadlock no plain run can have: the verdicts may all
    # agree (the program kept waiting and its test timed out the same way,
    # or a child reported and exited), the oracle still fails.
    plain = ({"test.test_x.C.a": "ok"}, "normal", 1, "", "")
    report = ("=== python -m test test_x\n"
              "interpose: deadlock: all 2 coroutine(s) of OS thread(s) 7 are"
              " parked ...\n=== scheduler on OS main thread 7\n")
    inter = ({"test.test_x.C.a": "ok"}, "normal", 1, "", report * 2)
    status, out = _report([], plain, inter, capsys)
    assert status == 1
    assert ("UNEXPLAINED test_x: 2 deadlock report(s) under interpose,"
            " none possible plainly") in out
    assert "2 deadlock reports" in out


def test_allowed_crash_covers_the_tests_the_run_never_reached(capsys):
    plain = ({"test.test_x.C.a": "ok", "test.test_x.C.b": "ok",
              "test.test_x.C.c": "ok"}, "normal", 1, "", "")
    inter = ({"test.test_x.C.a": "ok", "test.test_x.C.b": "error"},
             "killed by signal 11", 1, "", "")
    allowed = [("differs", "test_x", "a crash"),
               ("differs", "test.test_x.C.b", "the test that crashed")]
    status, out = _report(allowed, plain, inter, capsys)
    assert status == 0, out
    assert ("3 allowed differences (1 of them tests a crashed run never"
            " reached) from 2 entries, 0 unexplained") in out
    # Without the module-level entry each unreached test is unexplained.
    status, out = _report(allowed[1:], plain, inter, capsys)
    assert "UNEXPLAINED test.test_x.C.c: plain ok, interpose missing" in out


def test_the_reviewed_file_parses_and_gives_every_line_a_reason():
    entries = oracle.parse_allowed(ALLOWED)
    assert entries
    assert all(kind in oracle.KINDS and len(reason.split()) >= 3
               for kind, _, reason, _ in entries)


def _allowed(tmp_path, text):
    path = tmp_path / "allowed.txt"
    path.write_text(text)
    return oracle.parse_allowed(str(path))


def test_version_qualifiers_parse_to_inclusive_ranges(tmp_path):
    entries = _allowed(tmp_path, (
        "differs test.test_x.C.a for every version\n"
        "differs[3.11] test.test_x.C.b for 3.11 alone\n"
        "exclude[3.13+] test.test_x.C.c for 3.13 and later\n"
        "differs[3.11-3.12,3.15] test.test_x.C.d for three versions\n"))
    assert entries == [
        ("differs", "test.test_x.C.a", "for every version", None),
        ("differs", "test.test_x.C.b", "for 3.11 alone",
         (((3, 11), (3, 11)),)),
        ("exclude", "test.test_x.C.c", "for 3.13 and later",
         (((3, 13), None),)),
        ("differs", "test.test_x.C.d", "for three versions",
         (((3, 11), (3, 12)), ((3, 15), (3, 15)))),
    ]


@pytest.mark.parametrize("version, patterns", [
    ((3, 10), ["test_a"]),
    ((3, 11), ["test_a", "test_b", "test_d"]),
    ((3, 12), ["test_a", "test_d"]),
    ((3, 13), ["test_a", "test_c"]),
    ((3, 14), ["test_a", "test_c"]),
    ((3, 15), ["test_a", "test_c", "test_d"]),
    ((4, 0), ["test_a", "test_c"]),
])
def test_select_keeps_the_entries_for_the_running_version(
        tmp_path, version, patterns):
    entries = _allowed(tmp_path, (
        "differs test_a every version\n"
        "differs[3.11] test_b 3.11 only\n"
        "exclude[3.13+] test_c 3.13 on\n"
        "differs[3.11-3.12,3.15] test_d three\n"))
    assert [p for _, p, _ in oracle.select(entries, version)] == patterns


def test_an_entry_for_another_version_is_neither_applied_nor_stale(
        tmp_path, capsys):
    # On 3.13 the 3.11 entry's test passes under interpose: not stale.  The
    # 3.13 difference is not covered by the 3.11-only entry: unexplained.
    entries = _allowed(tmp_path, (
        "differs[3.11] test.test_x.C.a fails on 3.11 only\n"
        "differs[3.11] test.test_x.C.b fails on 3.11 only\n"))
    plain = ({"test.test_x.C.a": "ok", "test.test_x.C.b": "ok"},
             "normal", 1, "", "")
    inter = ({"test.test_x.C.a": "ok", "test.test_x.C.b": "failure"},
             "normal", 1, "", "")
    status, out = _report(oracle.select(entries, (3, 13)), plain, inter,
                          capsys)
    assert status == 1
    assert "STALE" not in out
    assert "UNEXPLAINED test.test_x.C.b: plain ok, interpose failure" in out
    # On 3.11 both apply: b is allowed, a is stale.
    status, out = _report(oracle.select(entries, (3, 11)), plain, inter,
                          capsys)
    assert status == 1
    assert "UNEXPLAINED" not in out
    assert "STALE allowed difference no longer occurs: test.test_x.C.a" in out


def test_check_python_gives_the_version_entries_are_selected_by():
    assert oracle.check_python(sys.executable, ["test_poll"]) == \
        sys.version_info[:2]


@pytest.mark.parametrize("args, message", [
    (["--allowed", os.devnull + "x"], "cannot read"),
    (["--timeout", "0"], "must be positive"),
    (["test_no_such_module"], "no test module test_no_such_module"),
])
def test_bad_input_is_one_line_with_status_2(args, message):
    proc = subprocess.run([sys.executable, SCRIPT, *args],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and message in proc.stderr


@pytest.mark.parametrize("line", [
    "differs only-two-fields",
    "ignores test.test_x.C.a not a kind",
    "differs[] test.test_x.C.a no version",
    "differs[3] test.test_x.C.a no minor version",
    "differs[3.11.4] test.test_x.C.a a micro version",
    "differs[3.13-3.11] test.test_x.C.a an empty range",
    "differs[3.11+3.12] test.test_x.C.a not a range",
    "differs[3.11,] test.test_x.C.a an empty item",
    "differs[3.11 test.test_x.C.a unclosed",
    "differs [3.11] test.test_x.C.a a space before the versions",
])
def test_malformed_allowed_file_is_one_line(tmp_path, line):
    bad = tmp_path / "allowed.txt"
    bad.write_text("# a comment\n\n" + line + "\n")
    proc = subprocess.run([sys.executable, SCRIPT, "--allowed", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"cpython-oracle: {bad}:3: expected")
    assert proc.stderr.count("\n") == 1
