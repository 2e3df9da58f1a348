"""The house rules of the package, checked on its source: imports point one way.

- No import circle among the package's modules, counting imports made inside
  functions too (a function-level import that closes a circle only hides it).
- No module uses another module's private (``_name``) names.

The checker itself is tested on small synthetic packages first, so a pass on
``mrcz`` means something.
"""
from __future__ import annotations

import ast
import dataclasses
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mrcz"


@dataclasses.dataclass
class Imports:
    """What a package's modules import of each other."""

    edges: dict[str, set[str]]  # module -> modules it imports (at any level)
    local: list[tuple[str, str, int]]  # (module, imported module, line) inside a function
    private: list[tuple[str, str, int]]  # (module, "other._name", line)


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def scan(package: Path) -> Imports:
    """Read every module of ``package`` (one folder of .py files) without running it."""
    modules = {path.stem for path in package.glob("*.py")}
    found = Imports({name: set() for name in modules}, [], [])
    for path in sorted(package.glob("*.py")):
        name = path.stem
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        top_level = {id(node) for node in tree.body}
        aliases: dict[str, str] = {}  # names bound to a module of the package
        for node in ast.walk(tree):
            targets: list[tuple[str, str | None]] = []  # (module, name imported from it)
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    module = node.module.split(".")[0]
                    targets = [(module, alias.name) for alias in node.names]
                else:
                    targets = [(alias.name, None) for alias in node.names]
                    aliases.update((a.asname or a.name, a.name) for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module \
                    and node.module.split(".")[0] == package.name:
                parts = node.module.split(".")
                if len(parts) > 1:
                    targets = [(parts[1], alias.name) for alias in node.names]
                else:
                    targets = [(alias.name, None) for alias in node.names]
                    aliases.update((a.asname or a.name, a.name) for a in node.names)
            for module, imported in targets:
                if module not in modules:
                    continue
                found.edges[name].add(module)
                if id(node) not in top_level:
                    found.local.append((name, module, node.lineno))
                if imported and is_private(imported) and imported not in modules:
                    found.private.append((name, f"{module}.{imported}", node.lineno))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in aliases and is_private(node.attr):
                found.private.append((name, f"{aliases[node.value.id]}.{node.attr}",
                                      node.lineno))
    for module in modules:
        found.edges[module].discard(module)
    return found


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (each group holds a circle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(edges[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return groups


def make_package(root: Path, modules: dict[str, str]) -> Path:
    package = root / "pkg"
    package.mkdir()
    for name, source in modules.items():
        (package / f"{name}.py").write_text(textwrap.dedent(source))
    return package


# ----------------------------------------------------------------------------- the checker

def test_checker_finds_a_top_level_circle(tmp_path):
    package = make_package(tmp_path, {"a": "from . import b\n", "b": "from .c import x\n",
                                      "c": "from .a import y\n"})
    assert circles(scan(package).edges) == [["a", "b", "c"]]


def test_checker_finds_a_circle_hidden_in_a_function(tmp_path):
    package = make_package(tmp_path, {
        "a": "from .b import f\n",
        "b": "def f():\n    from .a import g\n    return g\n"})
    found = scan(package)
    assert found.local == [("b", "a", 2)]
    assert circles(found.edges) == [["a", "b"]]


def test_checker_accepts_a_lazy_import_that_closes_no_circle(tmp_path):
    package = make_package(tmp_path, {
        "a": "def f():\n    from . import heavy\n    return heavy\n",
        "heavy": "import json\n"})
    found = scan(package)
    assert found.local == [("a", "heavy", 2)]
    assert circles(found.edges) == []


def test_checker_finds_private_names_across_modules(tmp_path):
    package = make_package(tmp_path, {
        "a": "from .b import _hidden, public\nfrom . import c\nx = c._secret + c.shown\n",
        "b": "_hidden = public = 1\n",
        "c": "_secret = shown = 2\ndef own():\n    return _secret\n"})
    assert sorted(scan(package).private) == [("a", "b._hidden", 1), ("a", "c._secret", 3)]


def test_checker_ignores_private_attributes_of_objects(tmp_path):
    package = make_package(tmp_path, {
        "a": "from .b import Thing\nreader = Thing()\nreader._state = 1\n",
        "b": "class Thing:\n    _state = 0\n"})
    assert scan(package).private == []


# ----------------------------------------------------------------------------- mrcz

@pytest.fixture(scope="module")
def mrcz_imports() -> Imports:
    return scan(PACKAGE)


def test_no_import_circle(mrcz_imports):
    assert circles(mrcz_imports.edges) == []


def test_no_private_name_crosses_modules(mrcz_imports):
    assert mrcz_imports.private == []


def test_function_level_imports_are_only_optional_parts(mrcz_imports):
    """Imports inside functions are kept for what ``import mrcz`` must not pay for: the
    DM reader, dask, and the cluster runner (dask.distributed)."""
    lazy = {"dm", "todask", "batch"}
    assert sorted({module for _, module, _ in mrcz_imports.local} - lazy) == []
