"""lib/'s layers: each imports only from the layers before it (this file's table), with no cycle and no Prefect."""

from __future__ import annotations

import ast
import importlib
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[2] / "lib"

# lib/'s layers, lowest first: a module may import from its own layer and the ones before it, never after.
# (README's "Architecture" and docs/decisions.md say what each holds and why the order is this one.)
LAYERS = ("core", "config", "data", "model", "evaluate", "publish", "train", "recipes", "example")


def lib_modules(root: Path = LIB) -> dict[str, Path]:
    """Every module under root as its dotted name (lib.data.scan; a package's __init__ as the package)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def layer(module: str) -> str:
    """lib.data.scan -> data; lib.example -> example; lib itself -> core (it holds nothing)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "core"


def imported(path: Path) -> set[str]:
    """Every module a source file imports anywhere (lazy and TYPE_CHECKING imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # from lib.data import scan
    return names


def lib_imports(path: Path, modules: dict[str, Path]) -> set[str]:
    return {name for name in imported(path) if name in modules and name != "lib"}


def upward_imports(root: Path = LIB) -> list[str]:
    """'importer -> imported' for every import of a later layer's module (or of a layer not in LAYERS)."""
    modules = lib_modules(root)
    found = []
    for module, path in modules.items():
        rank = LAYERS.index(layer(module)) if layer(module) in LAYERS else -1
        for name in sorted(lib_imports(path, modules)):
            if rank < 0 or layer(name) not in LAYERS or LAYERS.index(layer(name)) > rank:
                found.append(f"{module} -> {name}")
    return found


MODULES = lib_modules()


def test_every_lib_module_sits_in_a_layer():
    assert sorted({layer(module) for module in MODULES} - set(LAYERS)) == []


def test_no_lib_module_imports_from_a_later_layer():
    assert upward_imports() == []


def test_an_upward_import_is_caught(tmp_path):
    root = tmp_path / "lib"
    for package in ("core", "data"):
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "data" / "scan.py").write_text("X = 1\n")
    (root / "core" / "layout.py").write_text("from lib.data.scan import X\n")
    assert upward_imports(root) == ["lib.core.layout -> lib.data.scan"]


def test_lib_modules_import_each_other_without_a_cycle():
    graph = {module: lib_imports(path, MODULES) for module, path in MODULES.items()}
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as error:
        pytest.fail(f"import cycle in lib/: {' -> '.join(error.args[1])}")


def test_lib_never_imports_prefect():
    assert [
        module for module, path in MODULES.items() if any(n.split(".")[0] == "prefect" for n in imported(path))
    ] == []


def test_prediction_and_evaluation_do_not_import_training_code():
    def reachable(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for name in lib_imports(MODULES[todo.pop()], MODULES) - seen:
                seen.add(name)
                todo.append(name)
        return seen

    for module in (name for name in MODULES if layer(name) == "evaluate"):
        assert not reachable(module) & {"lib.data.augment", "lib.model.trunk"}, module


def test_the_saved_classifier_module_imports_no_lib_code():
    # save_pretrained copies this file beside the weights (trust_remote_code): it must stand alone
    assert lib_imports(MODULES["lib.model.classifier"], MODULES) == set()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_lib_module_imports(module):
    importlib.import_module(module)
