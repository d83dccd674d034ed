"""The package's import graph, read from the source (every import: top level, inside functions, TYPE_CHECKING):
no circles, the engine below the API and the shells, and io/ modules that use each other's public names only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "napari_mpi"


def _module_name(path: Path) -> str:
    parts = ["napari_mpi", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of ``from <level dots><target> import ...`` written in ``module``."""
    if level == 0:
        return target or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def imports_of(module: str) -> list[tuple[str, str]]:
    """(imported module, imported name or "") for every import of the package's own modules in ``module``."""
    path = MODULES[module]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names if alias.name.startswith("napari_mpi")]
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, path.name == "__init__.py", node.level, node.module)
            if not source.startswith("napari_mpi"):
                continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.append((submodule, "") if submodule in MODULES else (source, alias.name))
    return found


def graph() -> dict[str, set[str]]:
    return {m: {target for target, _ in imports_of(m) if target in MODULES and target != m} for m in MODULES}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

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
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_graph_reader_sees_a_circle():
    """The check itself: a circle of three modules and a self-contained one are told apart."""
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []
    assert ("napari_mpi.plan", "DenoisePlan") in imports_of("napari_mpi.engine.plane")  # "from ..plan import"
    assert ("napari_mpi.io.arrays", "MappedArray") in imports_of("napari_mpi.io.stores")  # "from .arrays import"


def test_no_import_circle():
    assert circles(graph()) == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("napari_mpi.engine")))
def test_the_engine_imports_nothing_above_it(module):
    """The engine is pure torch / numpy: below the API, the shells, Qt and napari."""
    allowed = ("napari_mpi.engine", "napari_mpi.settings", "napari_mpi.plan", "napari_mpi.io.planes",
               "napari_mpi._version")
    above = sorted(t for t in graph()[module] if not t.startswith(allowed))
    assert above == [], f"{module} imports {above}"
    source = MODULES[module].read_text(encoding="utf-8")
    assert not any(word in source for word in ("import napari\n", "from napari ", "qtpy", "PyQt", "magicgui"))


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("napari_mpi.io.")))
def test_io_modules_use_each_others_public_names(module):
    private = [(target, name) for target, name in imports_of(module)
               if target.startswith("napari_mpi.io") and name.startswith("_")]
    assert private == []
    assert not any(t.startswith(("napari_mpi.engine", "napari_mpi.api", "napari_mpi.cli", "napari_mpi._widget"))
                   for t in graph()[module])


ROOT = PACKAGE.parents[1]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_and_functions_stay_small(module):
    """Modules of one job: at most 500 lines, functions at most 100 (aim for 60)."""
    source = MODULES[module].read_text(encoding="utf-8")
    assert source.count("\n") <= 500
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 100]
    assert long == []


def test_the_benchmarks_page_stays_curated():
    page = ROOT / "docs" / "benchmarks.md"
    if not page.exists():
        pytest.skip("docs/ is not part of this copy (an sdist)")
    assert page.read_text(encoding="utf-8").count("\n") <= 300
