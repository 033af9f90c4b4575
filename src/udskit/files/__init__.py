"""I/O: move files across a chroot through an abstract socket (`udskit serve-files`,
`get`, `put`, `files`).

An abstract name is visible from every chroot in the same network namespace, so a
process inside one can reach a server outside it without any shared directory::

    from udskit.files import get_file, put_file, list_files, serve_files

    serve_files("@files", "/srv/export", read_only=True)   # outside; until Ctrl-C
    get_file("@files", "images/boot.img", "/tmp/boot.img")   # inside the chroot
    for entry in list_files("@files", "images"):
        print(entry.name, entry.size)

The wire protocol (UDSF/1) is in `udskit.files.protocol`, the path rules in
`udskit.files.paths` (both pure), the confinement beneath the root in
`udskit.files.confine`, the server in `udskit.files.server` (`FileServer` to run one
in a thread), the clients in `udskit.files.client`.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from udskit.files.client import Transfer, get_file, list_files, put_file
    from udskit.files.confine import Resolver
    from udskit.files.protocol import Entry, EntryKind, ErrorCode
    from udskit.files.server import FileServer, serve_files

# Imported on first use: a client inside a chroot should not pay for the server's
# imports (udskit.endpoints brings asyncio) before its transfer starts.
_EXPORTS = {
    "Entry": "udskit.files.protocol",
    "EntryKind": "udskit.files.protocol",
    "ErrorCode": "udskit.files.protocol",
    "FileServer": "udskit.files.server",
    "Resolver": "udskit.files.confine",
    "Transfer": "udskit.files.client",
    "get_file": "udskit.files.client",
    "list_files": "udskit.files.client",
    "put_file": "udskit.files.client",
    "serve_files": "udskit.files.server",
}

__all__ = [
    "Entry",
    "EntryKind",
    "ErrorCode",
    "FileServer",
    "Resolver",
    "Transfer",
    "get_file",
    "list_files",
    "put_file",
    "serve_files",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'udskit.files' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
