"""Pure: what `udskit doctor` found out about an address, and what it concludes.

`Facts` is everything the I/O side (`udskit.doctor.gather`) read, as plain values:
each path component as stat() saw it, the sockets bound at the address (sock_diag),
their owners, other namespaces where the name exists, the security modules, and the
result of one real connect. `Check` and `Diagnosis` are what `diagnose` makes of them.
No I/O here, so every combination of facts can be tested without a socket.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import final

from udskit.address import UnixAddress
from udskit.sockdiag import SocketState
from udskit.socktype import SocketType

__all__ = [
    "CHECK_NAMES",
    "Check",
    "ConnectFacts",
    "Diagnosis",
    "Facts",
    "FileFacts",
    "LsmFacts",
    "MountNsFacts",
    "NetNsFacts",
    "OwnerFacts",
    "SocketFacts",
    "UserFacts",
    "Verdict",
]


class Verdict(enum.Enum):
    """How one check came out."""

    OK = "ok"
    PROBLEM = "problem"  # this is (or may be) why the address does not work
    NOTE = "note"  # worth knowing, not a fault
    SKIPPED = "skipped"  # does not apply (an abstract name has no file...)


#: Every check, in the order doctor runs and prints them.
CHECK_NAMES = (
    "address",
    "path",
    "file",
    "permissions",
    "bind",
    "listener",
    "type",
    "backlog",
    "owner",
    "namespace",
    "dgram-peer",
    "security",
    "connect",
)


@final
@dataclass(frozen=True, slots=True)
class Check:
    """One line of the diagnosis: what was found, and the fix when it is a problem."""

    name: str
    verdict: Verdict
    found: str
    fix: str | None = None


@final
@dataclass(frozen=True, slots=True)
class Diagnosis:
    """Every check in `CHECK_NAMES` order. The address works if the real connect did."""

    address: str
    checks: tuple[Check, ...]

    @property
    def connected(self) -> bool:
        return any(c.name == "connect" and c.verdict is Verdict.OK for c in self.checks)

    @property
    def problems(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.verdict is Verdict.PROBLEM)

    def check(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)


@final
@dataclass(frozen=True, slots=True)
class UserFacts:
    """The user whose access is checked (--as-user, or the one running doctor)."""

    name: str
    uid: int
    gid: int
    groups: frozenset[int] = frozenset()


@final
@dataclass(frozen=True, slots=True)
class FileFacts:
    """One path component as stat() saw it. `kind` None: it does not exist."""

    path: str
    kind: str | None
    mode: int = 0
    uid: int = 0
    gid: int = 0
    mtime: float = 0.0
    owner_name: str | None = None
    group_name: str | None = None
    #: stat() failed for another reason than ENOENT (its strerror).
    error: str | None = None

    @property
    def exists(self) -> bool:
        return self.kind is not None


@final
@dataclass(frozen=True, slots=True)
class OwnerFacts:
    """A process holding a socket, with the namespaces that matter for reaching it."""

    pid: int
    command: str
    uid: int | None = None
    user: str | None = None
    #: readlink /proc/PID/root: '/' unless chrooted (or a container's root).
    root: str | None = None
    #: readlink /proc/PID/ns/net and ns/mnt ('net:[4026531840]').
    netns: str | None = None
    mntns: str | None = None
    #: The process's security label (AppArmor profile, SELinux context), if any.
    label: str | None = None


@final
@dataclass(frozen=True, slots=True)
class SocketFacts:
    """A socket bound at the address, from sock_diag."""

    inode: int
    type: SocketType
    state: SocketState
    #: Listener: connections waiting to be accepted (UNIX_DIAG_RQLEN's first value).
    pending: int | None = None
    #: Listener: the listen() backlog (sk_max_ack_backlog).
    backlog: int | None = None
    #: A datagram socket connect()ed to another: the peer's inode and address text.
    peer_inode: int | None = None
    peer_address: str | None = None
    uid: int | None = None
    owners: tuple[OwnerFacts, ...] = ()


@final
@dataclass(frozen=True, slots=True)
class MountNsFacts:
    """The socket exists at this path in another process's mount namespace or root."""

    socket: SocketFacts
    holder: OwnerFacts
    #: How to reach it from here: /proc/PID/root/PATH.
    via: str


@final
@dataclass(frozen=True, slots=True)
class NetNsFacts:
    """An abstract name bound in another network namespace."""

    netns: str
    listening: bool
    holders: tuple[OwnerFacts, ...] = ()


@final
@dataclass(frozen=True, slots=True)
class LsmFacts:
    """An active Linux security module."""

    name: str  # "AppArmor", "SELinux"
    mode: str  # "enabled", "enforcing", "permissive"
    own_label: str | None = None


@final
@dataclass(frozen=True, slots=True)
class ConnectFacts:
    """The real connect: opened and closed without a byte (unless a send test)."""

    type: SocketType
    user: str
    #: None: it worked.
    errno: int | None
    seconds: float
    #: The kernel's words for the errno (os.strerror), for the message.
    error: str | None = None
    #: dgram --send-test: a 0-byte datagram went out; the reply's length if one came.
    sent: bool = False
    reply: int | None = None
    #: Why the connect ran as another user than asked (not root), if it did.
    note: str | None = None


@final
@dataclass(frozen=True, slots=True)
class Facts:
    """Everything doctor read about one address, before any conclusion."""

    text: str
    address: UnixAddress | None
    address_error: str | None = None
    wanted: SocketType | None = None
    user: UserFacts = UserFacts("root", 0, 0)
    #: The absolute path (a relative one resolved against the working directory).
    absolute: str | None = None
    #: Every directory from / to the parent, in order; stops at the first that is
    #: missing or not a directory.
    directories: tuple[FileFacts, ...] = ()
    #: The file at the path (None when a directory on the way is missing).
    target: FileFacts | None = None
    #: Could sock_diag be asked? Without it, `bound` is empty for lack of eyes.
    sock_diag: bool = True
    #: Sockets bound at the address in this network namespace, listener first.
    bound: tuple[SocketFacts, ...] = ()
    #: For a socket file with nothing bound here: a datagram connect() probe says a
    #: socket is bound to it from another network namespace (True), nothing (False).
    bound_elsewhere: bool | None = None
    mount_ns: tuple[MountNsFacts, ...] = ()
    #: Sockets bound by this very path whose file is gone here (unlinked or replaced)
    #: and not found in any holder's root either.
    unlinked: tuple[SocketFacts, ...] = ()
    net_ns: tuple[NetNsFacts, ...] = ()
    own_netns: str | None = None
    own_root: str = "/"
    lsm: tuple[LsmFacts, ...] = ()
    connect: ConnectFacts | None = None
