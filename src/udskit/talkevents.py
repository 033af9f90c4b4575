"""Pure: what a `udskit listen` server reports, as values, and their JSON records.

`udskit.talk.serve` tells an observer about each thing that happens (listening, a
client accepted or refused, data received, a connection closed, the server stopped);
`record()` turns each into the object `listen --json` prints on one line. The schema
is the one `connect --json` and `send --json` use: an `event` name, data as base64 in
`data` (exact bytes, whatever they are), plus `text` when the bytes are valid UTF-8,
and addresses as `format_address` writes them (pasting back into any udskit command),
with their exact bytes in `*_b64` where they are not UTF-8 (`safetext.json_fields`).
JSON is written as ASCII, so it is strict UTF-8 whatever the peer sent.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import final

from udskit.address import UnixAddress
from udskit.safetext import json_fields
from udskit.socktype import SocketType

__all__ = [
    "Accepted",
    "Closed",
    "Listening",
    "Received",
    "Refused",
    "ServerEvent",
    "Stopped",
    "record",
]


@final
@dataclass(frozen=True, slots=True)
class Listening:
    address: UnixAddress  # the bound address: for `@`, the name the kernel picked
    type: SocketType
    pid: int  # the server's own
    replaced_stale: bool = False


@final
@dataclass(frozen=True, slots=True)
class Accepted:
    """A client connection (stream, seqpacket), numbered from 1, with the peer's
    credentials as the kernel recorded them at connect() (SO_PEERCRED, SO_PEERGROUPS)."""

    connection: int
    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...]
    command: str | None  # /proc/PID/comm, the peer's to choose; None once it exited


@final
@dataclass(frozen=True, slots=True)
class Refused:
    """A client or datagram turned away by --allow-uid/--allow-gid. For a datagram,
    `sender` is its address and the credentials are the ones it carried (None: none)."""

    pid: int | None
    uid: int | None
    gid: int | None
    groups: tuple[int, ...] = ()
    sender: UnixAddress | None = None


@final
@dataclass(frozen=True, slots=True)
class Received:
    """What one read returned: a chunk of a stream, a seqpacket record or a datagram.
    `length` is the real size (more than len(data) when `truncated`)."""

    data: bytes
    length: int
    truncated: bool = False
    connection: int | None = None  # None for datagrams
    sender: UnixAddress | None = None  # datagrams
    credentials: tuple[int, int, int] | None = None  # a datagram's (pid, uid, gid)


@final
@dataclass(frozen=True, slots=True)
class Closed:
    connection: int
    messages: int  # reads that returned data (chunks or records)
    bytes: int
    error: str | None = None  # what ended it when the client failed (a reset, ...)


@final
@dataclass(frozen=True, slots=True)
class Stopped:
    """The server's last word: why it stopped, and what it saw in all."""

    reason: str  # count, handoff, interrupted, terminated, output-closed, error
    connections: int
    messages: int
    bytes: int
    refused: int
    failed: int


ServerEvent = Listening | Accepted | Refused | Received | Closed | Stopped


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _text(data: bytes) -> dict[str, object]:
    try:
        return {"text": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {}


def _credentials(
    pid: int | None, uid: int | None, gid: int | None, groups: tuple[int, ...] | None
) -> dict[str, object]:
    if pid is None:
        return {}
    fields: dict[str, object] = {"pid": pid, "uid": uid, "gid": gid}
    if groups is not None:
        fields["groups"] = list(groups)
    return fields


def record(event: ServerEvent) -> dict[str, object]:
    """The JSON object for one event (json.dumps it with the default ensure_ascii)."""
    out: dict[str, object]
    if isinstance(event, Listening):
        out = {"event": "listening", "type": event.type.value}
        out.update(json_fields("address", str(event.address)))
        out.update(pid=event.pid, replaced_stale=event.replaced_stale)
    elif isinstance(event, Accepted):
        out = {"event": "accepted", "connection": event.connection}
        out.update(_credentials(event.pid, event.uid, event.gid, event.groups))
        out.update(json_fields("command", event.command))
    elif isinstance(event, Refused):
        out = {"event": "refused"}
        if event.sender is not None:
            out.update(json_fields("sender", str(event.sender)))
        out.update(
            _credentials(
                event.pid, event.uid, event.gid, event.groups if event.sender is None else None
            )
        )
    elif isinstance(event, Received):
        out = {"event": "data"}
        if event.connection is not None:
            out["connection"] = event.connection
        if event.sender is not None:
            out.update(json_fields("sender", str(event.sender)))
        if event.credentials is not None:
            pid, uid, gid = event.credentials
            out.update(_credentials(pid, uid, gid, None))
        out.update(length=event.length, truncated=event.truncated, data=_b64(event.data))
        out.update(_text(event.data))
    elif isinstance(event, Closed):
        out = {
            "event": "closed",
            "connection": event.connection,
            "messages": event.messages,
            "bytes": event.bytes,
        }
        if event.error is not None:
            out["error"] = event.error
    else:
        out = {
            "event": "stopped",
            "reason": event.reason,
            "connections": event.connections,
            "messages": event.messages,
            "bytes": event.bytes,
            "refused": event.refused,
            "failed": event.failed,
        }
    return out
