"""I/O: what a relay shares with the connections it runs (`RelayCore`).

A `Relay` (engine.py) accepts clients and decides what each becomes; a stream
`Session` (stream.py), a pending upstream connect (`Connecting`, connecting.py) and the
datagram front (datagram.py) do the work. They receive one `RelayCore` and use only
its public names: the event loop, the shared buffer, the tap, the running totals, the
event callback, whether the relay is closing, and three callbacks into the relay
(`start_session`, `failed`, `session_ended`). This module imports none of those
modules, so the import graph runs one way: engine -> stream, datagram, connecting ->
core (no cycle; tests/pure/test_import_graph.py holds it so).
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol, final

from udskit.relay.events import CopyMode, EventKind, RelayEvent, RelayStats
from udskit.relay.loop import Loop
from udskit.tap import ConnectionInfo, Direction, Tap

#: How long reading pauses (accept, or the datagram front) when descriptors or memory
#: run out: long enough for a few connections to end, short enough that nobody waits.
SCARCE_PAUSE: Final = 0.1


class Stoppable(Protocol):
    """Something a closing relay must end: a session, or a connect still in progress."""

    def stop(self) -> None: ...


@final
@dataclass(frozen=True, slots=True)
class SessionEnd:
    """How one stream connection ended, as its session reports it to the relay."""

    kind: EventKind  # CLOSED or RESET
    time_ns: int
    conn: ConnectionInfo
    mode: CopyMode
    c2s_bytes: int
    s2c_bytes: int
    first: Direction | None  # the direction whose sender ended first (CLOSED)
    detail: str
    child: subprocess.Popen[bytes] | None  # an exec: command to reap


StartSession = Callable[
    [ConnectionInfo, socket.socket, socket.socket, "subprocess.Popen[bytes] | None"], None
]
Failed = Callable[[ConnectionInfo, socket.socket, str, "int | None"], None]
SessionEnded = Callable[[Stoppable, SessionEnd], None]


def _start_nothing(
    conn: ConnectionInfo,
    client: socket.socket,
    upstream: socket.socket,
    child: subprocess.Popen[bytes] | None,
) -> None:
    raise RuntimeError("this RelayCore starts no sessions")


def _fail_nothing(
    conn: ConnectionInfo, client: socket.socket, message: str, err: int | None
) -> None:
    raise RuntimeError("this RelayCore reports no failures")


def _end_nothing(session: Stoppable, end: SessionEnd) -> None:
    raise RuntimeError("this RelayCore runs no sessions")


@final
class RelayCore:
    """The loop, the buffer and the books of one relay, shared by everything it runs.

    `view` is one buffer for the whole relay (a relay's loop runs in one thread, so
    one read at a time uses it); stream reads take part of it, a record or datagram
    may take all of it. `closed` turns True when the relay starts closing, after which
    nothing should pause or resume reading. `pending` holds the connects still in
    progress, which a closing relay stops.

    The callbacks are the relay's: `start_session(conn, client, upstream, child)` once
    an upstream is connected, `failed(conn, client, message, errno)` when it could not
    be, `session_ended(session, end)` when a stream session has closed both sides.
    """

    __slots__ = (
        "_next_id",
        "closed",
        "failed",
        "loop",
        "on_event",
        "pending",
        "session_ended",
        "start_session",
        "stats",
        "tap",
        "view",
        "view_size",
        "want_client_info",
    )

    def __init__(
        self,
        *,
        buffer_size: int,
        tap: Tap | None = None,
        on_event: Callable[[RelayEvent], None] | None = None,
        stats: RelayStats | None = None,
        loop: Loop | None = None,
        start_session: StartSession = _start_nothing,
        failed: Failed = _fail_nothing,
        session_ended: SessionEnded = _end_nothing,
    ) -> None:
        self.loop = loop if loop is not None else Loop()
        self.view = memoryview(bytearray(buffer_size))
        self.view_size = buffer_size
        self.tap = tap
        self.on_event = on_event
        self.stats = stats if stats is not None else RelayStats()
        self.want_client_info = tap is not None or on_event is not None
        self.closed = False
        self.pending: set[Stoppable] = set()
        self.start_session = start_session
        self.failed = failed
        self.session_ended = session_ended
        self._next_id = 0

    def new_id(self) -> int:
        """The next connection number (1, 2, ...), unique within this relay."""
        self._next_id += 1
        return self._next_id

    def emit(self, kind: EventKind, conn: ConnectionInfo | None, detail: str = "") -> None:
        """Report a plain event (no byte counts) if anyone listens."""
        if self.on_event is not None:
            self.on_event(RelayEvent(kind, time.time_ns(), conn, detail=detail))

    def event(self, event: RelayEvent) -> None:
        """Report a full event if anyone listens (build it only when `on_event` is set)."""
        if self.on_event is not None:
            self.on_event(event)
