"""The architecture checks itself: pure modules do no I/O."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "udskit"
#: Standard library modules that talk to the kernel, the file system, other processes or
#: threads: a pure module imports none of them.
IO_MODULES = frozenset(
    {
        "asyncio", "ctypes", "fcntl", "gc", "glob", "grp", "http", "importlib", "mmap",
        "multiprocessing", "os", "pathlib", "platform", "pty", "pwd", "queue", "resource",
        "secrets", "select", "selectors", "shutil", "signal", "socket", "subprocess", "sys",
        "tempfile", "termios", "threading", "time", "urllib", "weakref",
    }
)  # fmt: skip
#: Standard library modules that only compute.
PURE_MODULES = frozenset(
    {
        "__future__", "argparse", "array", "base64", "collections", "contextlib",
        "dataclasses", "datetime", "enum", "errno", "fnmatch", "functools", "hashlib",
        "heapq", "io", "ipaddress", "itertools", "json", "marshal", "math", "operator",
        "re", "shlex", "stat", "string", "struct", "textwrap", "types", "typing",
    }
)  # fmt: skip
#: The few functions of I/O modules that only compute, which pure modules may call.
PURE_FUNCTIONS = {
    "os": {"fsencode", "fsdecode", "fspath", "PathLike", "strerror"},
    "time": {"gmtime", "localtime", "strftime"},
}


def _stdlib_imports(tree: ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return {name for name in found if name in sys.stdlib_module_names}


def _pure_modules() -> list[Path]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if doc.startswith("Pure:"):
            found.append(path)
    return found


def test_there_are_pure_modules() -> None:
    names = {p.name for p in _pure_modules()}
    assert {"address.py", "errors.py", "socktype.py", "tap.py"} <= names


@pytest.mark.parametrize("path", _pure_modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_pure_module_imports_no_io(path: Path) -> None:
    tree = ast.parse(path.read_text())
    io = _stdlib_imports(tree) & IO_MODULES
    misused = {
        f"{node.value.id}.{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in io
        and node.attr not in PURE_FUNCTIONS.get(node.value.id, set())
    }
    from_imports = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in io
    }
    assert not io - PURE_FUNCTIONS.keys(), f"{path.name} is pure but imports {io}"
    assert not misused and not from_imports, f"{path.name} is pure but uses {misused}"


def test_every_stdlib_module_used_is_classified() -> None:
    """A new import of the standard library is a decision: I/O, or pure."""
    used: set[str] = set()
    for path in SRC.rglob("*.py"):
        used |= _stdlib_imports(ast.parse(path.read_text()))
    assert IO_MODULES.isdisjoint(PURE_MODULES)
    unclassified = used - IO_MODULES - PURE_MODULES
    assert not unclassified, f"classify these in tests/pure/test_architecture.py: {unclassified}"


def test_every_module_says_whether_it_is_pure_or_io() -> None:
    unlabeled = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name in ("__init__.py", "__main__.py") or "cli" in path.parts:
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if not doc.startswith(("Pure:", "I/O:")):
            unlabeled.append(str(path.relative_to(SRC)))
    assert not unlabeled, f"docstrings must start with 'Pure:' or 'I/O:': {unlabeled}"


def test_the_library_never_imports_its_command_line() -> None:
    """Anything `udskit` does, `import udskit` can do: the library knows nothing of its
    face (lazy imports inside functions count too)."""
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if "cli" in path.relative_to(SRC).parts or path.name == "__main__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "udskit.cli" or n.startswith("udskit.cli.") for n in names):
                offenders.append(f"{path.relative_to(SRC)}:{getattr(node, 'lineno', 0)}")
    assert not offenders, f"library modules import udskit.cli: {offenders}"


def test_so_peercred_is_read_in_one_place() -> None:
    """talk, relay, files and the admission checks all go through udskit.ancillary
    (capture/ebpf.py, another branch's, reads it for a socket it does not own yet)."""
    readers = [
        str(path.relative_to(SRC))
        for path in sorted(SRC.rglob("*.py"))
        if "socket.SO_PEERCRED" in path.read_text()
    ]
    assert set(readers) <= {"ancillary.py", "capture/ebpf.py"}


#: The modules every capability stands on: they import only each other (and the
#: standard library), never a capability package (inspect, capture, relay, ...).
FOUNDATION = frozenset(
    {
        "access", "address", "ancillary", "cmsg", "endpoints", "errors", "fsguard",
        "identity", "netlink", "probe", "procfs", "procnet", "safetext", "signals",
        "sockdiag", "socktype", "umask",
    }
)  # fmt: skip


def _udskit_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("udskit.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("udskit."):
            found.add(node.module)
    return found


@pytest.mark.parametrize("name", sorted(FOUNDATION))
def test_the_foundation_imports_no_capability(name: str) -> None:
    """probe.py (the error boundary every endpoint uses) once imported udskit.inspect,
    and with it the fd scanner: the /proc and netlink readers it needs are below it now
    (lazy imports inside functions count too)."""
    above = {m for m in _udskit_imports(SRC / f"{name}.py") if m.split(".")[1] not in FOUNDATION}
    assert not above, f"udskit.{name} imports {above}"


#: Cycles being removed on another branch (issue 18: the relay core); empty them there.
KNOWN_CYCLES: list[set[str]] = []  # the relay's engine/stream/datagram cycle is gone


def _import_graph() -> dict[str, set[str]]:
    def name_of(path: Path) -> str:
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    modules = {name_of(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        deps: set[str] = set()
        for imported in _udskit_imports(path):  # lazy imports inside functions count too
            name = imported
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name not in (module, "udskit"):
                deps.add(name)
        graph[module] = deps
    return graph


def test_the_import_graph_has_no_cycle() -> None:
    graph = _import_graph()
    # Tarjan's strongly connected components, iteratively.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[set[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(component)
    unknown = [sorted(c) for c in cycles if c not in KNOWN_CYCLES]
    assert not unknown, f"import cycles: {unknown}"
