"""Pure: the records of a socket listing (what `udskit ls` knows about each socket).

The record of one listed socket, `UnixSocket`, is defined once, in `udskit.sockdiag`
(whose decoder builds it), and importable from here; this module holds what a listing
adds around it. The I/O that fills them lives in `udskit.inspect.lister`; the renderers
in `udskit.inspect.render`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import final

from udskit.sockdiag import FileState, SocketFile, SocketOwner, UnixSocket
from udskit.socktype import SocketType

__all__ = [
    "Connection",
    "FileState",
    "Listing",
    "SocketFile",
    "SocketFilter",
    "Source",
    "StaleFile",
    "UnixSocket",
]


class Source(enum.Enum):
    """Where the list came from."""

    NETLINK = "sock_diag"
    PROC = "/proc/net/unix"


@final
@dataclass(frozen=True, slots=True)
class Connection:
    """One client of a listening socket (or of a bound datagram socket).

    For a listener, `server` is the accepted socket (same address as the listener) and
    `client` its peer; a connection still waiting in the backlog (UNIX_DIAG_ICONS) is
    `pending` and has no server end yet. For a datagram socket, the clients are the
    sockets that connect()ed to it.
    """

    pending: bool
    server: UnixSocket | None
    client_inode: int | None
    client: UnixSocket | None
    client_processes: tuple[SocketOwner, ...]


@final
@dataclass(frozen=True, slots=True)
class SocketFilter:
    """Which sockets `list_sockets` keeps. Empty fields keep everything."""

    #: Globs over the address notation (`/run/*.sock`, `@app*`); a socket matching any
    #: is kept. Without glob characters, one address (a path matches its file even if
    #: bound by another name). Empty: every address.
    patterns: tuple[str, ...] = ()
    listening: bool = False
    types: frozenset[SocketType] = frozenset()
    #: Keep sockets held by any of these processes.
    pids: frozenset[int] = frozenset()
    #: Keep sockets owned by (UNIX_DIAG_UID) or held by a process of any of these uids.
    uids: frozenset[int] = frozenset()
    abstract: bool = False

    @property
    def needs_owners(self) -> bool:
        return bool(self.pids or self.uids)

    @property
    def needs_prefilter(self) -> bool:
        """Anything to check before the process scan (the kernel's facts alone)?"""
        return bool(self.patterns or self.listening or self.types or self.abstract)


@final
@dataclass(frozen=True, slots=True)
class Listing:
    """The result of `list_sockets`: the sockets, and how they were found."""

    sockets: tuple[UnixSocket, ...]
    source: Source
    #: Why /proc/net/unix was read instead of sock_diag (None when netlink worked).
    note: str | None = None
    #: Listener (or datagram receiver) inode -> its clients, when asked for.
    connections: Mapping[int, tuple[Connection, ...]] = field(default_factory=dict)

    def __iter__(self) -> Iterator[UnixSocket]:
        return iter(self.sockets)

    def __len__(self) -> int:
        return len(self.sockets)


@final
@dataclass(frozen=True, slots=True)
class StaleFile:
    """A socket file with no socket bound to it: bind() there fails until it is removed."""

    path: str
    dev: int
    ino: int
    uid: int
    mtime: float
