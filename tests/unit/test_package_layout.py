"""The benchmarks live in one package that nothing in the product imports, with no import cycle inside it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parents[2] / "sppo_ray"


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_product_code_never_imports_benchmarks():
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "bench" or rel.name == "cli.py":  # the CLI's `bench` command is the one door in
            continue
        bench = {m for m in _imports(path) if m == "sppo_ray.bench" or m.startswith("sppo_ray.bench.")}
        if bench:
            offenders[str(rel)] = bench
    assert not offenders
    assert not list(PACKAGE.glob("bench_*.py")) and not (PACKAGE / "training" / "bench.py").exists()


def test_benchmark_modules_form_no_import_cycle():
    modules = {p.stem: p for p in (PACKAGE / "bench").glob("*.py") if p.stem != "__init__"}
    graph = {name: {m.rsplit(".", 1)[1] for m in _imports(p) if m.startswith("sppo_ray.bench.")}
             for name, p in modules.items()}

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        return any(n == target or (n not in seen and reaches(n, target, seen | {n})) for n in graph.get(start, ()))

    cycles = [name for name in graph if reaches(name, name, {name})]
    assert not cycles, graph
    assert {"generation", "judging", "training", "weight_sync", "round", "memory", "runner"} <= set(graph)


ROLES = ("data", "generation", "judging", "training")


def test_roles_never_import_orchestration():
    """Roles share what they need through modules below them (sppo_ray/runtime.py, contracts, config)."""
    offenders = {}
    for role in ROLES:
        for path in (PACKAGE / role).rglob("*.py"):
            bad = {m for m in _imports(path) if m.startswith("sppo_ray.orchestration")}
            if bad:
                offenders[str(path.relative_to(PACKAGE))] = bad
    assert not offenders
