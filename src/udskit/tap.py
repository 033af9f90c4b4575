"""Pure: the contract between the forwarding engine and whoever watches the traffic.

The relay engine calls a `Tap` for every connection it opens and closes and for every
chunk it forwards; `udskit dump` implements one. With no tap the engine takes its fast
path (splice), so watching costs nothing when nobody watches.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol, final

from udskit.socktype import SocketType


class Direction(enum.Enum):
    """Which way a chunk went: client to server, or server to client."""

    C2S = "c2s"
    S2C = "s2c"


@final
@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Who the client is (SO_PEERCRED and /proc); None fields where unknown (TCP).
    `groups` (SO_PEERGROUPS) is filled only where the relay carries identities."""

    pid: int | None = None
    uid: int | None = None
    gid: int | None = None
    command: str | None = None
    groups: tuple[int, ...] | None = None


@final
@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """One forwarded connection: `listen` is where the client came in (notation text),
    `upstream` where it is forwarded to; `id` counts from 1 within one relay."""

    id: int
    sock_type: SocketType
    listen: str
    upstream: str
    client: ClientInfo
    #: Open before the capture saw it (the eBPF engine): its first recorded bytes may
    #: be the middle of a message.
    midstream: bool = False


class Tap(Protocol):
    """Called from the forwarding engine; must be quick and must not raise.

    `data` may be a memoryview over a buffer the engine reuses: copy what you keep.
    `time_ns` is time.time_ns() when the chunk was read.
    """

    def opened(self, conn: ConnectionInfo, time_ns: int) -> None: ...

    def data(
        self, conn: ConnectionInfo, direction: Direction, data: bytes | memoryview, time_ns: int
    ) -> None: ...

    def closed(self, conn: ConnectionInfo, first: Direction | None, time_ns: int) -> None:
        """`first` is the direction whose sender closed first (C2S: the client), or None
        when both ended at once or on error."""
        ...
