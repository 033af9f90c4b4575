"""Pure: control messages (cmsg(3)) of unix sockets, encoded and decoded without a socket.

Python's `sendmsg`/`recvmsg` already split the control buffer into `(level, type, data)`
items; this module turns values into those items and items back into values:
SCM_RIGHTS (file descriptors), SCM_CREDENTIALS (pid, uid, gid), SCM_PIDFD (a pidfd of
the sender, Linux >= 6.5) and SCM_SECURITY (the sender's LSM label). It also sizes the
receive buffer for control data the way the kernel lays it out (CMSG_SPACE), so a
receiver asks for room for exactly `maxfds` descriptors.

Nothing here makes a syscall: the relay's forwarding path and `udskit.ancillary`
share the decoder, and tests feed it bytes. Closing the descriptors a decoded message
carries is the I/O side's job; the decoder only says which numbers they are.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, final

__all__ = [
    "MSG_CTRUNC",
    "SCM_CREDENTIALS",
    "SCM_MAX_FD",
    "SCM_PIDFD",
    "SCM_RIGHTS",
    "SCM_SECURITY",
    "SOL_SOCKET",
    "Ancillary",
    "Ucred",
    "cmsg_len",
    "cmsg_space",
    "decode_ancillary",
    "decode_groups",
    "decode_rights",
    "decode_ucred",
    "encode_credentials",
    "encode_rights",
    "receive_space",
]

# The kernel's numbers (include/linux/socket.h, include/uapi/asm-generic/socket.h).
SOL_SOCKET: Final = 1
SCM_RIGHTS: Final = 1
SCM_CREDENTIALS: Final = 2
SCM_SECURITY: Final = 3
SCM_PIDFD: Final = 4  # Linux >= 6.5, with SO_PASSPIDFD
MSG_CTRUNC: Final = 0x08
#: The most descriptors one message may carry (SCM_MAX_FD in include/net/scm.h);
#: sendmsg fails with EINVAL beyond it.
SCM_MAX_FD: Final = 253

_INT: Final = struct.Struct("=i")
_UCRED: Final = struct.Struct("=iII")  # struct ucred: pid_t pid; uid_t uid; gid_t gid
_ALIGN: Final = struct.calcsize("N")  # CMSG_ALIGN rounds to sizeof(size_t)
_HEADER: Final = struct.calcsize("@Nii")  # struct cmsghdr: size_t len; int level; int type


def _align(n: int) -> int:
    return (n + _ALIGN - 1) & ~(_ALIGN - 1)


def cmsg_len(data_len: int) -> int:
    """CMSG_LEN: the header plus `data_len` bytes, unpadded."""
    return _align(_HEADER) + data_len


def cmsg_space(data_len: int) -> int:
    """CMSG_SPACE: what one control message of `data_len` bytes takes in the buffer."""
    return _align(_HEADER) + _align(data_len)


def receive_space(maxfds: int, *, credentials: bool = False, pidfd: bool = False) -> int:
    """The control buffer for a message with up to `maxfds` fds, its credentials and
    its pidfd: exactly what the kernel needs, so that one fd more is MSG_CTRUNC."""
    space = cmsg_space(maxfds * _INT.size) if maxfds > 0 else 0
    if credentials:
        space += cmsg_space(_UCRED.size)
    if pidfd:
        space += cmsg_space(_INT.size)
    return space


@final
@dataclass(frozen=True, slots=True)
class Ucred:
    """struct ucred, as SO_PEERCRED and SCM_CREDENTIALS carry it."""

    pid: int
    uid: int
    gid: int


def encode_rights(fds: Sequence[int]) -> tuple[int, int, bytes]:
    """The SCM_RIGHTS item for `fds` (checked: 1 to SCM_MAX_FD non-negative numbers)."""
    if not fds:
        raise ValueError("SCM_RIGHTS needs at least one descriptor")
    if len(fds) > SCM_MAX_FD:
        raise ValueError(f"{len(fds)} descriptors in one message; the kernel takes {SCM_MAX_FD}")
    if any(fd < 0 for fd in fds):
        raise ValueError(f"not a descriptor: {min(fds)}")
    return SOL_SOCKET, SCM_RIGHTS, struct.pack(f"={len(fds)}i", *fds)


def encode_credentials(pid: int, uid: int, gid: int) -> tuple[int, int, bytes]:
    """The SCM_CREDENTIALS item. The kernel checks it (scm_check_creds): the sender's
    own ids, or any for a process with CAP_SETUID/CAP_SETGID/CAP_SYS_ADMIN."""
    return SOL_SOCKET, SCM_CREDENTIALS, _UCRED.pack(pid, uid, gid)


def decode_rights(data: bytes) -> tuple[int, ...]:
    """The descriptor numbers of an SCM_RIGHTS payload; a cut trailing int is dropped
    (recvmsg hands back a truncated payload when the buffer was short)."""
    count = len(data) // _INT.size
    return struct.unpack_from(f"={count}i", data) if count else ()


def decode_ucred(data: bytes) -> Ucred:
    """struct ucred from SO_PEERCRED or SCM_CREDENTIALS."""
    if len(data) < _UCRED.size:
        raise ValueError(f"struct ucred is {_UCRED.size} bytes, got {len(data)}")
    return Ucred(*_UCRED.unpack_from(data))


def decode_groups(data: bytes) -> tuple[int, ...]:
    """The gid_t array of SO_PEERGROUPS."""
    count = len(data) // 4
    return struct.unpack_from(f"={count}I", data) if count else ()


@final
@dataclass(frozen=True, slots=True)
class Ancillary:
    """What the control data of one received message held.

    `fds` and `pidfd` are descriptors now open in the receiving process: whoever
    decoded them owns them. `truncated` is MSG_CTRUNC: the buffer was too small and the
    kernel dropped (and closed) what did not fit.
    """

    fds: tuple[int, ...] = ()
    credentials: Ucred | None = None
    pidfd: int | None = None
    security_label: bytes | None = None
    truncated: bool = False
    unknown: tuple[tuple[int, int], ...] = ()  # (level, type) of items not understood

    @property
    def opened(self) -> tuple[int, ...]:
        """Every descriptor the message installed in this process (fds and pidfd)."""
        return self.fds + ((self.pidfd,) if self.pidfd is not None else ())


def decode_ancillary(items: Iterable[tuple[int, int, bytes]], flags: int = 0) -> Ancillary:
    """Decode recvmsg's control items. Several SCM_RIGHTS items are joined in order
    (the kernel may merge messages on a stream); every fd is kept so none is lost."""
    fds: list[int] = []
    credentials: Ucred | None = None
    pidfd: int | None = None
    label: bytes | None = None
    unknown: list[tuple[int, int]] = []
    for level, kind, data in items:
        if level != SOL_SOCKET:
            unknown.append((level, kind))
        elif kind == SCM_RIGHTS:
            fds.extend(decode_rights(data))
        elif kind == SCM_CREDENTIALS and len(data) >= _UCRED.size:
            credentials = decode_ucred(data)
        elif kind == SCM_PIDFD and len(data) >= _INT.size:
            if pidfd is not None:  # never expected; keep it rather than leak it
                fds.append(pidfd)
            pidfd = _INT.unpack_from(data)[0]
        elif kind == SCM_SECURITY:
            label = data.rstrip(b"\0")
        else:
            unknown.append((level, kind))
    return Ancillary(
        tuple(fds), credentials, pidfd, label, bool(flags & MSG_CTRUNC), tuple(unknown)
    )
