"""The package's import graph, read from the sources with ast (function-level
imports included): no cycles, and imports only go down the layers that
docs/design.md ("Python layout") states."""
import ast
import os

import interpose

PACKAGE = "interpose"
PACKAGE_DIR = interpose.__path__[0]

# Lowest first: a module may import its own layer and the layers below.
LAYERS = [
    ("version", ["interpose._version"]),
    ("core", ["interpose._core"]),
    ("integrations", ["interpose._integrations"]),
    ("diagnostics", ["interpose._diagnostics"]),
    ("boot", ["interpose._autostart", "interpose._boot"]),
    ("cli", ["interpose.__main__", "interpose._demo_echo"]),
    ("api", ["interpose"]),
]


def _modules():
    """{dotted module name: path} of every .py file in the package."""
    found = {}
    for root, dirs, files in os.walk(PACKAGE_DIR):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        rel = os.path.relpath(root, PACKAGE_DIR)
        parts = [PACKAGE] + ([] if rel == "." else rel.split(os.sep))
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            stem = name[:-3]
            dotted = ".".join(parts if stem == "__init__" else parts + [stem])
            found[dotted] = os.path.join(root, name)
    return found


def _imports(name, path, modules):
    """The package modules that module `name` imports, anywhere in it."""
    is_package = os.path.basename(path) == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # `from x import y` imports the submodule x.y when there is one,
            # else the name y from module x.
            targets = []
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.append(sub if sub in modules else base)
        else:
            continue
        out.update(t for t in targets if t in modules and t != name)
    return out


def _graph():
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _find_cycle(graph):
    """One import cycle as a list of modules (first == last), or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    color = dict.fromkeys(graph, WHITE)
    stack = []

    def visit(node):
        color[node] = GREY
        stack.append(node)
        for nxt in sorted(graph[node]):
            if color[nxt] == GREY:
                return stack[stack.index(nxt):] + [nxt]
            if color[nxt] == WHITE:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        color[node] = BLACK
        return None

    for node in sorted(graph):
        if color[node] == WHITE:
            found = visit(node)
            if found:
                return found
    return None


def _layer(module):
    best = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (index, len(prefix))
    return best[0]


def test_package_has_no_import_cycle():
    cycle = _find_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_reports_a_cycle():
    # The finder itself, on a graph with a cycle through function-level
    # imports as the real graph would record it.
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert _find_cycle(graph) == ["a", "b", "c", "a"]


def test_function_level_imports_are_edges(tmp_path):
    # The parser counts an import inside a function as an edge.
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "one.py").write_text("def f():\n    from . import two\n")
    (pkg / "two.py").write_text("from .one import f\n")
    modules = {"pkg": str(pkg / "__init__.py"), "pkg.one": str(pkg / "one.py"),
               "pkg.two": str(pkg / "two.py")}
    graph = {n: _imports(n, p, modules) for n, p in modules.items()}
    assert graph["pkg.one"] == {"pkg.two"}
    assert _find_cycle(graph) == ["pkg.one", "pkg.two", "pkg.one"]


def test_every_module_has_a_layer():
    assert all(_layer(m) is not None for m in _modules())


def test_imports_only_go_down_the_layers():
    upward = sorted(
        f"{LAYERS[_layer(m)][0]} {m} imports {LAYERS[_layer(t)][0]} {t}"
        for m, targets in _graph().items() for t in targets
        if _layer(t) > _layer(m))
    assert not upward, "\n".join(upward)


def test_every_module_but_the_public_package_is_private():
    # Public names come only from interpose/__init__.py: every module and
    # subpackage below it is underscored (or __main__).  The boot hook must
    # be called sitecustomize for site to run it; its directory is private.
    public = sorted(
        m for m in _modules()
        if m not in (PACKAGE, "interpose._boot.sitecustomize")
        and not all(part.startswith("_") for part in m.split(".")[1:]))
    assert not public, public
