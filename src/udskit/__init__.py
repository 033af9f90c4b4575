"""udskit: UNIX domain sockets on Linux, addressed, talked to, relayed, dumped, listed,
and files moved through them.

The names below are imported on first use, so `import udskit` (and `udskit --help`)
stays fast; the modules themselves are `udskit.address`, `udskit.errors`,
`udskit.endpoints` and the capability packages.
"""

from __future__ import annotations

import importlib

# Not typing.TYPE_CHECKING: importing typing costs ~9 ms, and every run of the command
# line imports this package first (mypy and ruff treat the bare name the same way).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from udskit.address import (
        AddressKind,
        UnixAddress,
        decode_sockaddr,
        format_address,
        parse_address,
    )
    from udskit.endpoints import (
        Listener,
        SocketType,
        open_connection,
        open_connection_async,
        open_listener,
        open_socketpair,
        start_server_async,
    )
    from udskit.errors import (
        AddressError,
        PeerClosed,
        SocketError,
        TransferError,
        UdskitError,
        UsageError,
    )
    from udskit.files import get_file, list_files, put_file, serve_files

_EXPORTS = {
    "AddressError": "udskit.errors",
    "AddressKind": "udskit.address",
    "Listener": "udskit.endpoints",
    "PeerClosed": "udskit.errors",
    "SocketError": "udskit.errors",
    "SocketType": "udskit.endpoints",
    "TransferError": "udskit.errors",
    "UdskitError": "udskit.errors",
    "UnixAddress": "udskit.address",
    "UsageError": "udskit.errors",
    "decode_sockaddr": "udskit.address",
    "format_address": "udskit.address",
    "get_file": "udskit.files.client",
    "list_files": "udskit.files.client",
    "open_connection": "udskit.endpoints",
    "open_connection_async": "udskit.endpoints",
    "open_listener": "udskit.endpoints",
    "open_socketpair": "udskit.endpoints",
    "parse_address": "udskit.address",
    "put_file": "udskit.files.client",
    "serve_files": "udskit.files.server",
    "start_server_async": "udskit.endpoints",
}

__all__ = [
    "AddressError",
    "AddressKind",
    "Listener",
    "PeerClosed",
    "SocketError",
    "SocketType",
    "TransferError",
    "UdskitError",
    "UnixAddress",
    "UsageError",
    "decode_sockaddr",
    "format_address",
    "get_file",
    "list_files",
    "open_connection",
    "open_connection_async",
    "open_listener",
    "open_socketpair",
    "parse_address",
    "put_file",
    "serve_files",
    "start_server_async",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'udskit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
