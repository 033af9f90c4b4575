"""The architecture checks itself: pure modules do no I/O."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "udskit"
IO_MODULES = {"socket", "select", "selectors", "subprocess", "asyncio"}


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
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & IO_MODULES, f"{path.name} is pure but imports {imported & IO_MODULES}"


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
