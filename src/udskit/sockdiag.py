"""Pure: the NETLINK_SOCK_DIAG protocol for unix sockets, as bytes in and records out.

`build_request` makes the SOCK_DIAG_BY_FAMILY request (a dump of every unix socket, or
one socket by inode); `decode_replies` turns the kernel's answer into
`UnixSocketInfo` records. No sockets here: the lister sends and receives, and the
tests feed recorded or hand-built bytes.

The layouts are those of include/uapi/linux/unix_diag.h and netlink(7); the kernel
side is net/unix/diag.c (sk_diag_fill). All integers are in host byte order.

Why our own decoder and not pyroute2's DiagSocket: DiagSocket strips NUL bytes from
UNIX_DIAG_NAME (so the abstract name ``@foo`` and the relative path ``foo`` come out
the same), it never asks for UNIX_DIAG_UID, and a generic attribute decoder costs
several microseconds per socket, which on 20,000 sockets is the whole time budget of
`ss -xp`. This module is one loop over struct.unpack_from and is tested on bytes.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, NamedTuple, final

from udskit.address import UnixAddress, from_sun_path
from udskit.safetext import escape_text
from udskit.socktype import SocketType

__all__ = [
    "ALL_STATES",
    "KERNEL_FIELDS",
    "NETLINK_SOCK_DIAG",
    "SOCK_DIAG_BY_FAMILY",
    "FileState",
    "MemInfo",
    "Show",
    "Shutdown",
    "SockDiagError",
    "SocketFile",
    "SocketOwner",
    "SocketState",
    "UnixSocket",
    "UnixSocketInfo",
    "VfsInode",
    "build_request",
    "decode_replies",
    "kernel_dev_to_st_dev",
]

#: Netlink protocol number of sock_diag (include/uapi/linux/netlink.h).
NETLINK_SOCK_DIAG: Final = 4
#: The request type for every family (include/uapi/linux/sock_diag.h).
SOCK_DIAG_BY_FAMILY: Final = 20
AF_UNIX: Final = 1

NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
NLM_F_REQUEST: Final = 0x1
NLM_F_DUMP: Final = 0x300  # NLM_F_ROOT | NLM_F_MATCH

#: Every TCP_* state bit: unix sockets use TCP_ESTABLISHED, TCP_SYN_SENT, TCP_CLOSE and
#: TCP_LISTEN (the kernel borrows TCP's numbers for sk_state).
ALL_STATES: Final = 0xFFFFFFFF
#: INET_DIAG_NOCOOKIE: "any socket with this inode" (sock_diag_check_cookie).
NO_COOKIE: Final = 0xFFFFFFFF

# Attribute types of a reply (enum in unix_diag.h).
UNIX_DIAG_NAME: Final = 0
UNIX_DIAG_VFS: Final = 1
UNIX_DIAG_PEER: Final = 2
UNIX_DIAG_ICONS: Final = 3
UNIX_DIAG_RQLEN: Final = 4
UNIX_DIAG_MEMINFO: Final = 5
UNIX_DIAG_SHUTDOWN: Final = 6
UNIX_DIAG_UID: Final = 7  # Linux 5.3+

_NLMSGHDR: Final = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_UNIX_DIAG_REQ: Final = struct.Struct(
    "=BBHIIIII"
)  # family, protocol, pad, states, ino, show, cookie[2]
_UNIX_DIAG_MSG: Final = struct.Struct("=BBBxIQ")  # family, type, state, pad, ino, cookie
_NLATTR: Final = struct.Struct("=HH")  # len, type
_U32: Final = struct.Struct("=I")
_U32_PAIR: Final = struct.Struct("=II")
_I32: Final = struct.Struct("=i")
_HEADER_SIZE: Final = _NLMSGHDR.size + _UNIX_DIAG_MSG.size

# The reply for the commonest socket, an unnamed connected one (socketpair ends and
# clients), under Show.default(): header, message, then PEER, RQLEN, SHUTDOWN and UID
# in the order sk_diag_fill puts them. Read with one unpack instead of a loop over
# four attributes; any other layout takes the general path.
_COMMON: Final = struct.Struct("=IHHIIBBBxIQHHIHHIIHHBxxxHHI")
_COMMON_ATTRS: Final = (
    8,
    UNIX_DIAG_PEER,
    12,
    UNIX_DIAG_RQLEN,
    5,
    UNIX_DIAG_SHUTDOWN,
    8,
    UNIX_DIAG_UID,
)


class Show(enum.IntFlag):
    """What to ask the kernel for (UDIAG_SHOW_* in unix_diag.h): each is one attribute."""

    NAME = 0x01  # UNIX_DIAG_NAME: sun_path, exact
    VFS = 0x02  # UNIX_DIAG_VFS: the socket file's (dev, ino)
    PEER = 0x04  # UNIX_DIAG_PEER: the peer's inode
    ICONS = 0x08  # UNIX_DIAG_ICONS: clients queued on a listener, not yet accepted
    RQLEN = 0x10  # UNIX_DIAG_RQLEN: receive / send queue lengths
    MEMINFO = 0x20  # UNIX_DIAG_MEMINFO: sk_meminfo (buffers, drops)
    UID = 0x40  # UNIX_DIAG_UID: the socket's owner uid

    @classmethod
    def default(cls) -> Show:
        """Everything `udskit ls` shows; MEMINFO only on request (`ls -m`)."""
        return cls.NAME | cls.VFS | cls.PEER | cls.ICONS | cls.RQLEN | cls.UID


class SocketState(enum.Enum):
    """What a unix socket is doing, in the words `udskit ls` prints (ss: LISTEN, ESTAB...)."""

    LISTEN = "listen"
    CONNECTED = "connected"
    UNCONNECTED = "unconnected"
    CONNECTING = "connecting"
    DISCONNECTING = "disconnecting"
    UNKNOWN = "unknown"


#: sk_state as sock_diag reports it: TCP_* numbers from include/net/tcp_states.h.
STATE_FROM_TCP: Final[Mapping[int, SocketState]] = {
    1: SocketState.CONNECTED,  # TCP_ESTABLISHED
    2: SocketState.CONNECTING,  # TCP_SYN_SENT
    7: SocketState.UNCONNECTED,  # TCP_CLOSE
    10: SocketState.LISTEN,  # TCP_LISTEN
}

_TYPE_FROM_KERNEL: Final[Mapping[int, SocketType]] = {t.kernel: t for t in SocketType}


class Shutdown(enum.IntFlag):
    """Directions shut down on a socket (sk_shutdown: RCV_SHUTDOWN=1, SEND_SHUTDOWN=2).

    A connected stream socket whose peer has gone shows both (unix_release_sock sets
    SHUTDOWN_MASK on the peer).
    """

    NONE = 0
    READ = 1
    WRITE = 2
    BOTH = 3

    @property
    def word(self) -> str | None:
        """'read', 'write', 'both', or None when nothing is shut down."""
        return _SHUTDOWN_WORDS[self.value]


_SHUTDOWN_WORDS: Final = (None, "read", "write", "both")
# Enum calls are slow; a tuple indexed by the mask is not.
_SHUTDOWNS: Final = (Shutdown.NONE, Shutdown.READ, Shutdown.WRITE, Shutdown.BOTH)


def kernel_dev_to_st_dev(kdev: int) -> int:
    """Turn a kernel-internal dev_t (UNIX_DIAG_VFS) into the st_dev that stat() returns.

    The kernel keeps major << 20 | minor (MINORBITS in include/linux/kdev_t.h) but
    stat() reports new_encode_dev(): minor's low byte, then major, then the rest of
    minor (fs/stat.c, cp_new_stat).
    """
    major, minor = kdev >> 20, kdev & 0xFFFFF
    return (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)


@final
@dataclass(frozen=True, slots=True)
class VfsInode:
    """The socket file a pathname socket was bound to (UNIX_DIAG_VFS), in stat()'s terms.

    Compare with `os.lstat(path)`'s (st_dev, st_ino): if they differ, the file at the
    path is not this socket's any more (renamed, deleted, replaced).
    """

    dev: int
    ino: int


@final
@dataclass(frozen=True, slots=True)
class MemInfo:
    """UNIX_DIAG_MEMINFO: the socket's memory accounting (SK_MEMINFO_* in sock_diag.h)."""

    rmem_alloc: int
    rcvbuf: int
    wmem_alloc: int
    sndbuf: int
    fwd_alloc: int
    wmem_queued: int
    optmem: int
    backlog: int
    drops: int


@final
class SocketOwner(NamedTuple):
    """One file descriptor of one process that refers to a socket.

    A NamedTuple rather than a frozen dataclass: the scan makes one per socket fd
    (20,000 on the benchmark host) and the dataclass's __init__ would double its cost.
    """

    pid: int
    #: /proc/PID/comm: the name ss and lsof print (at most 15 bytes, TASK_COMM_LEN).
    command: str
    fd: int
    #: The process's effective uid: the owner of /proc/PID (proc(5)); None if unknown.
    uid: int | None = None
    #: That uid's login name, or the uid as text when it has none.
    user: str | None = None

    def __str__(self) -> str:
        return f"pid {self.pid} ({escape_text(self.command)})"


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
    """One unix socket: what the kernel says (sock_diag, or /proc/net/unix), then what
    a listing joins to it (its processes, its peer's, the peer's address, its file).

    The one definition of a listed socket's layout: the decoders here build it with the
    joined fields empty (`UnixSocketInfo` names it so), the lister fills them in by
    position (`KERNEL_FIELDS`), and `udskit ls --json` prints these fields (all but
    `vfs`, a key of the lister's). A NamedTuple rather than a frozen dataclass: one is
    built per socket, and on 20,000 sockets a frozen dataclass's __init__ alone costs
    a third of `ss -xp`'s whole run (see benchmarks/ls.py). It is just as immutable and
    typed.

    Fields the source did not give are None: /proc/net/unix has no peers, queues,
    uids or VFS inodes.
    """

    inode: int
    type: SocketType
    state: SocketState
    #: Exact (UNIX_DIAG_NAME); from /proc/net/unix an abstract name shows NULs as '@'.
    address: UnixAddress
    #: The socket file's (dev, ino); None for abstract and unnamed sockets.
    vfs: VfsInode | None
    #: The peer's inode; None when not connected (or the peer has no inode yet: a
    #: client whose connection waits in a listener's queue).
    peer_inode: int | None
    #: UNIX_DIAG_ICONS: inodes of the clients queued on a listener, not yet accepted.
    pending: tuple[int, ...]
    #: Bytes queued to read (stream, seqpacket), the size of the next datagram (dgram),
    #: or connections waiting to be accepted (listen); as ss's Recv-Q.
    recv_q: int | None
    #: Bytes of send buffer in use (skb truesize, as ss's Send-Q); the backlog for listen.
    send_q: int | None
    shutdown: Shutdown | None
    uid: int | None
    #: The kernel's socket cookie (sock_gen_cookie): unique for the boot, unlike inodes.
    cookie: int | None
    meminfo: MemInfo | None
    # -- joined by the lister (empty as the kernel gives it) --------------------------
    #: Who holds this socket: every (pid, command, fd); empty if not asked or not visible.
    processes: tuple[SocketOwner, ...] = ()
    #: Who holds the other end: "who talks to whom" in one look.
    peer_processes: tuple[SocketOwner, ...] = ()
    #: The peer's address (a client sees the server's path here); None if not known.
    peer_address: UnixAddress | None = None
    #: For a pathname socket, whether its file is still where it was bound.
    file: SocketFile | None = None

    @property
    def listening(self) -> bool:
        return self.state is SocketState.LISTEN


#: The record as the kernel gives it: a `UnixSocket` whose joined fields are empty.
UnixSocketInfo = UnixSocket
#: How many leading fields of `UnixSocket` come from the kernel: the lister joins the
#: rest as `info[:KERNEL_FIELDS] + (processes, peer_processes, peer_address, file)`.
KERNEL_FIELDS: Final = UnixSocket._fields.index("processes")


class SockDiagError(Exception):
    """The kernel answered the request with an error (NLMSG_ERROR). `.errno` says which.

    Not a UdskitError: the lister falls back on /proc/net/unix and says so.
    """

    def __init__(self, errno: int) -> None:
        super().__init__(errno, f"sock_diag answered errno {errno}")
        self.errno = errno


def build_request(show: Show, *, inode: int | None = None, seq: int = 1) -> bytes:
    """The SOCK_DIAG_BY_FAMILY request for unix sockets: all of them, or one by inode.

    A dump (NLM_F_DUMP) walks every unix socket of the caller's network namespace; an
    exact request names one inode and any cookie (unix_diag_get_exact).
    """
    if inode is None:
        flags, ino = NLM_F_REQUEST | NLM_F_DUMP, 0
    else:
        flags, ino = NLM_F_REQUEST, inode
    body = _UNIX_DIAG_REQ.pack(AF_UNIX, 0, 0, ALL_STATES, ino, int(show), NO_COOKIE, NO_COOKIE)
    header = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, flags, seq, 0)
    return header + body


def decode_replies(buffer: bytes) -> tuple[list[UnixSocketInfo], bool]:
    """Decode one datagram of replies: the sockets in it, and whether the dump is done.

    A dump arrives in several datagrams, each holding whole netlink messages; the last
    ends with NLMSG_DONE. An exact request ends with its one answer (or an error).
    Raises SockDiagError on NLMSG_ERROR (e.g. ENOENT when unix_diag is not loaded).
    """
    found: list[UnixSocketInfo] = []
    append = found.append
    done = False
    # Local names: this loop runs once per socket, 20,000 times on a busy host.
    # tuple.__new__ skips NamedTuple's Python-level __new__ (same result, half the time).
    new = tuple.__new__
    record = UnixSocketInfo
    unpack_header = _NLMSGHDR.unpack_from
    unpack_msg = _UNIX_DIAG_MSG.unpack_from
    unpack_common = _COMMON.unpack_from
    common_size = _COMMON.size
    common_attrs = _COMMON_ATTRS
    unpack_attr = _NLATTR.unpack_from
    unpack_u32 = _U32.unpack_from
    unpack_pair = _U32_PAIR.unpack_from
    types = _TYPE_FROM_KERNEL
    states = STATE_FROM_TCP
    shutdowns = _SHUTDOWNS
    unknown = SocketState.UNKNOWN
    unnamed = UnixAddress.unnamed()
    end_of_buffer = len(buffer)
    offset = 0
    while offset + _NLMSGHDR.size <= end_of_buffer:
        length, msg_type, _flags, _seq, _pid = unpack_header(buffer, offset)
        if length < _NLMSGHDR.size or offset + length > end_of_buffer:
            raise ValueError(f"truncated netlink message at offset {offset}")
        if length == common_size and msg_type == SOCK_DIAG_BY_FAMILY:
            fields = unpack_common(buffer, offset)
            sock_type = types.get(fields[6])
            if (
                fields[5] == AF_UNIX
                and sock_type is not None
                and (
                    fields[10],
                    fields[11],
                    fields[13],
                    fields[14],
                    fields[17],
                    fields[18],
                    fields[20],
                    fields[21],
                )
                == common_attrs
            ):
                append(
                    new(
                        record,
                        (
                            fields[8],  # inode
                            sock_type,
                            states.get(fields[7], unknown),
                            unnamed,
                            None,  # vfs
                            fields[12] or None,  # peer
                            (),  # pending
                            fields[15],  # recv_q
                            fields[16],  # send_q
                            shutdowns[fields[19] & 3],
                            fields[22],  # uid
                            fields[9],  # cookie
                            None,  # meminfo
                            (),  # processes, and the next three: joined by the lister
                            (),
                            None,
                            None,
                        ),
                    )
                )
                offset += common_size
                continue
        if msg_type == NLMSG_DONE:
            done = True
            break
        if msg_type == NLMSG_ERROR:
            (error,) = _I32.unpack_from(buffer, offset + _NLMSGHDR.size)
            if error:
                raise SockDiagError(-error)
            done = True  # an ACK: nothing more will come
            break
        if msg_type == SOCK_DIAG_BY_FAMILY and length >= _HEADER_SIZE:
            family, kernel_type, tcp_state, ino, cookie = unpack_msg(
                buffer, offset + _NLMSGHDR.size
            )
            sock_type = types.get(kernel_type)
            if family == AF_UNIX and sock_type is not None:
                address = unnamed
                vfs: VfsInode | None = None
                peer: int | None = None
                pending: tuple[int, ...] = ()
                recv_q: int | None = None
                send_q: int | None = None
                shutdown: Shutdown | None = None
                uid: int | None = None
                meminfo: MemInfo | None = None
                at = offset + _HEADER_SIZE
                end = offset + length
                while at + 4 <= end:
                    attr_len, attr_type = unpack_attr(buffer, at)
                    if attr_len < 4:
                        break
                    data = at + 4
                    data_end = at + attr_len
                    if attr_type == UNIX_DIAG_PEER:
                        peer = unpack_u32(buffer, data)[0] or None
                    elif attr_type == UNIX_DIAG_RQLEN:
                        recv_q, send_q = unpack_pair(buffer, data)
                    elif attr_type == UNIX_DIAG_UID:
                        uid = unpack_u32(buffer, data)[0]
                    elif attr_type == UNIX_DIAG_SHUTDOWN:
                        shutdown = shutdowns[buffer[data] & 3]
                    elif attr_type == UNIX_DIAG_NAME:
                        address = from_sun_path(buffer[data:data_end])
                    elif attr_type == UNIX_DIAG_VFS:
                        vfs_ino, vfs_dev = unpack_pair(buffer, data)
                        vfs = VfsInode(kernel_dev_to_st_dev(vfs_dev), vfs_ino)
                    elif attr_type == UNIX_DIAG_ICONS:
                        count = (data_end - data) // 4
                        pending = struct.unpack_from(f"={count}I", buffer, data)
                    elif attr_type == UNIX_DIAG_MEMINFO:
                        meminfo = _decode_meminfo(buffer[data:data_end])
                    at += (attr_len + 3) & ~3
                append(
                    new(
                        record,
                        (
                            ino,
                            sock_type,
                            states.get(tcp_state, unknown),
                            address,
                            vfs,
                            peer,
                            pending,
                            recv_q,
                            send_q,
                            shutdown,
                            uid,
                            cookie,
                            meminfo,
                            (),  # processes, and the next three: joined by the lister
                            (),
                            None,
                            None,
                        ),
                    )
                )
        offset += (length + 3) & ~3
    return found, done


def _decode_meminfo(raw: bytes) -> MemInfo | None:
    """SK_MEMINFO_VARS u32s; older kernels send fewer (no backlog, drops): those are 0."""
    count = len(raw) // 4
    if count < 7:
        return None
    values = list(struct.unpack_from(f"={count}I", raw)[:9])
    values += [0] * (9 - len(values))
    return MemInfo(*values)
