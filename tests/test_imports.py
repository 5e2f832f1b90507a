"""lib/'s import graph (from the source, lazy and TYPE_CHECKING imports included): no cycle, no Prefect."""

from __future__ import annotations

import ast
import importlib
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "lib"
MODULES = sorted(f"lib.{path.stem}" for path in LIB.glob("*.py") if path.stem != "__init__")


def imported(module: str) -> set[str]:
    """Every top-level package or lib.* module that `module` imports anywhere in its source."""
    tree = ast.parse((LIB / f"{module.removeprefix('lib.')}.py").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            if node.module == "lib":  # from lib import x
                names.update(f"lib.{alias.name}" for alias in node.names)
    return {name if name.startswith("lib.") else name.split(".")[0] for name in names}


def test_lib_modules_import_each_other_without_a_cycle():
    graph = {module: {name for name in imported(module) if name in MODULES} for module in MODULES}
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as error:
        pytest.fail(f"import cycle in lib/: {' -> '.join(error.args[1])}")


def test_lib_never_imports_prefect():
    assert [module for module in MODULES if "prefect" in imported(module)] == []


def test_prediction_and_evaluation_do_not_import_training():
    def reachable(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for name in imported(todo.pop()) & set(MODULES) - seen:
                seen.add(name)
                todo.append(name)
        return seen

    for module in ("lib.predict", "lib.evaluation", "lib.inference", "lib.ensemble"):
        assert not reachable(module) & {"lib.training", "lib.augment", "lib.trunk"}, module


@pytest.mark.parametrize("module", MODULES)
def test_every_lib_module_imports(module):
    importlib.import_module(module)
