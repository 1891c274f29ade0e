"""The suite's own layout (issue #17): test modules take shared helpers
from the tests/support/ package, never from conftest.py or from another
test module, so a helper has one home and a test file can move or split
without breaking its neighbours."""
import ast
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def _imported_modules(path):
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module


def test_no_test_file_imports_conftest_or_another_test_module():
    offenders = []
    for directory in (HERE, os.path.join(HERE, "support")):
        for name in sorted(os.listdir(directory)):
            if not name.endswith(".py"):
                continue
            path = os.path.join(directory, name)
            for module in _imported_modules(path):
                top = module.split(".")[0]
                if top == "conftest" or top.startswith("test_"):
                    offenders.append(f"{os.path.relpath(path, HERE)}: {module}")
    assert offenders == []
