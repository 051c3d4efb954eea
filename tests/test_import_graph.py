"""The import graph of the `exporter` package, read from the source with `ast`: every import counts,
at module level and inside functions alike (a lazy import still ties two modules together).

The ledger (and keys, which live in it) takes part in no cycle, and it never imports the proxy:
the proxy uses the ledger, not the other way round. Cycles elsewhere may only shrink.
"""

from __future__ import annotations

import ast
from pathlib import Path

import exporter

PACKAGE_DIR = Path(exporter.__file__).parent

# Cycles outside the ledger that remain; fixed ones just drop out of
# the graph. A new cycle, or one that grows, fails the test.
KNOWN_CYCLES: list[set[str]] = []


def _modules() -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is a package's __init__)."""
    out = {}
    for path in PACKAGE_DIR.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_package)
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (the most specific module each import names)."""
    modules = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, (path, is_package) in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str | None] = []
            if isinstance(node, ast.Import):
                targets = [resolve(a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    here = mod.split(".") if is_package else mod.split(".")[:-1]
                    here = here[: len(here) - (node.level - 1)]
                    base = ".".join(here + ([node.module] if node.module else []))
                for alias in node.names:  # `from pkg import module` names a module
                    full = f"{base}.{alias.name}"
                    targets.append(full if full in modules else resolve(base))
            graph[mod].update(t for t in targets if t and t != mod)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_module_and_function_level_imports() -> None:
    graph = import_graph()
    # module level
    assert "exporter.ledger.keys" in graph["exporter.proxy.key_cache"]
    # inside a function (open_store picks its backend lazily)
    assert {"exporter.ledger.sqlite_store", "exporter.ledger.pg_store"} <= graph["exporter.ledger.store"]
    # `from exporter.ledger import cli` names the module, not the package
    assert "exporter.ledger.cli" in graph["exporter.ledger.commands"]


def test_no_cycle_involves_the_ledger_or_keys() -> None:
    bad = [
        sorted(c)
        for c in cycles(import_graph())
        if any(m.startswith("exporter.ledger") or m.endswith("key_cache") for m in c)
    ]
    assert bad == []


def test_the_ledger_never_imports_the_proxy() -> None:
    graph = import_graph()
    back = {
        (m, t)
        for m, targets in graph.items()
        if m.startswith("exporter.ledger")
        for t in targets
        if t.startswith("exporter.proxy")
    }
    assert back == set()


def test_keys_live_in_the_ledger_and_the_cache_in_the_proxy() -> None:
    assert not (PACKAGE_DIR / "keys.py").exists()
    assert (PACKAGE_DIR / "ledger" / "keys.py").exists()
    assert (PACKAGE_DIR / "proxy" / "key_cache.py").exists()


def test_cycles_elsewhere_only_shrink() -> None:
    new = [sorted(c) for c in cycles(import_graph()) if not any(c <= known for known in KNOWN_CYCLES)]
    assert new == []
