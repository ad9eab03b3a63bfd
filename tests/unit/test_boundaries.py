"""Import boundaries: each side-effecting library stays in its adapter, and the core stays pure."""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "reconciler"
UNIT_TESTS = Path(__file__).resolve().parent

ONLY_IN = {
    "libvirt": {"reconciler/adapters/hypervisor.py"},
    "yaml": {"reconciler/adapters/manifests.py"},
    "watchdog": {"reconciler/adapters/watcher.py"},
}
FORBIDDEN_IN_CORE = {
    "structlog", "libvirt", "yaml", "watchdog", "os", "subprocess", "threading", "time", "pathlib", "logging", "socket",
}


@functools.cache
def imported_modules(path: Path) -> frozenset[str]:
    """Return every module ``path`` imports (top-level names and full dotted names), at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found |= {alias.name, alias.name.split(".")[0]}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module, node.module.split(".")[0]}
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in (
            "__import__", "import_module",
        ) and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            found |= {node.args[0].value, node.args[0].value.split(".")[0]}
    return frozenset(found)


def modules(root: Path) -> list[Path]:
    return sorted(root.rglob("*.py"))


def relative(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def module_name(path: Path) -> str:
    """Return the dotted name of module ``path``: ``reconciler.core.planner.vms``, ``reconciler.core.planner``."""
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_walk_sees_the_whole_package():
    """The boundary tests look at every module, the adapters and the core included."""
    seen = {relative(p) for p in modules(PACKAGE)}
    assert {
        "reconciler/adapters/hypervisor.py", "reconciler/adapters/manifests.py",
        "reconciler/core/planner/__init__.py", "reconciler/core/planner/vms.py",
        "reconciler/runtime/controller/loop.py",
    } <= seen
    assert "libvirt" in imported_modules(PACKAGE / "adapters" / "hypervisor.py")


@pytest.mark.parametrize("library", sorted(ONLY_IN))
def test_side_effecting_library_is_imported_only_by_its_adapter(library):
    """libvirt, yaml and watchdog each appear in exactly one module: their adapter."""
    importers = {relative(p) for p in modules(PACKAGE) if library in imported_modules(p)}
    assert importers <= ONLY_IN[library]


def test_core_imports_nothing_with_side_effects():
    """Nothing under reconciler/core imports logging, hypervisor, YAML, file watching, the OS or threads."""
    offenders = {
        relative(p): sorted(imported_modules(p) & FORBIDDEN_IN_CORE)
        for p in modules(PACKAGE / "core")
        if imported_modules(p) & FORBIDDEN_IN_CORE
    }
    assert offenders == {}


def test_core_imports_only_the_core_from_the_package():
    """The core never reaches out to adapters, runtime or the CLI."""
    offenders = {
        relative(p): sorted(m for m in imported_modules(p) if m.startswith("reconciler.") and not m.startswith("reconciler.core"))
        for p in modules(PACKAGE / "core")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_adapters_never_import_the_runtime_or_the_cli():
    """An adapter wraps one library; what runs a pass (runtime) and the CLI sit above it, never below."""
    offenders = {
        relative(p): sorted(m for m in imported_modules(p) if m.startswith(("reconciler.runtime", "reconciler.cli")))
        for p in modules(PACKAGE / "adapters")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def relative_imports(path: Path) -> list[str]:
    """Return the relative imports (``from . import x``) in ``path``: the walk above cannot see where they lead."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [
        f"line {node.lineno}: from {'.' * node.level}{node.module or ''} import ..."
        for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level > 0
    ]


def test_every_import_is_absolute_so_the_boundaries_see_it():
    """A relative import would slip past every boundary test: the package spells each import out in full."""
    offenders = {relative(p): relative_imports(p) for p in modules(PACKAGE) if relative_imports(p)}
    assert offenders == {}


def test_relative_imports_are_seen(tmp_path):
    """The check above finds ``from ..runtime import x``, so its empty answer means something."""
    module = tmp_path / "adapter.py"
    module.write_text("import os\nfrom ..runtime import execute\nfrom . import planner\n", encoding="utf-8")
    assert relative_imports(module) == ["line 2: from ..runtime import ...", "line 3: from . import ..."]


def module_file(name: str) -> Path | None:
    """Return the file of first-party module ``name`` (``reconciler.core.model``), if it is one."""
    if name.split(".")[0] not in ("reconciler", "tests"):
        return None
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def reachable_libraries(path: Path) -> set[str]:
    """Return the third-party and stdlib top-level modules ``path`` imports, following first-party imports."""
    seen: set[Path] = set()
    libraries: set[str] = set()
    todo = [path]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for name in imported_modules(current):
            target = module_file(name)
            if target is not None:
                todo.append(target)
            elif name.split(".")[0] not in ("reconciler", "tests"):
                libraries.add(name.split(".")[0])
    return libraries


# Unit test modules known to break the rule; each entry is a finding to fix, not an exemption.
KNOWN_LIBVIRT_IMPORTERS: dict[str, str] = {}


def unit_test_modules() -> list:
    params = []
    for path in modules(UNIT_TESTS):
        marks = ()
        if path.name in KNOWN_LIBVIRT_IMPORTERS:
            marks = pytest.mark.xfail(strict=True, reason=f"{path.name} {KNOWN_LIBVIRT_IMPORTERS[path.name]}")
        params.append(pytest.param(path, id=path.name, marks=marks))
    return params


@pytest.mark.parametrize("path", unit_test_modules())
def test_unit_tests_never_import_libvirt(path):
    """No unit test module reaches libvirt, directly or through the modules it imports."""
    assert "libvirt" not in reachable_libraries(path)


def test_reachability_follows_first_party_imports():
    """The transitive walk finds libvirt behind the adapter and PyYAML behind the manifest loader."""
    assert "libvirt" in reachable_libraries(PACKAGE / "runtime" / "observe.py")
    assert "yaml" in reachable_libraries(UNIT_TESTS / "builders.py")
    assert "libvirt" not in reachable_libraries(UNIT_TESTS / "builders.py")


def test_importing_the_core_does_not_load_libvirt():
    """Loading every core module and the manifest adapter pulls in no libvirt, even indirectly."""
    core = [module_name(p) for p in modules(PACKAGE / "core")]
    script = (
        "import sys\n"
        f"for name in {core + ['reconciler.adapters.manifests']!r}:\n"
        "    __import__(name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('libvirt', 'structlog', 'watchdog')))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
