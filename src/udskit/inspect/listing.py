"""Pure: the records of a socket listing (what `udskit ls` knows about each socket).

The I/O that fills them lives in `udskit.inspect.lister`; the renderers in
`udskit.inspect.render`. Per-socket records are NamedTuples, not frozen dataclasses:
one is built per socket, and on 20,000 sockets a frozen dataclass's __init__ alone
costs a third of `ss -xp`'s whole run (benchmarks/ls.py). They are just as immutable
and typed; the records built a few at a time are frozen slotted dataclasses.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple, final

from udskit.address import UnixAddress
from udskit.inspect.procfs import SocketOwner
from udskit.inspect.sockdiag import MemInfo, Shutdown, SocketState, VfsInode
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


class FileState(enum.Enum):
    """What is at a pathname socket's path now, compared with the file it was bound to."""

    PRESENT = "present"  # the path still leads to this socket
    RENAMED = "renamed"  # its file is in the same directory under another name
    DELETED = "deleted"  # nothing there: unlinked (or moved to another directory)
    REPLACED = "replaced"  # another file is there: new clients reach that, not this socket
    UNKNOWN = "unknown"  # a relative path, or no VFS inode to compare (/proc fallback)


@final
@dataclass(frozen=True, slots=True)
class SocketFile:
    """The socket file of a pathname socket, checked by (st_dev, st_ino) (UNIX_DIAG_VFS)."""

    state: FileState
    #: Where the file is now, if it was found under another name (RENAMED).
    now_at: str | None = None


@final
class UnixSocket(NamedTuple):
    """One unix socket: what the kernel says, plus its processes, its peer's and its file.

    The first fields are those of `UnixSocketInfo` (see there). A NamedTuple for the
    same reason: one is built per socket, and there may be tens of thousands.
    """

    inode: int
    type: SocketType
    state: SocketState
    address: UnixAddress
    vfs: VfsInode | None
    peer_inode: int | None
    pending: tuple[int, ...]
    recv_q: int | None
    send_q: int | None
    shutdown: Shutdown | None
    uid: int | None
    cookie: int | None
    meminfo: MemInfo | None
    #: Who holds this socket: every (pid, command, fd); empty if not asked or not visible.
    processes: tuple[SocketOwner, ...]
    #: Who holds the other end: "who talks to whom" in one look.
    peer_processes: tuple[SocketOwner, ...]
    #: The peer's address (a client sees the server's path here); None if not known.
    peer_address: UnixAddress | None
    #: For a pathname socket, whether its file is still where it was bound.
    file: SocketFile | None

    @property
    def listening(self) -> bool:
        return self.state is SocketState.LISTEN


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
