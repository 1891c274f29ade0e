"""pytest fixtures and hooks of the suite.  Helpers the tests import live
in the tests/support/ package (its docstring lists them): conftest.py is
not a module to import from (tests/test_suite_layout.py checks it)."""
import pytest

from support.aarch64 import build_site
from support.processes import ProcessGroup
from support.snippets import ROOT, run_snippet, snippet_env
from support.stack_overflow import build_deep_c


def pytest_report_header(config):
    """Which interpose the run tests: the checkout (editable install) or an
    installed wheel (scripts/test-installed, CI)."""
    return f"interpose under test: {ROOT}/interpose"


@pytest.fixture
def snippet():
    """run_snippet, for tests that take it as a fixture."""
    return run_snippet


@pytest.fixture(scope="session")
def deep_c(tmp_path_factory):
    """A shared library whose C function recurses without CPython's checks
    (support/stack_overflow.py)."""
    return build_deep_c(tmp_path_factory.mktemp("deep_c"))


@pytest.fixture(scope="session")
def aarch64_site(tmp_path_factory):
    """(qemu, arm64 python, site dir of the cross-built aarch64 wheel),
    built once for every test that runs the guest (support/aarch64.py)."""
    return build_site(str(tmp_path_factory.mktemp("aarch64")))


@pytest.fixture
def procs(tmp_path):
    """A ProcessGroup in tmp_path whose children are killed, as groups, when
    the test ends (support/programs.py starts programs in it)."""
    group = ProcessGroup(env=snippet_env(None), cwd=str(tmp_path))
    try:
        yield group
    finally:
        group.kill_all()
