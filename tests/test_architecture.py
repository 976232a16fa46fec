"""The folder tree is the architecture: the dependency rules (import-linter contracts in
pyproject.toml) hold, no module imports itself back through others, and no module outgrows 400 lines."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "batchrelay"
MAX_LINES = 400


def contracts() -> dict[str, dict[str, Any]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["id"]: c for c in config["contracts"]}


def top_level_parts() -> set[str]:
    """batchrelay's subpackages and top-level modules, as dotted names."""
    return {f"batchrelay.{p.stem}" for p in PACKAGE.iterdir()
            if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.stem != "__init__")}


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components of more than one module: modules that reach each other."""
    upstream = {m: graph.find_upstream_modules(m) for m in graph.modules}
    components = {frozenset({m} | {n for n in upstream[m] if m in upstream[n]}) for m in graph.modules}
    return sorted(sorted(c) for c in components if len(c) > 1)


def describe(graph: grimp.ImportGraph, cycle: list[str]) -> str:
    """Each import inside the cycle with its line, so whoever breaks it sees where to cut."""
    members = set(cycle)
    lines = []
    for importer in cycle:
        for imported in sorted(graph.find_modules_directly_imported_by(importer) & members):
            at = ", ".join(f"l.{d['line_number']}" for d in graph.get_import_details(importer=importer,
                                                                                      imported=imported))
            lines.append(f"  {importer} -> {imported} ({at})")
    return "\n".join(lines)


def test_the_import_contracts_hold() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    run = subprocess.run([str(lint_imports), "--no-cache", "--no-logo", str(ROOT / "pyproject.toml")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"Contracts: {len(contracts())} kept, 0 broken." in run.stdout


@pytest.mark.parametrize(
    ("contract", "allowed"),
    [
        ("wire", {"batchrelay.wire", "batchrelay.errors"}),
        ("sim", {"batchrelay.sim", "batchrelay.errors", "batchrelay.procs", "batchrelay._version"}),
        ("config", {"batchrelay.config", "batchrelay.errors", "batchrelay.wire", "batchrelay.parse"}),
    ],
)
def test_an_allow_list_contract_forbids_every_other_part_of_batchrelay(contract: str, allowed: set[str]) -> None:
    # import-linter has no "only these" rule, so these contracts list what they forbid; a new
    # subpackage must be added to them, or the rule would silently let it through.
    assert set(contracts()[contract]["forbidden_modules"]) == top_level_parts() - allowed


def test_no_module_imports_itself_back_through_others() -> None:
    # Every import counts: at module level, inside functions and under TYPE_CHECKING.
    graph = grimp.build_graph("batchrelay", cache_dir=None)
    cycles = import_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n\n".join(describe(graph, c) for c in cycles)


def test_no_module_is_over_400_lines() -> None:
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in sorted(PACKAGE.rglob("*.py"))}
    assert sizes, "no modules found"
    assert {path: n for path, n in sizes.items() if n > MAX_LINES} == {}
