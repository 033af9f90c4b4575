"""Pure: decoders for the text the kernel shows under /proc.

`decode_proc_net_unix` reads /proc/net/unix, the fallback view of unix sockets when
netlink sock_diag is not there; `socket_inode_of_link` reads one /proc/PID/fd link.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, final

#: __SO_ACCEPTCON in the Flags column: the socket listens (include/linux/net.h).
SO_ACCEPTCON: Final = 0x10000
#: The St column (socket_state in include/uapi/linux/net.h).
SS_UNCONNECTED: Final = 1
SS_CONNECTING: Final = 2
SS_CONNECTED: Final = 3
SS_DISCONNECTING: Final = 4


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
    """Decode the whole of /proc/net/unix (header line included)."""
    entries: list[ProcNetUnixEntry] = []
    for line in text.split(b"\n")[1:]:
        # Num RefCount Protocol Flags Type St Inode Path; the path may hold spaces.
        parts = line.split(None, 7)
        if len(parts) < 7:
            continue
        entries.append(
            ProcNetUnixEntry(
                inode=int(parts[6]),
                type=int(parts[4], 16),
                state=int(parts[5], 16),
                flags=int(parts[3], 16),
                refcount=int(parts[1], 16),
                name=parts[7] if len(parts) == 8 else None,
            )
        )
    return entries


def socket_inode_of_link(target: str) -> int | None:
    """The inode in a /proc/PID/fd link target `socket:[12345]`, or None for other files."""
    if target.startswith("socket:[") and target.endswith("]"):
        return int(target[8:-1])
    return None
