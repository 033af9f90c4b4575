"""I/O: pass file descriptors and credentials over unix sockets, and ask who the peer is.

- `send_fds` / `recv_fds`, `send_message` / `recv_message`: SCM_RIGHTS and
  SCM_CREDENTIALS on stream, seqpacket and datagram sockets, datagrams to an address
  too (the stdlib's `socket.send_fds` cannot give one). Received descriptors are
  close-on-exec (MSG_CMSG_CLOEXEC), so a command the receiver runs later does not
  inherit them by accident. A message whose descriptors did not fit (MSG_CTRUNC) is an
  error, raised after closing every descriptor that did arrive: a receiver cannot
  handle half a hand-over, and must not leak it.
- `peer_credentials`: pid, uid, gid (SO_PEERCRED), supplementary groups
  (SO_PEERGROUPS), a pidfd (SO_PEERPIDFD, Linux >= 6.5) that keeps naming the same
  process even after its pid is reused, and the LSM label (SO_PEERSEC) where there is one.

The control data itself is encoded and decoded by the pure `udskit.cmsg`.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Final, final

from udskit.address import UnixAddress, decode_sockaddr, parse_address
from udskit.cmsg import (
    MSG_CTRUNC,
    SCM_MAX_FD,
    SCM_RIGHTS,
    SOL_SOCKET,
    Ancillary,
    decode_ancillary,
    decode_groups,
    decode_rights,
    decode_ucred,
    encode_credentials,
    encode_rights,
    receive_space,
)
from udskit.errors import ControlTruncated, PassError, UsageError, socket_error

__all__ = [
    "SCM_MAX_FD",
    "Credentials",
    "PeerCredentials",
    "Received",
    "close_fds",
    "enable_passcred",
    "enable_passpidfd",
    "fd_count",
    "peer_credentials",
    "peer_groups",
    "peer_pidfd",
    "recv_fds",
    "recv_message",
    "send_fds",
    "send_message",
]

# Not in Python 3.11's socket module (include/uapi/asm-generic/socket.h).
SO_PASSCRED: Final = getattr(socket, "SO_PASSCRED", 16)
SO_PEERSEC: Final = getattr(socket, "SO_PEERSEC", 31)
SO_PEERGROUPS: Final = 59
SO_PASSPIDFD: Final = 76  # Linux >= 6.5
SO_PEERPIDFD: Final = 77  # Linux >= 6.5
# A plain int: the socket module's is an enum, whose operators cost a call each.
MSG_CMSG_CLOEXEC: Final = int(getattr(socket, "MSG_CMSG_CLOEXEC", 0x40000000))
#: A label longer than this is not one anybody uses (SELinux contexts are < 256 bytes).
_LABEL_MAX: Final = 4096
#: NGROUPS_MAX is 65536; start small and grow on ERANGE.
_GROUPS_FIRST: Final = 64
_GROUPS_MAX: Final = 65536

AddressLike = UnixAddress | str


@final
@dataclass(frozen=True, slots=True)
class Credentials:
    """A pid, uid and gid as SCM_CREDENTIALS carries them."""

    pid: int
    uid: int
    gid: int

    @classmethod
    def mine(cls) -> Credentials:
        """This process's own: what an unprivileged sender may claim."""
        return cls(os.getpid(), os.geteuid(), os.getegid())


@final
@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """Who is on the other end of a connected unix socket, as the kernel recorded it
    at connect() (or socketpair()). `pidfd` is a descriptor the caller owns and closes."""

    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...]
    pidfd: int | None
    security_label: bytes | None

    def in_group(self, gid: int) -> bool:
        """Primary or supplementary member of `gid`."""
        return gid == self.gid or gid in self.groups


@final
@dataclass(frozen=True, slots=True)
class Received:
    """One received message: its bytes, the descriptors it carried (open in this
    process, close-on-exec, owned by the caller, like `pidfd`), the sender's
    credentials when SO_PASSCRED is on, recvmsg's flags and the sender's address
    (datagrams; None on a connected stream)."""

    data: bytes
    fds: tuple[int, ...]
    credentials: Credentials | None
    pidfd: int | None
    flags: int
    address: UnixAddress | None

    @property
    def truncated(self) -> bool:
        """The data was cut (MSG_TRUNC: a datagram or record longer than bufsize)."""
        return bool(self.flags & socket.MSG_TRUNC)


# -- peer credentials ---------------------------------------------------------------------
def _where(sock: socket.socket) -> str:
    with suppress(OSError):
        name = sock.getsockname()
        if isinstance(name, (str, bytes)) and name:
            return str(decode_sockaddr(name))
    return f"socket fd {sock.fileno()}"


def peer_credentials(sock: socket.socket, *, pidfd: bool = True) -> PeerCredentials:
    """The peer's pid, uid, gid, supplementary groups, pidfd and LSM label.

    A pid alone can name another process by the time it is used (pids are reused);
    with `pidfd` (SO_PEERPIDFD, Linux >= 6.5) the caller gets a descriptor that keeps
    naming the peer, or says it exited. Where the kernel lacks it, `pidfd` is None.
    """
    cred = peer_ucred(sock)
    groups = peer_groups(sock)
    label = _peer_label(sock)
    fd = peer_pidfd(sock) if pidfd else None
    return PeerCredentials(cred.pid, cred.uid, cred.gid, groups, fd, label)


def peer_ucred(sock: socket.socket) -> Credentials:
    """Only the peer's pid, uid and gid at connect() (SO_PEERCRED): one getsockopt, for
    the servers that check every connection (talk, relay, files). `peer_credentials`
    adds the groups, a pidfd and the LSM label. The pid is 0 for a peer in another pid
    namespace that the kernel cannot map."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    except OSError as exc:
        raise socket_error("peer credentials", _where(sock), exc.errno or errno.EIO) from exc
    cred = decode_ucred(raw)
    return Credentials(cred.pid, cred.uid, cred.gid)


def peer_groups(sock: socket.socket) -> tuple[int, ...]:
    """The peer's supplementary groups at connect() (SO_PEERGROUPS, Linux >= 4.13);
    () where the kernel lacks it."""
    size = _GROUPS_FIRST
    while True:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, size * 4)
        except OSError as exc:
            if exc.errno == errno.ERANGE and size < _GROUPS_MAX:
                size *= 16  # the kernel wants more room; it does not say how much here
                continue
            if exc.errno in (errno.ENOPROTOOPT, errno.ENODATA):
                return ()
            raise socket_error("peer groups", _where(sock), exc.errno or errno.EIO) from exc
        return decode_groups(raw)


def peer_pidfd(sock: socket.socket) -> int | None:
    """A pidfd for the peer (SO_PEERPIDFD), close-on-exec, or None where the kernel
    has none (before 6.5) or the peer has no process (e.g. it exited and was reaped)."""
    try:
        return sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
    except OSError as exc:
        if exc.errno in (errno.ENOPROTOOPT, errno.ESRCH, errno.ENODATA, errno.EINVAL):
            return None
        raise socket_error("peer pidfd", _where(sock), exc.errno or errno.EIO) from exc


def _peer_label(sock: socket.socket) -> bytes | None:
    """SO_PEERSEC: ENOPROTOOPT when no LSM that labels sockets is active."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERSEC, _LABEL_MAX)
    except OSError:
        return None
    label = raw.rstrip(b"\0")
    return label or None


# -- options ------------------------------------------------------------------------------
def enable_passcred(sock: socket.socket) -> None:
    """SO_PASSCRED: every message received carries its sender's SCM_CREDENTIALS."""
    sock.setsockopt(socket.SOL_SOCKET, SO_PASSCRED, 1)


def enable_passpidfd(sock: socket.socket) -> bool:
    """SO_PASSPIDFD: every message carries a pidfd of its sender (SCM_PIDFD, Linux >=
    6.5). Returns False where the kernel lacks it."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_PASSPIDFD, 1)
    except OSError as exc:
        if exc.errno in (errno.ENOPROTOOPT, errno.EINVAL):
            return False
        raise
    return True


# -- sending ------------------------------------------------------------------------------
def _target(sock: socket.socket, address: AddressLike | None) -> UnixAddress | None:
    if address is None:
        return None
    return address if isinstance(address, UnixAddress) else parse_address(address)


def send_fds(
    sock: socket.socket,
    fds: Sequence[int],
    data: bytes = b"",
    address: AddressLike | None = None,
) -> int:
    """Send `fds` (SCM_RIGHTS) with `data`; returns the bytes sent (all of `data`).

    On a stream socket the descriptors ride on the first byte, and a message of no
    bytes carries nothing, so empty `data` is sent as one NUL byte there."""
    return send_message(sock, data, fds=fds, address=address)


def send_message(
    sock: socket.socket,
    data: bytes,
    *,
    fds: Sequence[int] = (),
    credentials: Credentials | None = None,
    address: AddressLike | None = None,
) -> int:
    """One sendmsg with SCM_RIGHTS and/or SCM_CREDENTIALS. More than SCM_MAX_FD (253)
    descriptors are refused before anything is sent. On a stream socket the rest of
    `data` follows if the kernel took only part of it; the control data went with the
    first part. Returns the number of bytes sent."""
    if len(fds) > SCM_MAX_FD:
        raise UsageError(
            f"{len(fds)} descriptors in one message; the kernel takes at most {SCM_MAX_FD} "
            "(SCM_MAX_FD): send them in several messages"
        )
    ancillary = []
    if fds:
        try:
            ancillary.append(encode_rights(list(fds)))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if credentials is not None:
        ancillary.append(encode_credentials(credentials.pid, credentials.uid, credentials.gid))
    if not data and ancillary and sock.type == socket.SOCK_STREAM:
        data = b"\0"
    to = _target(sock, address)
    try:
        if to is not None:
            sent = sock.sendmsg([data], ancillary, 0, to.to_sockaddr())
        else:
            sent = sock.sendmsg([data], ancillary)
        if sent < len(data) and sock.type == socket.SOCK_STREAM:
            sock.sendall(memoryview(data)[sent:])
            sent = len(data)
    except OSError as exc:
        err = exc.errno or errno.EIO
        detail = None
        if err == errno.EPERM and credentials is not None:
            detail = (
                f"the kernel refused credentials pid {credentials.pid} uid {credentials.uid} "
                f"gid {credentials.gid}: only root may claim ids other than its own"
            )
        elif err == errno.EBADF and fds:
            detail = "one of the descriptors to pass is not open"
        elif err == errno.ETOOMANYREFS:
            detail = (
                "too many descriptors in flight (RLIMIT_NOFILE of the sender bounds the "
                "unix sockets being passed); let the receiver read"
            )
        where = str(to) if to is not None else _where(sock)
        raise socket_error("send", where, err, detail) from exc
    return sent


# -- receiving ----------------------------------------------------------------------------
def close_fds(fds: Sequence[int]) -> None:
    for fd in fds:
        with suppress(OSError):
            os.close(fd)


def recv_message(sock: socket.socket, bufsize: int, maxfds: int = SCM_MAX_FD) -> Received:
    """Receive one message with room for `maxfds` descriptors, its credentials (when
    SO_PASSCRED is on) and its pidfd (SO_PASSPIDFD). Descriptors arrive close-on-exec.

    More descriptors than `maxfds` (MSG_CTRUNC, or more than asked for where the room
    kept for credentials took them) raise ControlTruncated after every descriptor that
    arrived was closed. EOF on a stream gives data b"" and no descriptors.
    BlockingIOError and TimeoutError pass through as the socket raised them.
    """
    if not 0 <= maxfds <= SCM_MAX_FD:
        raise UsageError(f"maxfds must be 0 to {SCM_MAX_FD}, not {maxfds}")
    # Room for credentials and a pidfd too, whether or not SO_PASSCRED is on: asking
    # the socket would cost two more syscalls per message.
    space = _SPACE[maxfds]
    try:
        data, items, flags, raw = sock.recvmsg(bufsize, space, MSG_CMSG_CLOEXEC)
    except (BlockingIOError, TimeoutError, InterruptedError):
        raise
    except OSError as exc:
        raise socket_error("recv", _where(sock), exc.errno or errno.EIO) from exc
    address = decode_sockaddr(raw) if raw else None
    flags &= ~MSG_CMSG_CLOEXEC
    if not items:
        return Received(data, (), None, None, flags, address)
    if len(items) == 1 and not flags & MSG_CTRUNC:  # the common case: fds alone
        level, kind, payload = items[0]
        if level == SOL_SOCKET and kind == SCM_RIGHTS:
            fds = decode_rights(payload)
            if len(fds) <= maxfds:
                return Received(data, fds, None, None, flags, address)
    got = decode_ancillary(items, flags)
    if got.truncated or len(got.fds) > maxfds:
        close_fds(got.opened)
        if got.truncated:
            what = f"the kernel dropped what did not fit (MSG_CTRUNC) and the {len(got.fds)}"
        else:
            what = f"all {len(got.fds)}"
        raise ControlTruncated(
            f"recv {_where(sock)}: the message carried more descriptors than the "
            f"{maxfds} there was room for; {what} that arrived were closed: receive with "
            "a larger maxfds",
            len(got.fds),
        )
    if got.unknown:
        close_fds(got.opened)
        raise PassError(
            f"recv {_where(sock)}: unexpected control messages {list(got.unknown)}; "
            "closed the descriptors that came with them"
        )
    return _received(data, got, flags, address)


#: The control buffer for each maxfds: room for that many fds, credentials and a pidfd.
_SPACE: Final = tuple(
    max(receive_space(n, credentials=True, pidfd=True), 1) for n in range(SCM_MAX_FD + 1)
)


def _received(data: bytes, got: Ancillary, flags: int, address: UnixAddress | None) -> Received:
    creds = got.credentials
    return Received(
        data,
        got.fds,
        Credentials(creds.pid, creds.uid, creds.gid) if creds is not None else None,
        got.pidfd,
        flags,
        address,
    )


def recv_fds(
    sock: socket.socket, bufsize: int, maxfds: int
) -> tuple[bytes, list[int], int, UnixAddress | None]:
    """Like `socket.recv_fds`: (data, fds, flags, address), with close-on-exec fds and
    MSG_CTRUNC as an error. A pidfd that came along (SO_PASSPIDFD) is closed."""
    got = recv_message(sock, bufsize, maxfds)
    if got.pidfd is not None:
        os.close(got.pidfd)
    return got.data, list(got.fds), got.flags, got.address


def fd_count() -> int:
    """How many descriptors this process has open (for leak checks)."""
    return len(os.listdir("/proc/self/fd")) - 1  # minus the one listdir opened
