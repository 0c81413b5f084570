"""The floor plan holds: one-way layers, no import cycle, one composition root.

The layers are import-linter contracts in ``setup.cfg`` (``[importlinter:contract:*]``); the
cycle check covers every import of every module, those inside functions too, so that no
function-level import can hide a cycle.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("gateway", "dicomweb", "proprietary", "storage", "auth", "plugins", "conformance")


def test_import_contracts_are_kept():
    # In a process of its own: import-linter reconfigures logging (disabling existing loggers).
    run = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
                          f"sys.exit(lint_imports(config_filename={str(ROOT / 'setup.cfg')!r}, no_cache=True, "
                          "no_logo=True))"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    report = run.stdout + run.stderr
    assert "Contracts: 4 kept, 0 broken" in report, report
    assert run.returncode == 0, report


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set(), "c": {"b"}}) == []


def test_no_module_imports_itself_through_others():
    graph = grimp.build_graph(*PACKAGES)
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    found = cycles(edges)
    assert not found, "import cycles (function-level imports included): " + "; ".join(" <-> ".join(c) for c in found)


def _calls(name: str) -> set[str]:
    """Modules of the gateway's packages that call ``name`` (a dotted attribute or a function)."""
    callers = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and ast.unparse(node.func) == name:
                    callers.add(str(path.relative_to(ROOT)))
    return callers


@pytest.mark.parametrize("call", ["registry.create", "create_plugin_manager", "AccessControl", "_backend"])
def test_only_the_composition_root_builds_stores_plugins_and_access(call):
    assert _calls(call) == {"gateway/services/__init__.py"}


def test_the_composition_root_is_used_by_every_process():
    # The HTTP workers, the CLI, the DIMSE listener and job worker, the processes of a large import.
    assert _calls("Services.build") == {"gateway/app.py", "gateway/cli.py", "gateway/dimse/listener.py",
                                        "gateway/importer.py"}
