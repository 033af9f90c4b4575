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

    from udskit.activation import Activator, listen_fds, notify
    from udskit.address import (
        AddressKind,
        UnixAddress,
        decode_sockaddr,
        format_address,
        parse_address,
    )
    from udskit.ancillary import (
        SCM_MAX_FD,
        Credentials,
        PeerCredentials,
        Received,
        enable_passcred,
        peer_credentials,
        peer_groups,
        recv_fds,
        recv_message,
        send_fds,
        send_message,
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
        ActivationError,
        AddressError,
        ControlTruncated,
        HandoffError,
        PassError,
        PeerClosed,
        SocketError,
        TransferError,
        UdskitError,
        UsageError,
    )
    from udskit.files import get_file, list_files, put_file, serve_files
    from udskit.handoff import HandoffOffer, offer_listeners, take_listeners

_EXPORTS = {
    "ActivationError": "udskit.errors",
    "Activator": "udskit.activation",
    "AddressError": "udskit.errors",
    "AddressKind": "udskit.address",
    "ControlTruncated": "udskit.errors",
    "Credentials": "udskit.ancillary",
    "decode_sockaddr": "udskit.address",
    "enable_passcred": "udskit.ancillary",
    "format_address": "udskit.address",
    "get_file": "udskit.files.client",
    "HandoffError": "udskit.errors",
    "HandoffOffer": "udskit.handoff",
    "list_files": "udskit.files.client",
    "listen_fds": "udskit.activation",
    "Listener": "udskit.endpoints",
    "notify": "udskit.activation",
    "offer_listeners": "udskit.handoff",
    "open_connection": "udskit.endpoints",
    "open_connection_async": "udskit.endpoints",
    "open_listener": "udskit.endpoints",
    "open_socketpair": "udskit.endpoints",
    "parse_address": "udskit.address",
    "PassError": "udskit.errors",
    "peer_credentials": "udskit.ancillary",
    "peer_groups": "udskit.ancillary",
    "PeerClosed": "udskit.errors",
    "PeerCredentials": "udskit.ancillary",
    "put_file": "udskit.files.client",
    "Received": "udskit.ancillary",
    "recv_fds": "udskit.ancillary",
    "recv_message": "udskit.ancillary",
    "SCM_MAX_FD": "udskit.ancillary",
    "send_fds": "udskit.ancillary",
    "send_message": "udskit.ancillary",
    "serve_files": "udskit.files.server",
    "SocketError": "udskit.errors",
    "SocketType": "udskit.endpoints",
    "start_server_async": "udskit.endpoints",
    "take_listeners": "udskit.handoff",
    "TransferError": "udskit.errors",
    "UdskitError": "udskit.errors",
    "UnixAddress": "udskit.address",
    "UsageError": "udskit.errors",
}

__all__ = [
    "SCM_MAX_FD",
    "ActivationError",
    "Activator",
    "AddressError",
    "AddressKind",
    "ControlTruncated",
    "Credentials",
    "HandoffError",
    "HandoffOffer",
    "Listener",
    "PassError",
    "PeerClosed",
    "PeerCredentials",
    "Received",
    "SocketError",
    "SocketType",
    "TransferError",
    "UdskitError",
    "UnixAddress",
    "UsageError",
    "decode_sockaddr",
    "enable_passcred",
    "format_address",
    "get_file",
    "list_files",
    "listen_fds",
    "notify",
    "offer_listeners",
    "open_connection",
    "open_connection_async",
    "open_listener",
    "open_socketpair",
    "parse_address",
    "peer_credentials",
    "peer_groups",
    "put_file",
    "recv_fds",
    "recv_message",
    "send_fds",
    "send_message",
    "serve_files",
    "start_server_async",
    "take_listeners",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'udskit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
