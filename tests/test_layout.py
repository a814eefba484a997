"""The tree is the map: every module imports alone and loads only what its concept needs, imports form no cycle (not
even through type-only imports), library code never imports tools/ or configs/, docs/layout.md lists every module,
and every citation of a docs page in the code resolves inside the repository."""

from __future__ import annotations

import ast
import concurrent.futures
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

PACKAGE = ROOT / "olmo_jax"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(_module_name(p) for p in PACKAGE.rglob("*.py"))
PACKAGES = {_module_name(p) for p in PACKAGE.rglob("__init__.py")}


def _imports(path: Path) -> set[str]:
    """Every olmo_jax module `path` imports, at module level or inside functions, type-only imports included; a
    `from package import submodule` counts as importing the submodule."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("olmo_jax")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("olmo_jax"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES}
    return {m for m in found if m in MODULES}


GRAPH = {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def test_no_import_cycles() -> None:
    """Depth-first search over the import graph; a back edge is a cycle."""
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for dependency in sorted(GRAPH[module]):
            if state.get(dependency) == "open":
                cycle = [*path[path.index(dependency):], dependency]
                raise AssertionError("import cycle: " + " → ".join(cycle))
            if dependency not in state:
                visit(dependency, [*path, dependency])
        state[module] = "done"

    for module in MODULES:
        if module not in state:
            visit(module, [module])


def test_library_code_imports_neither_tools_nor_configs() -> None:
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] in ("tools", "configs") for n in names), f"{path} imports {names}"


def test_library_code_imports_from_defining_modules_not_from_lazy_package_names() -> None:
    """Package __init__ files resolve names lazily, which would hide an import edge; inside the library only
    submodules are imported from a package (`from olmo_jax.data import assets` is fine, `... import TokenFiles`
    is not)."""
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in PACKAGES:
                names = [a.name for a in node.names if f"{node.module}.{a.name}" not in MODULES]
                assert not names, f"{path}: from {node.module} import {names} (import from the defining module)"


# What importing each module alone must not load: the step is pure computation, configs are light, commands parse
# their flags before JAX starts.
MUST_NOT_LOAD = {
    "olmo_jax.train.step": ["tensorstore", "olmo_jax.data", "olmo_jax.eval", "olmo_jax.config", "orbax"],
    "olmo_jax.config": ["jax", "tensorstore", "orbax", "optax", "flax"],
    "olmo_jax.train.__main__": ["jax", "tensorstore", "orbax"],
    "olmo_jax.eval.__main__": ["jax", "tensorstore", "orbax"],
    "olmo_jax.model.transformer": ["tensorstore", "orbax", "optax", "olmo_jax.data", "olmo_jax.train"],
    "olmo_jax.data.order": ["jax", "tensorstore"],
    "olmo_jax.data.prepare": ["jax", "tensorstore"],
    "olmo_jax.errors": ["jax", "numpy"],
}


def _loaded_by(module: str) -> list[str]:
    """sys.modules after importing `module` alone in a fresh interpreter."""
    proc = subprocess.run([sys.executable, "-c", f"import importlib, json, sys; importlib.import_module({module!r}); "
                           "print(json.dumps(sorted(sys.modules)))"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"import {module} alone fails:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_every_module_imports_alone_and_loads_only_its_dependencies() -> None:
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        loaded = dict(zip(MODULES, pool.map(_loaded_by, MODULES), strict=True))
    for name, forbidden in MUST_NOT_LOAD.items():
        bad = [m for m in loaded[name] for f in forbidden if m == f or m.startswith(f + ".")]
        assert not bad, f"import {name} loads {sorted(bad)[:10]}"


def test_layout_page_lists_every_module() -> None:
    page = (ROOT / "docs" / "layout.md").read_text()
    for path in sorted(PACKAGE.rglob("*.py")):
        assert f"`{path.relative_to(ROOT)}`" in page, f"docs/layout.md does not list {path.relative_to(ROOT)}"
    for path in sorted((ROOT / "tools").glob("*.py")):
        assert f"`{path.relative_to(ROOT)}`" in page, f"docs/layout.md does not list {path.relative_to(ROOT)}"


def _headings(page: Path) -> set[str]:
    return {m for line in page.read_text().splitlines() if line.startswith("#") for m in re.findall(r"§[\d.]+", line)}


CITATION = re.compile(r"(docs/[\w./-]+\.md)(?: (§[\d.]*\d))?")


@pytest.mark.parametrize("root", ["olmo_jax", "tools", "configs", "tests", "docs", "README.md"])
def test_citations_resolve_inside_the_repository(root: str) -> None:
    """`docs/olmo_facts.md §4.4` names a page that exists and a heading in it; a bare `§4.4` in a module cites the
    page its module docstring names. Nothing points at the reference notes outside the repository."""
    paths = [ROOT / root] if root.endswith(".md") else sorted((ROOT / root).rglob("*.py")) + sorted(
        (ROOT / root).rglob("*.md"))
    for path in paths:
        if path.name == "test_layout.py":
            continue
        text = path.read_text()
        assert "olmo_spec.md" not in text and "jax_stack_notes.md" not in text, f"{path} cites outside the repo"
        for page, section in CITATION.findall(text):
            target = ROOT / page
            assert target.is_file(), f"{path} cites {page}, which does not exist"
            if section:
                assert section in _headings(target), f"{path} cites {page} {section}, which has no such heading"
        if path.suffix == ".py" and "olmo_jax" in path.parts:
            bare = set(re.findall(r"§[\d.]*\d", text)) - {s for _, s in CITATION.findall(text)}
            if bare:
                facts = _headings(ROOT / "docs" / "olmo_facts.md")
                missing = sorted(s for s in bare if s not in facts)
                assert not missing, f"{path} cites {missing}, not headings of docs/olmo_facts.md"
