"""The package's layers: no module imports a higher layer, and no imports run in a circle.

Every module under ``src/geodistill`` is parsed (never imported) and every ``geodistill`` import
is read: at module level and inside functions or classes alike, since an import put inside a
function to dodge a cycle still ties the two modules together. Only the body of an
``if TYPE_CHECKING:`` block is skipped: those imports exist for annotations and never run.
See docs/architecture.md for what lives in each layer.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "geodistill"
SOURCE = Path(__file__).resolve().parents[1] / "src" / PACKAGE

LAYERS: list[tuple[str, ...]] = [
    ("errors", "atomic"),
    ("data",),
    ("models",),
    ("losses", "metrics"),
    ("methods",),
    ("tasks",),
    ("experiment", "progress", "export", "quantize", "inference", "reporting", "webmap"),
    ("cli", "experiments", "demo"),
]
"""Top-level modules and subpackages of ``geodistill``, lowest first. A module may import its
own layer and the layers below it, never one above. Why this order:

- ``errors``/``atomic``: the error type and atomic output that every layer uses; they use nothing.
- ``data``: rasters, labels, datasets, tile grids, the teacher output cache (which names its
  teacher type under ``TYPE_CHECKING`` only).
- ``models``: networks, their band normaliser (fitted from ``data`` statistics), checkpoints and
  model cards, teachers.
- ``losses``/``metrics``: what training optimises and measures.
- ``methods``: distillation methods, components of the task: their frozen teachers (built
  through the ``models`` teacher registry), loss heads, losses and the data they ask for.
- ``tasks``: the Lightning task, which combines a student, its loss, metrics and optionally a
  method over ``data`` batches.
- running and using tasks: ``experiment`` (fit + test) and its ``progress`` lines, ``export``
  and its ``quantize`` step, ``inference``, ``reporting`` figures, the ``webmap`` viewer.
- ``cli``: the command line over everything; ``experiments``, the seeded run comparisons
  behind ``geodistill compare``, which read and run ``geodistill fit`` configs the CLI's way
  (its config reader); and ``demo``, an experiment (coarse-to-fine on synthetic data) followed by
  inference and a report, which the CLI's ``demo`` command runs.

The package root (``geodistill/__init__.py``) sits in the lowest layer: ``import geodistill``
must stay cheap.
"""


@dataclass(frozen=True)
class Import:
    """One ``geodistill`` import found in a source file."""

    module: str
    target: str
    line: int
    lazy: bool

    def where(self) -> str:
        kind = "function-level" if self.lazy else "module-level"
        return f"{self.module}:{self.line} imports {self.target} ({kind})"


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def is_type_checking(test: ast.expr) -> bool:
    """``TYPE_CHECKING`` or ``typing.TYPE_CHECKING`` (alone, as ``if`` conditions use it)."""
    name = test.attr if isinstance(test, ast.Attribute) else getattr(test, "id", None)
    return name == "TYPE_CHECKING"


class ImportCollector(ast.NodeVisitor):
    """Every absolute name a module imports, with its line and whether it runs lazily."""

    def __init__(self, module: str, package: bool) -> None:
        self.module = module
        self.package = module if package else module.rpartition(".")[0]
        self.found: list[tuple[str, int, bool]] = []
        self.depth = 0

    def visit_If(self, node: ast.If) -> None:
        if is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def _nested(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = _nested

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.found.append((alias.name, node.lineno, self.depth > 0))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = base[: len(base) - (node.level - 1)]
            source = ".".join([*base, node.module] if node.module else base)
        else:
            source = node.module or ""
        for alias in node.names:
            # ``from pkg import sub`` imports the submodule ``pkg.sub`` when there is one.
            self.found.append((f"{source}.{alias.name}", node.lineno, self.depth > 0))


def source_files() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(SOURCE.rglob("*.py"))}


def resolve(name: str, modules: set[str]) -> str | None:
    """The module of the package that ``name`` (a module or a name in one) refers to."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def project_imports() -> list[Import]:
    files = source_files()
    modules = set(files)
    imports: dict[Import, None] = {}  # one entry per module, target and line
    for module, path in files.items():
        collector = ImportCollector(module, is_package(path))
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        for name, line, lazy in collector.found:
            if name != PACKAGE and not name.startswith(PACKAGE + "."):
                continue
            target = resolve(name, modules)
            if target is not None and target != module:
                imports[Import(module, target, line, lazy)] = None
    return list(imports)


def unit(module: str) -> str:
    """The layered unit of a module: its top-level module or subpackage of ``geodistill``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


LAYER_OF: dict[str, int] = {"": 0} | {
    name: rank for rank, names in enumerate(LAYERS) for name in names
}


def layer_label(name: str) -> str:
    return f"layer {LAYER_OF[name]} ({', '.join(LAYERS[LAYER_OF[name]])})"


def test_the_layers_name_each_unit_once():
    names = [name for names in LAYERS for name in names]
    assert len(names) == len(set(names)), "a unit is listed in two layers"


def test_every_module_belongs_to_a_layer():
    unknown = sorted({unit(module) for module in source_files()} - LAYER_OF.keys())
    assert not unknown, (
        f"geodistill.{', geodistill.'.join(unknown)} is in no layer: add it to LAYERS in "
        "tests/test_layers.py (and to docs/architecture.md) at the lowest layer that holds "
        "everything it imports"
    )


def test_no_module_imports_a_higher_layer():
    imports = project_imports()
    assert len(imports) > 100, "the scan found too few imports to be reading the package"
    upward = [
        found
        for found in imports
        if unit(found.target) in LAYER_OF
        and unit(found.module) in LAYER_OF
        and LAYER_OF[unit(found.target)] > LAYER_OF[unit(found.module)]
    ]
    lines = [
        f"  {found.where()}: {layer_label(unit(found.module))} -> {layer_label(unit(found.target))}"
        for found in upward
    ]
    assert not upward, (
        "imports must point down the layers (docs/architecture.md); move the code to the layer "
        "that needs it, or import a type under `if TYPE_CHECKING:`:\n" + "\n".join(lines)
    )


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or ``None`` when the graph has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def import_graph(imports: list[Import]) -> dict[str, set[str]]:
    """Module -> modules it imports, leaving out a package's imports of its own contents (an
    ``__init__`` gathering its submodules' names, which those submodules reach implicitly)."""
    edges: dict[str, set[str]] = {}
    for found in imports:
        if found.target.startswith(found.module + "."):
            continue
        edges.setdefault(found.module, set()).add(found.target)
    return edges


def all_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Cycles until none is left, each found after cutting the edge that closed the one before
    (so every tie shows up in one failure, not one per run)."""
    edges = {node: set(targets) for node, targets in edges.items()}
    cycles = []
    while cycle := find_cycle(edges):
        cycles.append(cycle)
        edges[cycle[-2]].discard(cycle[-1])
    return cycles


def test_no_import_cycles_even_through_function_level_imports():
    cycles = all_cycles(import_graph(project_imports()))
    assert not cycles, (
        "these modules import each other (a function-level import only hides the tie); move "
        "the code both need to a module both can import:\n"
        + "\n".join("  " + " -> ".join(cycle) for cycle in cycles)
    )


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from geodistill.models import student\n", ["geodistill.models.student"]),
        ("def f():\n    import geodistill.cli.main\n", ["geodistill.cli.main"]),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import geodistill.cli\n", []),
        (
            "import typing\nif typing.TYPE_CHECKING:\n    pass\nelse:\n    import geodistill.cli\n",
            ["geodistill.cli"],
        ),
        ("from ..models import checkpoint\n", ["geodistill.models.checkpoint"]),
    ],
)
def test_the_scan_reads_every_kind_of_import(source, expected):
    collector = ImportCollector("geodistill.data.tiling", package=False)
    collector.visit(ast.parse(source))
    names = [name for name, _, _ in collector.found if name.startswith(PACKAGE)]
    assert names == expected


def test_a_cycle_is_found_and_a_chain_is_not():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    two = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}}
    assert all_cycles(two) == [["a", "b", "a"], ["c", "d", "c"]]
