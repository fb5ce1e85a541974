"""The package layout (docs/architecture.md): no import circles, and every import goes down.

The graph is read from the source, not from a running interpreter: every `import` and `from ...
import` statement anywhere in a module (inside functions and `if TYPE_CHECKING:` blocks too),
relative imports resolved, and `from package import name` counted as an import of the submodule
`name` when there is one. Importing a submodule also runs its package's `__init__.py`; those are
kept minimal, so that implied edge is not counted.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOTS = ("lifeos_backup", "tasks", "workers")
SINGLE_FILES = ("beat_schedule",)

# Floors, top to bottom: a module may import its own floor and the floors below it, never one
# above. `lifeos_backup` itself (import-free) and `lifeos_backup.version` count as core.
FLOORS: tuple[tuple[str, ...], ...] = (
    ("tasks", "workers", "beat_schedule"),
    ("lifeos_backup.cli",),
    ("lifeos_backup.service",),
    ("lifeos_backup.web",),
    ("lifeos_backup.monitoring",),
    ("lifeos_backup.app",),
    ("lifeos_backup.jobs",),
    ("lifeos_backup.kinds",),
    ("lifeos_backup.wal",),
    ("lifeos_backup.storage",),
    ("lifeos_backup.formats",),
    ("lifeos_backup.core", "lifeos_backup.version", "lifeos_backup"),
)
TOP_MODULES = ("lifeos_backup", "lifeos_backup.version", "beat_schedule")


def module_files(repo: Path = REPO) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the project's own packages."""
    found: dict[str, Path] = {}
    for root in ROOTS:
        for path in sorted((repo / root).rglob("*.py")):
            parts = list(path.relative_to(repo).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    for name in SINGLE_FILES:
        found[name] = repo / f"{name}.py"
    return found


def _own(name: str, modules: Iterable[str]) -> str | None:
    """The longest known module `name` is or lies in (`a.b.c` -> `a.b` for an attribute c)."""
    known = set(modules)
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, modules: Mapping[str, Path]) -> set[str]:
    """The project's modules that `module` imports, anywhere in its file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from pkg import sub` imports the submodule; `from mod import name`, the module.
            targets = [
                f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            own = _own(target, modules)
            if own is not None and own != module:
                found.add(own)
    return found


def import_graph(repo: Path = REPO) -> dict[str, set[str]]:
    modules = module_files(repo)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None: a depth-first search for a back edge."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def floor_of(module: str) -> int:
    """0 for the top floor. `lifeos_backup` and `lifeos_backup.version` are whole modules; the
    other names are packages, each holding its submodules."""
    for number, names in enumerate(FLOORS):
        for name in names:
            if module == name or (name not in TOP_MODULES and module.startswith(name + ".")):
                return number
    raise AssertionError(f"{module} is on no floor: add its package to FLOORS")


def upward_imports(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """`a -> b` for every import of a module on a higher floor than the importer's."""
    return sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if floor_of(target) < floor_of(module)
    )


# ------------------------------------------------------------------------- the project itself


def test_the_packages_have_no_import_circle() -> None:
    graph = import_graph()
    assert len(graph) > 100 and "lifeos_backup.cli.commands" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_every_import_goes_to_the_same_floor_or_lower() -> None:
    assert upward_imports(import_graph()) == []


def test_only_the_entry_point_imports_the_command_tree() -> None:
    graph = import_graph()
    importers = sorted(m for m, targets in graph.items() if "lifeos_backup.cli.commands" in targets)
    assert importers == ["lifeos_backup.cli"]


def test_the_graph_sees_every_form_of_import() -> None:
    graph = import_graph()
    # `from lifeos_backup.cli import errors as cli_errors` (a submodule), inside the module
    assert "lifeos_backup.cli.errors" in graph["lifeos_backup.cli.commands"]
    # an import inside a function (the entry point loads the command tree only when needed)
    assert "lifeos_backup.cli.commands" in graph["lifeos_backup.cli"]
    # `from lifeos_backup.storage.catalog import Catalog`: the package, not a submodule
    assert "lifeos_backup.storage.catalog" in graph["lifeos_backup.jobs.backups"]


# ------------------------------------------------------------------ the checks catch a circle


def test_find_cycle_reports_a_circle_and_its_path() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None  # a diamond is no circle


@pytest.fixture
def tiny_project(tmp_path: Path) -> Path:
    """A copy of the layout's shape with a circle: store imports audit, audit imports store."""
    files = {
        "lifeos_backup/__init__.py": "",
        "lifeos_backup/core/__init__.py": "",
        "lifeos_backup/core/errors.py": "",
        "lifeos_backup/storage/__init__.py": "",
        "lifeos_backup/storage/store.py": (
            "from lifeos_backup.core import errors\ndef record():\n    from . import audit\n"
        ),
        "lifeos_backup/storage/audit.py": "from lifeos_backup.storage.store import record\n",
        "lifeos_backup/core/names.py": "from lifeos_backup.cli import app\n",
        "lifeos_backup/cli/__init__.py": "app = None\n",
        "tasks/__init__.py": "",
        "workers/__init__.py": "",
        "beat_schedule.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_a_circle_through_a_relative_import_in_a_function_is_found(tiny_project: Path) -> None:
    graph = import_graph(tiny_project)
    assert graph["lifeos_backup.storage.store"] == {
        "lifeos_backup.core.errors",
        "lifeos_backup.storage.audit",
    }
    assert find_cycle(graph) == [
        "lifeos_backup.storage.audit",
        "lifeos_backup.storage.store",
        "lifeos_backup.storage.audit",
    ]


def test_an_import_from_a_higher_floor_is_reported(tiny_project: Path) -> None:
    assert upward_imports(import_graph(tiny_project)) == [
        "lifeos_backup.core.names -> lifeos_backup.cli"
    ]
