"""Pure: what the eBPF engine decides without the kernel: records and watch plans.

The BPF program (bpf/unixdump.bpf.c) writes one fixed 40-byte header per record into
a ring buffer, followed by the recorded bytes for data records; `decode_record`
reads it back. Which descriptors the program watches is decided here, from what
sock_diag says about every unix socket and who holds which descriptor (/proc/*/fd):
`plan_watch` picks, for each connection of interest, ONE end to record (its sends
and its receives), so that every byte is recorded exactly once, and says whether
that end is the server's (its sends are S2C) or the client's.

Which end: the server's (the socket accept(2) returned) when some process we can see
holds it, since that is where new connections appear too; otherwise the client's.
For `--inode N` and `--pid P` the socket named or held is the "client" side (its
sends are C2S), as for a socketpair there is no server.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Final, final

from udskit.address import AddressKind, UnixAddress, from_sun_path
from udskit.sockdiag import SocketState, UnixSocketInfo, VfsInode
from udskit.socktype import SocketType
from udskit.tap import Direction

__all__ = [
    "CALL",
    "HEADER",
    "SNAP_LEN",
    "CallOp",
    "InProgress",
    "Made",
    "Peer",
    "Plan",
    "PlannedConn",
    "Record",
    "RecordKind",
    "Target",
    "WatchFlags",
    "decode_made",
    "decode_peer",
    "decode_record",
    "direction_of",
    "in_progress_call",
    "plan_watch",
    "supports_in_progress",
]

#: The most bytes one syscall's chunk is recorded with (SNAP_LEN in the BPF source).
SNAP_LEN: Final = 65536
#: struct rec: time_ns, kind_flags, tgid, tid, fd, cookie, caplen, len.
HEADER: Final = struct.Struct("<QIIIiIIQ")

_TRUNCATED: Final = 0x100
_READ_FAILED: Final = 0x200
_MORE: Final = 0x400


class RecordKind(enum.IntEnum):
    """K_* in the BPF source."""

    SEND = 1
    RECV = 2
    ACCEPT = 3
    CLOSE = 4
    DUP = 5
    EOF = 6  # a read returned 0: the peer closed its sending side
    EXIT = 7  # a process holding watched descriptors exited
    CONNECT = 8  # a traced process connected a unix socket (new_fd), now watched
    PAIR = 9  # a traced process made a socketpair; its first end (new_fd) is watched


class WatchFlags(enum.IntFlag):
    """F_* in the BPF source: the value of a watched (process, fd)."""

    LISTENER = 1  # accept(2) on it watches the new descriptor
    SERVER = 2  # this end's sends go server to client
    RECORD = 4  # record its sends and receives


@final
@dataclass(frozen=True, slots=True)
class Record:
    """One ring-buffer record. `length` is the chunk's real size (for ACCEPT and DUP:
    the new descriptor); `data` what was recorded of it. `time_ns` is CLOCK_MONOTONIC."""

    kind: RecordKind
    flags: WatchFlags
    time_ns: int
    tgid: int
    tid: int
    fd: int
    cookie: int
    length: int
    data: bytes
    truncated: bool
    read_failed: bool
    #: The call moved more than SNAP_LEN bytes: the next record of this thread holds
    #: the next piece (a message is the pieces joined; a stream may keep them apart).
    more: bool = False

    @property
    def new_fd(self) -> int:
        return self.length


def decode_record(raw: bytes | memoryview) -> Record:
    """A record from the ring buffer's bytes (which may be longer than what was used:
    the program reserves fixed size classes). Raises ValueError on a short record."""
    if len(raw) < HEADER.size:
        raise ValueError(f"ring buffer record of {len(raw)} bytes, shorter than its header")
    time_ns, kind_flags, tgid, tid, fd, cookie, caplen, length = HEADER.unpack_from(raw)
    end = HEADER.size + caplen
    if end > len(raw):
        raise ValueError(f"record says {caplen} bytes follow but {len(raw) - HEADER.size} do")
    return Record(
        RecordKind(kind_flags & 0xFF),
        WatchFlags((kind_flags >> 16) & 0xFF),
        time_ns,
        tgid,
        tid,
        fd,
        cookie,
        length,
        bytes(raw[HEADER.size : end]),
        bool(kind_flags & _TRUNCATED),
        bool(kind_flags & _READ_FAILED),
        bool(kind_flags & _MORE),
    )


_MADE: Final = struct.Struct("<16sQII112s")


@final
@dataclass(frozen=True, slots=True)
class Made:
    """Who made a new connection (CONNECT) or socketpair (PAIR) and to which address,
    as the kernel saw it at that moment (the process may be gone before we look)."""

    command: str
    uid: int
    gid: int
    address: UnixAddress | None


def decode_made(data: bytes) -> Made:
    """The data of a CONNECT or PAIR record (struct made_info)."""
    comm, uid_gid, addrlen, _pad, addr = _MADE.unpack_from(data)
    address = None
    if addrlen > 2 and int.from_bytes(addr[:2], "little") == 1:  # AF_UNIX
        with suppress(ValueError):
            address = from_sun_path(addr[2:addrlen])
    name = comm.split(b"\0", 1)[0].decode("utf-8", errors="replace")
    return Made(name, uid_gid & 0xFFFFFFFF, uid_gid >> 32, address)


_PEER: Final = struct.Struct("<IIIHH16s")


@final
@dataclass(frozen=True, slots=True)
class Peer:
    """Who connected, as the kernel saw it at the accept(2) exit (struct peer_info):
    the client's pid (None if the kernel held none), effective uid and gid when it
    connected (what SO_PEERCRED says), and the socket's kernel type number."""

    pid: int | None
    uid: int
    gid: int
    kernel_type: int
    #: Its command name at the accept (None if it had gone already).
    command: str | None = None


def decode_peer(data: bytes) -> Peer | None:
    """The data of an ACCEPT record; None when the kernel could not read it (then
    who connected is unknown: never guessed from a descriptor that may be reused)."""
    if len(data) < _PEER.size:
        return None
    pid, uid, gid, kernel_type, ok, comm = _PEER.unpack_from(data)
    if not ok:
        return None
    # Exact bytes, as process_command reads /proc/PID/comm: printers escape them.
    name = comm.split(b"\0", 1)[0].decode("utf-8", errors="surrogateescape")
    return Peer(pid or None, uid, gid, kernel_type, name or None)


#: struct call of the BPF source, as its enter programs fill it: ptr, count, fd, op,
#: cookie, flags, then (after id and kind) the syscall's number nr; the rest (the
#: exit's walking state) zero.
CALL: Final = struct.Struct("<QQIIII12xI64x")


class CallOp(enum.IntEnum):
    """OP_* in the BPF source: how the exit finds a call's bytes."""

    BUF = 1  # fd, buf, count
    IOV = 2  # fd, iov, vlen
    MSG = 3  # fd, msghdr
    ACCEPT = 4
    MMSG = 8  # fd, mmsghdr vector, vlen


_MSG_PEEK: Final = 2
# Syscall number -> (op, the argument that holds flags whose MSG_PEEK skips it), per
# architecture (the numbers in /proc/PID/task/TID/syscall are the arch's own).
_IN_PROGRESS: Final[dict[str, dict[int, tuple[CallOp, int | None]]]] = {
    "x86_64": {
        0: (CallOp.BUF, None), 1: (CallOp.BUF, None), 19: (CallOp.IOV, None),
        20: (CallOp.IOV, None), 44: (CallOp.BUF, None), 45: (CallOp.BUF, 3),
        46: (CallOp.MSG, None), 47: (CallOp.MSG, 2), 43: (CallOp.ACCEPT, None),
        288: (CallOp.ACCEPT, None), 299: (CallOp.MMSG, 3), 307: (CallOp.MMSG, None),
    },
    "aarch64": {
        63: (CallOp.BUF, None), 64: (CallOp.BUF, None), 65: (CallOp.IOV, None),
        66: (CallOp.IOV, None), 206: (CallOp.BUF, None), 207: (CallOp.BUF, 3),
        211: (CallOp.MSG, None), 212: (CallOp.MSG, 2), 202: (CallOp.ACCEPT, None),
        242: (CallOp.ACCEPT, None), 243: (CallOp.MMSG, 3), 269: (CallOp.MMSG, None),
    },
}  # fmt: skip


@final
@dataclass(frozen=True, slots=True)
class InProgress:
    """A syscall a thread is blocked in, on descriptor `fd` (from /proc/.../syscall)."""

    op: CallOp
    fd: int
    ptr: int
    count: int
    nr: int  # the syscall's number: the exit of another call will not take its entry


def supports_in_progress(machine: str) -> bool:
    """Whether `in_progress_call` knows this architecture's syscall numbers."""
    return machine in _IN_PROGRESS


def in_progress_call(line: str, machine: str) -> InProgress | None:
    """The socket call a thread is blocked in, from its /proc/PID/task/TID/syscall line
    ("NR ARG1 ... ARG6 SP PC" in hex; "running" or "-1 ..." when it is in none), or
    None when it is in no call the capture records (or on an unknown architecture)."""
    fields = line.split()
    table = _IN_PROGRESS.get(machine)
    if table is None or len(fields) < 7:
        return None
    try:
        nr = int(fields[0])
        args = [int(x, 16) for x in fields[1:7]]
    except ValueError:
        return None
    known = table.get(nr)
    if known is None:
        return None
    op, flags_arg = known
    if flags_arg is not None and args[flags_arg] & _MSG_PEEK:
        return None  # peeked bytes are read again, by a call we will see
    if args[0] > 0x7FFFFFFF:
        return None
    return InProgress(op, args[0], args[1], 0 if op is CallOp.MSG else args[2], nr)


def direction_of(kind: RecordKind, flags: WatchFlags) -> Direction:
    """Which way a chunk went: what the server's end sends or the client's end
    receives goes S2C; the rest C2S."""
    server = bool(flags & WatchFlags.SERVER)
    sending = kind is RecordKind.SEND
    return Direction.S2C if server == sending else Direction.C2S


@final
@dataclass(frozen=True, slots=True)
class Target:
    """What to capture: the connections of a bound address (`address`, with the socket
    file's (dev, ino) for a pathname), one socket and its peer (`inode`), or every
    connected unix socket a process holds (`pid`)."""

    address: UnixAddress | None = None
    vfs: VfsInode | None = None
    inode: int | None = None
    pid: int | None = None

    def describe(self) -> str:
        if self.address is not None:
            return str(self.address)
        if self.inode is not None:
            return f"socket inode {self.inode}"
        return f"the unix sockets of pid {self.pid}"


@final
@dataclass(frozen=True, slots=True)
class PlannedConn:
    """One connection to record at the end `inode`, held as `fds` ((pid, fd) pairs)."""

    inode: int
    peer_inode: int | None
    sock_type: SocketType
    server_side: bool
    fds: tuple[tuple[int, int], ...]


@final
@dataclass(frozen=True, slots=True)
class Plan:
    """What to watch: listeners (accept adds to the map) and connections."""

    listeners: tuple[tuple[int, int], ...]
    conns: tuple[PlannedConn, ...]

    @property
    def empty(self) -> bool:
        return not self.listeners and not self.conns


def _matches(info: UnixSocketInfo, target: Target) -> bool:
    if target.address is None:
        return False
    if target.address.is_pathname:
        return target.vfs is not None and info.vfs == target.vfs
    return info.address == target.address


def plan_watch(
    sockets: Iterable[UnixSocketInfo],
    holders: Mapping[int, Sequence[tuple[int, int]]],
    target: Target,
) -> Plan:
    """The (pid, fd) pairs to watch for `target`, given every unix socket (sock_diag)
    and `holders`: socket inode -> the (pid, fd) pairs that hold it."""
    by_inode = {info.inode: info for info in sockets}
    listeners: list[tuple[int, int]] = []
    conns: list[PlannedConn] = []
    taken: set[int] = set()

    def held(inode: int | None) -> tuple[tuple[int, int], ...]:
        return tuple(sorted(holders.get(inode, ()))) if inode is not None else ()

    def record(info: UnixSocketInfo, server_side: bool) -> None:
        """Record at `info`'s end if held, else at its peer's (the other role)."""
        if info.inode in taken or (info.peer_inode is not None and info.peer_inode in taken):
            return
        fds = held(info.inode)
        at, server = info, server_side
        if not fds and info.peer_inode is not None and info.peer_inode in by_inode:
            at, server = by_inode[info.peer_inode], not server_side
            fds = held(at.inode)
        if not fds:
            return
        taken.add(at.inode)
        conns.append(PlannedConn(at.inode, at.peer_inode, at.type, server, fds))

    for info in sorted(by_inode.values(), key=lambda i: i.inode):
        if target.address is not None:
            if not _matches(info, target):
                continue
            if info.state is SocketState.LISTEN:
                listeners += held(info.inode)
            elif info.type is SocketType.DGRAM:
                # The bound datagram socket is the server: its receives are C2S.
                fds = held(info.inode)
                if fds:
                    taken.add(info.inode)
                    conns.append(PlannedConn(info.inode, info.peer_inode, info.type, True, fds))
            elif info.peer_inode is not None:
                record(info, server_side=True)  # an accepted socket carries the name
        elif target.inode is not None:
            if info.inode != target.inode:
                continue
            if info.state is SocketState.LISTEN:
                listeners += held(info.inode)
            else:
                record(info, server_side=False)
        elif target.pid is not None:
            mine = [pair for pair in held(info.inode) if pair[0] == target.pid]
            if not mine:
                continue
            if info.state is SocketState.LISTEN:
                listeners += mine
            elif info.peer_inode is not None or info.type is SocketType.DGRAM:
                # A named connected socket is an accepted one: the server's end.
                record(info, server_side=info.address.kind is not AddressKind.UNNAMED)
    return Plan(tuple(sorted(set(listeners))), tuple(conns))
