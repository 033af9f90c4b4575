"""Pure: what a relay reports about itself (for `-v`, `--json` and library callers).

The engine hands a `RelayEvent` to the `on_event` callback for every connection it
accepts, refuses, connects, closes or loses; with no callback nothing is built.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import final

from udskit.tap import ConnectionInfo, Direction


class CopyMode(enum.Enum):
    """How one connection's bytes move.

    SPLICE: splice(2) socket -> pipe -> socket, the bytes never enter user space (both
    sides stream sockets, no tap). COPY: recv_into a reused buffer, then send (a tap
    is attached, or a side is not a stream socket). RECORD: like COPY, one seqpacket
    record at a time so message boundaries are kept. DATAGRAM: one datagram at a time,
    each sender with its own upstream socket.
    """

    SPLICE = "splice"
    COPY = "copy"
    RECORD = "record"
    DATAGRAM = "datagram"


class EventKind(enum.Enum):
    LISTENING = "listening"  # the listener is up (detail: the endpoint, with a real port)
    ACCEPTED = "accepted"  # a client came in (not yet connected upstream)
    REFUSED = "refused"  # a client was turned away (--allow-uid/--allow-gid, --max-clients)
    CONNECTED = "connected"  # upstream reached; bytes flow (mode says how)
    FAILED = "failed"  # upstream could not be reached (detail: the actionable message)
    CLOSED = "closed"  # both directions ended; counts are final
    RESET = "reset"  # a peer reset or vanished; both sides closed, reported once
    ERROR = "error"  # something else worth a line (accept failing with EMFILE, ...)


@final
@dataclass(frozen=True, slots=True)
class RelayEvent:
    """One thing that happened. `conn` is None for events about the listener itself.

    `c2s_bytes`/`s2c_bytes` are the bytes forwarded each way so far; `first` (CLOSED)
    is the direction whose sender ended first.
    """

    kind: EventKind
    time_ns: int
    conn: ConnectionInfo | None = None
    mode: CopyMode | None = None
    c2s_bytes: int = 0
    s2c_bytes: int = 0
    first: Direction | None = None
    detail: str = ""


@dataclass(slots=True)
class RelayStats:
    """Running totals of one relay (read them from any thread; they only grow, except
    `active`)."""

    accepted: int = 0
    refused: int = 0
    failed: int = 0
    closed: int = 0
    resets: int = 0
    active: int = 0
    dropped: int = 0  # datagram replies that could not be delivered (see DatagramRelay)
    c2s_bytes: int = 0
    s2c_bytes: int = 0
    modes: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class Throttle:
    """At most one report per `interval` seconds of a condition that repeats (a relay
    at its fd limit pauses accepting every 0.1 s: 138 identical lines in one test run).
    `due(now)` says whether to report now, and how many were held back since the last
    report."""

    interval: float
    last: float | None = None
    held: int = 0

    def due(self, now: float) -> tuple[bool, int]:
        if self.last is not None and now - self.last < self.interval:
            self.held += 1
            return False, 0
        held, self.held, self.last = self.held, 0, now
        return True, held
