"""udskit: UNIX domain sockets on Linux, addressed, talked to, relayed, dumped and listed.

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
        UdskitError,
        UsageError,
    )

_EXPORTS = {
    "ActivationError": "udskit.errors",
    "AddressError": "udskit.errors",
    "AddressKind": "udskit.address",
    "ControlTruncated": "udskit.errors",
    "Credentials": "udskit.ancillary",
    "HandoffError": "udskit.errors",
    "Listener": "udskit.endpoints",
    "PassError": "udskit.errors",
    "PeerClosed": "udskit.errors",
    "PeerCredentials": "udskit.ancillary",
    "Received": "udskit.ancillary",
    "SCM_MAX_FD": "udskit.ancillary",
    "SocketError": "udskit.errors",
    "SocketType": "udskit.endpoints",
    "UdskitError": "udskit.errors",
    "UnixAddress": "udskit.address",
    "UsageError": "udskit.errors",
    "decode_sockaddr": "udskit.address",
    "enable_passcred": "udskit.ancillary",
    "format_address": "udskit.address",
    "open_connection": "udskit.endpoints",
    "open_connection_async": "udskit.endpoints",
    "open_listener": "udskit.endpoints",
    "open_socketpair": "udskit.endpoints",
    "parse_address": "udskit.address",
    "peer_credentials": "udskit.ancillary",
    "peer_groups": "udskit.ancillary",
    "recv_fds": "udskit.ancillary",
    "recv_message": "udskit.ancillary",
    "send_fds": "udskit.ancillary",
    "send_message": "udskit.ancillary",
    "start_server_async": "udskit.endpoints",
}

__all__ = [
    "SCM_MAX_FD",
    "ActivationError",
    "AddressError",
    "AddressKind",
    "ControlTruncated",
    "Credentials",
    "HandoffError",
    "Listener",
    "PassError",
    "PeerClosed",
    "PeerCredentials",
    "Received",
    "SocketError",
    "SocketType",
    "UdskitError",
    "UnixAddress",
    "UsageError",
    "decode_sockaddr",
    "enable_passcred",
    "format_address",
    "open_connection",
    "open_connection_async",
    "open_listener",
    "open_socketpair",
    "parse_address",
    "peer_credentials",
    "peer_groups",
    "recv_fds",
    "recv_message",
    "send_fds",
    "send_message",
    "start_server_async",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'udskit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
