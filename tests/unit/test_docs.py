"""The docs against the code: README's module table has one row per lib/ module, and what the docs name exists.

Sources are parsed with ast, never imported, so this runs in well under a second.

- README's layer table (under "| layer | ..."): the layers of tests/unit/test_imports.py's LAYERS, in its order.
- README's module table (under "| module | responsibility |"): every lib/ module has exactly one row, a row names one
  module that exists, that module has a docstring, and a name in backticks that the row's text gives (an identifier,
  optionally with "()") is, if it is a CamelCase name or a name defined at the top of any lib/ module, defined in the
  row's module or imported by it: a row cannot go on naming what its module no longer has.
- README.md and docs/*.md: every `tests/<path>.py::<test>` names a test function that exists; every lib/, tests/,
  flows/, tasks/, benchmarks/, deployments/ or docs/ path exists; every dotted lib.<module>[.<name>] resolves.
- docs/troubleshooting.md: every row names the test that pins it, or says "no test".
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOC_FILES = (README, *sorted((ROOT / "docs").glob("*.md")))

MODULE_TABLE_HEADER = re.compile(r"^\|\s*module\s*\|\s*responsibility\s*\|\s*$")
LAYER_TABLE_HEADER = re.compile(r"^\|\s*layer\s*\|")
BACKTICKED = re.compile(r"`([^`]+)`")
IDENTIFIER = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:\(\))?$")
CAMEL_CASE = re.compile(r"^[A-Z][A-Za-z0-9]*[a-z][A-Za-z0-9]*$")
TEST_REFERENCE = re.compile(r"\b(tests/[\w/]+\.py)::(\w+)")
REPO_PATH = re.compile(r"(?<![\w./-])((?:lib|tests|flows|tasks|benchmarks|deployments|docs)/[\w/.-]*\w)")
DOTTED_LIB = re.compile(r"(?<![\w./])lib(?:\.[A-Za-z_]\w*)+")


# --- parsing -------------------------------------------------------------------------------------


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text())


def lib_modules(root: Path = ROOT) -> dict[str, Path]:
    """Every lib/ module that needs a row, by its path from the repository root (lib/data/scan.py): each .py file,
    except a package's __init__.py that holds nothing (one with code, like lib/config's, is a module of its own)."""
    modules = {}
    for path in sorted((root / "lib").rglob("*.py")):
        if path.name == "__init__.py" and not _tree(path).body:
            continue
        modules[path.relative_to(root).as_posix()] = path
    return modules


def first_docstring_line(path: Path) -> str:
    docstring = ast.get_docstring(_tree(path)) or ""
    return docstring.strip().splitlines()[0].strip() if docstring.strip() else ""


def defined_names(path: Path) -> set[str]:
    """Names a module defines at its top level (functions, classes, assignments) or exports in __all__."""
    names: set[str] = set()
    for node in _tree(path).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in getattr(node, "targets", [])):
                names.update(e.value for e in ast.walk(node.value) if isinstance(e, ast.Constant))
    return names


def imported_names(path: Path) -> set[str]:
    """Names a module binds by importing, anywhere in it (lazy imports too)."""
    names: set[str] = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.update(alias.asname or alias.name for alias in node.names)
    return names


def split_cells(line: str) -> list[str]:
    """The cells of a markdown table row (an escaped \\| stays in its cell)."""
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def table_after(text: str, header: re.Pattern[str]) -> list[list[str]]:
    """The rows (as cells) of the first table whose header line matches, separator left out."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if header.match(line)), None)
    if start is None:
        return []
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(split_cells(line))
    return rows


def module_rows(readme: str) -> list[tuple[list[str], str]]:
    """README's module table: per row, the lib/ paths its first cell names and its second cell's text
    (rows for tasks/, flows/, docs/ and the like name no lib/ path)."""
    rows = []
    for cells in table_after(readme, MODULE_TABLE_HEADER):
        paths = [name for name in BACKTICKED.findall(cells[0]) if name.startswith("lib/")]
        if paths:
            rows.append((paths, cells[1] if len(cells) > 1 else ""))
    return rows


# --- checks --------------------------------------------------------------------------------------


def names_a_row_checks(text: str, lib_names: set[str]) -> set[str]:
    """The backticked identifiers of a row that must be its module's: CamelCase ones and names lib/ defines."""
    names = set()
    for quoted in BACKTICKED.findall(text):
        match = IDENTIFIER.match(quoted)
        if match and (CAMEL_CASE.match(match[1]) or match[1] in lib_names):
            names.add(match[1])
    return names


def module_table_problems(readme: str, root: Path = ROOT) -> list[str]:
    """What is wrong with README's module table against the lib/ modules under root; [] when it is true."""
    modules = lib_modules(root)
    rows = module_rows(readme)
    problems = []
    counts = Counter(path for paths, _ in rows for path in paths)
    for module in modules:
        if counts[module] != 1:
            problems.append(f"{module}: {counts[module]} rows in the module table, not 1")
    lib_names = set().union(*(defined_names(path) for path in modules.values()))
    for paths, text in rows:
        if len(paths) > 1:
            problems.append(f"a row names {len(paths)} modules ({', '.join(paths)}): one row per module")
        for path in paths:
            if path not in modules:
                problems.append(f"{path}: named in the module table, but there is no such module")
                continue
            if not text.strip():
                problems.append(f"{path}: its row says nothing")
            known = defined_names(modules[path]) | imported_names(modules[path])
            for name in sorted(names_a_row_checks(text, lib_names) - known):
                problems.append(f"{path}: its row names `{name}`, which the module neither defines nor imports")
    for module, path in modules.items():
        if not first_docstring_line(path):
            problems.append(f"{module}: no docstring, so nothing says what it owns")
    return problems


def collected_tests(path: Path) -> set[str]:
    """Test functions of a test module, at its top level or in its classes."""
    names = set()
    for node in _tree(path).body:
        bodies = node.body if isinstance(node, ast.ClassDef) else [node]
        names.update(n.name for n in bodies if isinstance(n, ast.FunctionDef) and n.name.startswith("test_"))
    return names


def resolves(dotted: str, root: Path) -> bool:
    """lib.a.b is a module or package under root, or lib.a.b.name a name that module defines or imports."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        base = root.joinpath(*parts[:end])
        path = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
        if path.is_file():
            rest = parts[end:]
            return not rest or (len(rest) == 1 and rest[0] in defined_names(path) | imported_names(path))
    return False


def reference_problems(text: str, root: Path = ROOT) -> list[str]:
    """Tests, paths and dotted lib names that a doc's text names and that do not exist under root."""
    problems = []
    for file, name in TEST_REFERENCE.findall(text):
        if not (root / file).is_file():
            problems.append(f"{file}::{name}: no such file")
        elif name not in collected_tests(root / file):
            problems.append(f"{file}::{name}: no such test in {file}")
    for path in sorted(set(REPO_PATH.findall(text))):
        if not (root / path).exists():
            problems.append(f"{path}: no such file or folder")
    for dotted in sorted(set(DOTTED_LIB.findall(text))):
        if not resolves(dotted, root):
            problems.append(f"{dotted}: no such module (or name in it)")
    return problems


def troubleshooting_rows_without_a_test(text: str) -> list[str]:
    """Numbers of the troubleshooting table's rows whose last cell neither names a test nor says 'no test'."""
    rows = table_after(text, re.compile(r"^\|\s*#\s*\|"))
    return [cells[0] for cells in rows if not (TEST_REFERENCE.search(cells[-1]) or "no test" in cells[-1])]


# --- the docs as they are ------------------------------------------------------------------------


def layers_in_readme(readme: str) -> list[str]:
    """README's layer table, lowest first: lib/core/ -> core, lib/example.py -> example."""
    rows = table_after(readme, LAYER_TABLE_HEADER)
    return [Path(BACKTICKED.findall(cells[0])[0]).stem for cells in rows if BACKTICKED.findall(cells[0])]


def layers_in_import_test(path: Path = ROOT / "tests" / "unit" / "test_imports.py") -> list[str]:
    """The LAYERS tuple of the import test, read without importing it."""
    for node in _tree(path).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "LAYERS" for t in node.targets):
            return list(ast.literal_eval(node.value))
    return []


def test_readme_has_one_true_row_per_lib_module():
    assert module_table_problems(README.read_text()) == []


def test_readme_lists_the_layers_of_the_import_test_in_its_order():
    assert layers_in_readme(README.read_text()) == layers_in_import_test() != []


def test_every_test_path_and_module_the_docs_name_exists():
    problems = [
        f"{doc.relative_to(ROOT)}: {problem}" for doc in DOC_FILES for problem in reference_problems(doc.read_text())
    ]
    assert problems == []


def test_every_troubleshooting_case_names_its_test_or_says_it_has_none():
    text = (ROOT / "docs" / "troubleshooting.md").read_text()
    assert len(table_after(text, re.compile(r"^\|\s*#\s*\|"))) > 40
    assert troubleshooting_rows_without_a_test(text) == []


# --- the checks themselves can fail --------------------------------------------------------------


def planted_lib(root: Path) -> Path:
    (root / "lib" / "data").mkdir(parents=True)
    (root / "lib" / "__init__.py").write_text("")
    (root / "lib" / "data" / "__init__.py").write_text("")
    (root / "lib" / "data" / "scan.py").write_text('"""Folders -> Manifest."""\n\n\nclass Manifest:\n    pass\n')
    (root / "lib" / "data" / "audio.py").write_text('"""Waveforms."""\n\nfrom lib.data.scan import Manifest\n\n\n'
                                                    "def load_clip():\n    pass\n")
    (root / "lib" / "example.py").write_text("X = 1\n")  # no docstring
    (root / "tests" / "unit").mkdir(parents=True)
    (root / "tests" / "unit" / "test_scan.py").write_text("def test_scan():\n    pass\n")
    return root


def planted_table(*rows: str) -> str:
    return "# x\n\n| module | responsibility |\n|---|---|\n" + "".join(f"{row}\n" for row in rows) + "\nafter\n"


def test_a_true_table_passes_and_an_empty_init_needs_no_row(tmp_path):
    root = planted_lib(tmp_path)
    (root / "lib" / "example.py").write_text('"""The example."""\n')
    table = planted_table(
        "| `lib/data/scan.py` | folders -> `Manifest` |",
        "| `lib/data/audio.py` | `load_clip`; reads a `Manifest` (imported), `save_pretrained` is not lib's |",
        "| `lib/example.py` | the example |",
        "| `tasks/*.py` | not a lib row |",
    )
    assert module_table_problems(table, root) == []


def test_a_missing_row_a_second_row_and_a_module_that_does_not_exist_are_caught(tmp_path):
    root = planted_lib(tmp_path)
    table = planted_table(
        "| `lib/data/scan.py` | folders -> `Manifest` |",
        "| `lib/data/scan.py` | again |",
        "| `lib/data/plan.py` | moved away |",
    )
    assert module_table_problems(table, root) == [
        "lib/data/audio.py: 0 rows in the module table, not 1",
        "lib/data/scan.py: 2 rows in the module table, not 1",
        "lib/example.py: 0 rows in the module table, not 1",
        "lib/data/plan.py: named in the module table, but there is no such module",
        "lib/example.py: no docstring, so nothing says what it owns",
    ]


def test_a_row_for_two_modules_or_naming_what_its_module_lacks_is_caught(tmp_path):
    root = planted_lib(tmp_path)
    table = planted_table(
        "| `lib/data/scan.py`, `lib/data/audio.py` | both |",
        "| `lib/example.py` | `load_clip()` and `ScanPlan` |",
    )
    assert module_table_problems(table, root) == [
        "a row names 2 modules (lib/data/scan.py, lib/data/audio.py): one row per module",
        "lib/example.py: its row names `ScanPlan`, which the module neither defines nor imports",
        "lib/example.py: its row names `load_clip`, which the module neither defines nor imports",
        "lib/example.py: no docstring, so nothing says what it owns",
    ]


def test_a_test_path_or_module_that_does_not_exist_is_caught(tmp_path):
    root = planted_lib(tmp_path)
    text = (
        "pinned by `tests/unit/test_scan.py::test_scan` and tests/unit/test_scan.py::test_gone; "
        "tests/test_scan.py::test_scan moved; see `lib/data/scan.py`, `lib/scan.py`, lib.data.scan.Manifest, "
        "`python -m lib.data.audio`, lib.data.scan.load_clip and `python -m lib.member`."
    )
    assert reference_problems(text, root) == [
        "tests/unit/test_scan.py::test_gone: no such test in tests/unit/test_scan.py",
        "tests/test_scan.py::test_scan: no such file",
        "lib/scan.py: no such file or folder",
        "tests/test_scan.py: no such file or folder",
        "lib.data.scan.load_clip: no such module (or name in it)",
        "lib.member: no such module (or name in it)",
    ]


def test_a_troubleshooting_row_without_a_test_is_caught():
    text = (
        "| # | case | what happens | pinned by |\n|---|---|---|---|\n"
        "| 1 | a | b | `tests/unit/test_scan.py::test_scan` |\n| 2 | c | d | no test |\n| 3 | e | f | |\n"
    )
    assert troubleshooting_rows_without_a_test(text) == ["3"]
