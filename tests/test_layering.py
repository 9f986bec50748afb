"""The layering rules of docs/architecture.md, checked on the source: no import cycle inside
sage_runtime/, the core imports no plugin package, the edges do not import the plugin contract,
and the pure-logic modules import no I/O library."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "sage_runtime"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module this file imports, at any depth (function-local imports count too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


GRAPH = {module_name(p): imports(p) for p in ROOT.rglob("*.py")}


def internal_edges(mod: str) -> set[str]:
    """Modules of sage_runtime that `mod` imports (a package counts as its __init__)."""
    return {m for m in GRAPH[mod] if m in GRAPH and m != mod}


def test_no_import_cycle_in_sage_runtime():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(mod: str) -> None:
        state[mod] = 1
        stack.append(mod)
        for dep in sorted(internal_edges(mod)):
            if mod.startswith(dep + "."):
                continue  # a module importing its own package's __init__ is how Python loads it
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[mod] = 2

    for mod in sorted(GRAPH):
        if mod not in state:
            visit(mod)


def test_the_core_imports_no_plugin_package():
    offenders = {mod: sorted(m for m in deps if m.split(".")[0] in ("sage_plugins", "plugins"))
                 for mod, deps in GRAPH.items()}
    assert not {m: d for m, d in offenders.items() if d}


@pytest.mark.parametrize("layer", ["sage_runtime.edges", "sage_runtime.telemetry"])
def test_edges_know_nothing_of_plugins(layer):
    for mod, deps in GRAPH.items():
        if mod.startswith(layer):
            assert not {d for d in deps if d.startswith("sage_runtime.plugin")}, mod


@pytest.mark.parametrize("mod", ["sage_runtime.cognition.metabolic", "sage_runtime.cognition.atp",
                                 "sage_runtime.cognition.salience", "sage_runtime.cognition.trust"])
def test_pure_logic_does_no_io(mod):
    io = {"zmq", "socket", "asyncio", "sqlite3", "subprocess", "threading", "sage_runtime.edges",
          "sage_runtime.statefile", "sage_runtime.plugin"}
    assert not {d for d in GRAPH[mod] if d.split(".")[0] in io or any(d.startswith(p) for p in io)}, GRAPH[mod]
