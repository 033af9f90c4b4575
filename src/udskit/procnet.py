"""Pure: decoders for the text the kernel shows about unix sockets under /proc.

`decode_proc_net_unix` reads /proc/net/unix, the fallback view of unix sockets when
netlink sock_diag is not there, and `info_from_proc_entry` turns a line into the record
sock_diag gives; `socket_inode_of_link` reads one /proc/PID/fd link. The reading
itself is `udskit.procfs`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, final

from udskit.address import AddressKind, UnixAddress
from udskit.sockdiag import SocketState, UnixSocketInfo
from udskit.socktype import SocketType

#: __SO_ACCEPTCON in the Flags column: the socket listens (include/linux/net.h).
SO_ACCEPTCON: Final = 0x10000
#: The St column (socket_state in include/uapi/linux/net.h).
SS_UNCONNECTED: Final = 1
SS_CONNECTING: Final = 2
SS_CONNECTED: Final = 3
SS_DISCONNECTING: Final = 4

_STATE_FROM_SS: Final[Mapping[int, SocketState]] = {
    SS_UNCONNECTED: SocketState.UNCONNECTED,
    SS_CONNECTING: SocketState.CONNECTING,
    SS_CONNECTED: SocketState.CONNECTED,
    SS_DISCONNECTING: SocketState.DISCONNECTING,
}


@final
@dataclass(frozen=True, slots=True)
class ProcNetUnixEntry:
    """One line of /proc/net/unix.

    `name` is the path as the kernel shows it: a pathname as bound, or '@' and the
    abstract name with every NUL shown as '@' (so it is ambiguous: sock_diag is exact).
    None for an unnamed socket.
    """

    inode: int
    type: int  # SOCK_STREAM=1, SOCK_DGRAM=2, SOCK_SEQPACKET=5
    state: int
    flags: int
    refcount: int
    name: bytes | None

    @property
    def listening(self) -> bool:
        return bool(self.flags & SO_ACCEPTCON)


def decode_proc_net_unix(text: bytes) -> list[ProcNetUnixEntry]:
    """Decode the whole of /proc/net/unix (header line included).

    The kernel prints paths raw (unix_seq_show), so a path holding a newline continues
    on a line of its own, which may even look like an entry: lines that do not parse
    are skipped, and a name there can be cut short. sock_diag has neither problem.
    """
    entries: list[ProcNetUnixEntry] = []
    for line in text.split(b"\n")[1:]:
        # Num RefCount Protocol Flags Type St Inode Path; the path may hold spaces.
        parts = line.split(None, 7)
        if len(parts) < 7 or not parts[0].endswith(b":"):
            continue
        try:
            entry = ProcNetUnixEntry(
                inode=int(parts[6]),
                type=int(parts[4], 16),
                state=int(parts[5], 16),
                flags=int(parts[3], 16),
                refcount=int(parts[1], 16),
                name=parts[7] if len(parts) == 8 else None,
            )
        except ValueError:
            continue
        entries.append(entry)
    return entries


def socket_inode_of_link(target: str) -> int | None:
    """The inode in a /proc/PID/fd link target `socket:[12345]`, or None for other files."""
    if target.startswith("socket:[") and target.endswith("]"):
        return int(target[8:-1])
    return None


def info_from_proc_entry(entry: ProcNetUnixEntry) -> UnixSocketInfo | None:
    """The same record sock_diag gives, from a /proc/net/unix line (None: not a unix type).

    /proc/net/unix has no peers, queues, uids or VFS inodes: those fields are None. It
    shows an abstract name's NUL bytes as '@' (unix_seq_show), so a name read here may
    not be exact; sock_diag's UNIX_DIAG_NAME is.
    """
    try:
        sock_type = SocketType.from_kernel(entry.type)
    except ValueError:
        return None
    name = entry.name
    if name is None:
        address = UnixAddress.unnamed()
    elif name.startswith(b"@"):
        address = UnixAddress.abstract(name[1:])
    else:
        address = UnixAddress(AddressKind.PATHNAME, name)  # as reported: up to 108 bytes
    if entry.listening:
        state = SocketState.LISTEN
    else:
        state = _STATE_FROM_SS.get(entry.state, SocketState.UNKNOWN)
    return UnixSocketInfo(
        inode=entry.inode,
        type=sock_type,
        state=state,
        address=address,
        vfs=None,
        peer_inode=None,
        pending=(),
        recv_q=None,
        send_q=None,
        shutdown=None,
        uid=None,
        cookie=None,
        meminfo=None,
    )
