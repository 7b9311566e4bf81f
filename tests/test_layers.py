"""The layers: ``cli -> reconcile -> journal``, each through the public names of the one
below (docs/architecture.md), and each package's lazy exports complete.

Read from the source (the import statements themselves), so a violation is caught even
in a module no test happens to import.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

import cli
import journal
import reconcile

CHECKOUT = Path(__file__).resolve().parent.parent
PACKAGES = ("journal", "reconcile", "cli")
BELOW = {"journal": set(), "reconcile": {"journal"}, "cli": {"reconcile", "journal"}}


def imports(package: str) -> list[tuple[Path, int, str]]:
    """Every module a package's source imports: (file, line, dotted name)."""
    found = []
    for path in sorted((CHECKOUT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [(path, node.lineno, alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.append((path, node.lineno, node.module))
                found += [(path, node.lineno, f"{node.module}.{a.name}") for a in node.names]
            elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
                arg = node.args[0] if node.args else None
                if isinstance(arg, ast.JoinedStr) and isinstance(arg.values[0], ast.Constant):
                    found.append((path, node.lineno, str(arg.values[0].value)))
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_point_down_through_public_names(package: str):
    wrong = []
    for path, line, name in imports(package):
        top, _, rest = name.partition(".")
        if top not in PACKAGES or top == package:
            continue
        where = f"{path.relative_to(CHECKOUT)}:{line} imports {name}"
        if top not in BELOW[package]:
            wrong.append(f"{where}: {package} may not import {top}")
        elif rest.startswith("_"):
            wrong.append(f"{where}: a private module of {top}; export the name from it")
    assert wrong == []


@pytest.mark.parametrize("module", [journal, reconcile])
def test_every_export_resolves_and_dir_lists_them(module):
    assert sorted(dir(module)) == sorted(module.__all__)
    for name in module.__all__:
        assert getattr(module, name) is not None, name
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018


def test_cli_exports_only_main():
    from cli.__main__ import main

    assert callable(main) and cli.__name__ == "cli"


def test_ci_tests_the_installed_package():
    """In CI the suite must test what pip installed, not the checkout beside it."""
    if not os.environ.get("CI"):
        pytest.skip("only meaningful where the package is installed, not editable (CI)")
    for module in (journal, reconcile, cli):  # (the environment itself may be in the checkout)
        assert Path(module.__file__).resolve().parent != CHECKOUT / module.__name__


def runtime_imports(package: str) -> dict[str, set[str]]:
    """Which private modules of ``package`` each of its private modules imports at run
    time, at the top or inside a function (``if TYPE_CHECKING:`` blocks excluded: they
    never run); the package's ``__init__`` is its facade and not counted."""
    graph: dict[str, set[str]] = {}
    for path in sorted((CHECKOUT / package).glob("_*.py")):
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        skipped = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for inner in ast.walk(node)
        }
        found = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            found |= {n.split(".")[1] for n in names if n.startswith(f"{package}._")}
        graph[path.stem] = found - {path.stem}
    return graph


@pytest.mark.parametrize("package", ["reconcile"])
def test_imports_inside_a_package_run_one_way(package: str):
    """No circle among a package's modules, lazy imports included: the vocabulary in a
    leaf, the dispatch above it (docs/architecture.md, "The layers")."""
    graph = runtime_imports(package)
    order: list[str] = []
    while graph:
        leaves = sorted(m for m, deps in graph.items() if deps <= set(order))
        assert leaves, f"a circle among {sorted(graph)}: {graph}"
        order += leaves
        for leaf in leaves:
            del graph[leaf]
