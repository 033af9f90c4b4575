"""The import graph of src/udskit, read from the source with ast: no cycles in the relay.

Every import counts: `import x`, `from x import y` (y a submodule when it is one),
relative imports, imports inside functions (lazy ones still tie the modules together)
and those under `if TYPE_CHECKING:` (a type-only cycle is still a design cycle).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "udskit"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The udskit modules `name` imports (only ones that exist as files)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            # `from pkg import sub` imports the submodule `pkg.sub` when there is one.
            targets = [
                f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            # `import udskit.a.b` names udskit.a.b; keep the longest part that is a module.
            hit = target
            while hit and hit not in known:
                hit = hit.rpartition(".")[0]
            if hit and hit != name:
                found.add(hit)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]], within: str = "") -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), among the
    modules whose names start with `within`: each is at least one cycle."""
    nodes = sorted(n for n in graph if n.startswith(within))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if not nxt.startswith(within):
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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

    for node in nodes:
        if node not in index:
            visit(node)
    return sorted(found)


def test_the_graph_sees_every_kind_of_import() -> None:
    graph = import_graph()
    # plain from-import, and a function-local one (udskit.relay.engine imports
    # udskit.procfs's process_command only inside client_info)
    assert "udskit.relay.core" in graph["udskit.relay.stream"]
    assert "udskit.procfs" in graph["udskit.relay.engine"]
    # `from udskit.relay import pumpstate` counts as the submodule
    assert "udskit.relay.stream" in graph["udskit.relay.engine"]


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycle_in_the_relay() -> None:
    """engine -> stream, datagram, connecting -> core; nothing imports back up."""
    assert cycles(import_graph(), "udskit.relay") == []


def test_relay_sessions_do_not_import_the_engine() -> None:
    graph = import_graph()
    for name in ("stream", "datagram", "connecting", "core", "passing", "pumpstate"):
        assert "udskit.relay.engine" not in graph[f"udskit.relay.{name}"], name
        assert "udskit.relay" not in graph[f"udskit.relay.{name}"], name


def test_no_import_cycle_in_the_package() -> None:
    """The whole of udskit: every cycle shows as one group of modules that import each
    other (before RelayCore, the one group was relay.engine/stream/datagram)."""
    assert cycles(import_graph()) == []
