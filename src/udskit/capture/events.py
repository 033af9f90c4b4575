"""Pure: the one event model every capture engine feeds and every output renders.

A capture is a sequence of `Event`s: a connection opens, data chunks flow in either
direction, the connection closes (and we note who closed first). The proxy engine
makes them from the relay's `Tap` calls; `-r FILE.pcapng` makes them back from a file;
a later eBPF engine will make the same ones from kernel probes. Printers and the
pcapng encoder only ever see events, so every output works with every engine.

`Selection` holds the user's filters and limits (`--pid`, `--pname`, `--uid`, `-Q`, `-c`,
`-s`) as plain rules applied to values, so they behave the same live and when reading
a file.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import final

from udskit.socktype import SocketType
from udskit.tap import ClientInfo, Direction

__all__ = ["ClientInfo", "Direction", "Event", "EventKind", "Flow", "Selection"]

#: The kernel keeps 15 bytes of a command name (TASK_COMM_LEN 16, with the NUL).
COMM_LEN = 15


class Flow(enum.Enum):
    """`-Q`: which data to keep, seen from the side the capture watches (tcpdump's
    -Q for an interface). `in` is what that side receives, `out` what it sends:

    - ADDR: the server of ADDR, so `in` is client to server (c2s);
    - `--pid PID` without ADDR: process PID, whichever end of each connection it is;
    - `--inode N` and `-- CMD`: the holder of N, the command: the client end (s2c is in).
    """

    IN = "in"
    OUT = "out"


class EventKind(enum.Enum):
    """What happened: values are the `event` field of `--json`."""

    OPEN = "open"
    DATA = "data"
    CLOSE = "close"
    FDS = "fds"  # descriptors passed (SCM_RIGHTS) with the data event that follows


@final
@dataclass(frozen=True, slots=True)
class Event:
    """One thing seen on one connection.

    `direction` is the chunk's direction for DATA and the side that closed first for
    CLOSE (None when unknown or both at once); None for OPEN. `length` is the real size
    of the chunk; `data` holds what was recorded, shorter than `length` when a snap
    length cut it (`truncated`). `path` is the socket address clients connected to, as
    notation text. Datagram and seqpacket chunks are whole messages.
    """

    kind: EventKind
    time_ns: int
    conn: int
    path: str
    sock_type: SocketType = SocketType.STREAM
    client: ClientInfo = field(default_factory=ClientInfo)
    direction: Direction | None = None
    length: int = 0
    data: bytes = b""
    #: FDS: what each passed descriptor was (`file:/etc/hosts`, `socket:[123]`, ...).
    fds: tuple[str, ...] = ()

    @property
    def truncated(self) -> bool:
        return len(self.data) < self.length

    @classmethod
    def open(
        cls, time_ns: int, conn: int, path: str, sock_type: SocketType, client: ClientInfo
    ) -> Event:
        return cls(EventKind.OPEN, time_ns, conn, path, sock_type, client)

    @classmethod
    def chunk(
        cls,
        time_ns: int,
        conn: int,
        path: str,
        sock_type: SocketType,
        client: ClientInfo,
        direction: Direction,
        data: bytes,
        length: int | None = None,
    ) -> Event:
        real = len(data) if length is None else length
        return cls(EventKind.DATA, time_ns, conn, path, sock_type, client, direction, real, data)

    @classmethod
    def passed_fds(
        cls,
        time_ns: int,
        conn: int,
        path: str,
        sock_type: SocketType,
        client: ClientInfo,
        direction: Direction,
        fds: tuple[str, ...],
    ) -> Event:
        return cls(
            EventKind.FDS, time_ns, conn, path, sock_type, client, direction, len(fds), fds=fds
        )

    @classmethod
    def close(
        cls,
        time_ns: int,
        conn: int,
        path: str,
        sock_type: SocketType,
        client: ClientInfo,
        first: Direction | None,
    ) -> Event:
        return cls(EventKind.CLOSE, time_ns, conn, path, sock_type, client, first)


@final
@dataclass(frozen=True, slots=True)
class Selection:
    """Which events to keep and how much of each chunk (`--pid`, `-c`, `-s`).

    `pid` keeps only connections whose client has that pid; `count` stops after that
    many data events; `snaplen` records at most that many bytes of each chunk (the
    event keeps the real length, so the cut shows). None means no limit. The live
    tap cuts chunks itself (without a copy); `apply` cuts events read from a file.
    """

    pid: int | None = None
    count: int | None = None
    snaplen: int | None = None
    #: `--pname`: the client's command name (comm, as `ps -o comm` shows it).
    pname: str | None = None
    #: `--uid`: the client's user id.
    uid: int | None = None
    #: `-Q in|out`; None keeps both directions (`-Q inout`).
    flow: Flow | None = None
    #: Who `-Q` is relative to: None for the server of ADDR; else this pid (`--pid`
    #: without ADDR), or CLIENT_SIDE for the client end (`--inode`, `-- CMD`).
    viewer: int | None = None

    #: `viewer` value for "the client end of each connection".
    CLIENT_SIDE = -1

    def wants(self, client: ClientInfo) -> bool:
        """Does the connection of this client pass --pid, --pname and --uid?"""
        if self.pid is not None and client.pid != self.pid:
            return False
        if self.uid is not None and client.uid != self.uid:
            return False
        return self.pname is None or client.command in (self.pname, self.pname[:COMM_LEN])

    def keeps(self, client: ClientInfo, direction: Direction) -> bool:
        """Does a chunk going `direction` pass -Q?"""
        if self.flow is None:
            return True
        viewer = self.viewer
        at_client = viewer == self.CLIENT_SIDE or (viewer is not None and client.pid == viewer)
        inward = Direction.S2C if at_client else Direction.C2S
        return (direction is inward) == (self.flow is Flow.IN)

    def apply(self, event: Event) -> Event:
        """The event as recorded under the snap length (for events read back from files)."""
        if self.snaplen is None or len(event.data) <= self.snaplen:
            return event
        return Event(
            event.kind,
            event.time_ns,
            event.conn,
            event.path,
            event.sock_type,
            event.client,
            event.direction,
            event.length,
            event.data[: self.snaplen],
        )
