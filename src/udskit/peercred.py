"""I/O: who is on the other end of an accepted connection, for admission checks.

A unix client: SO_PEERCRED (uid, gid as of connect) and SO_PEERGROUPS (supplementary
groups, Linux 4.13). A TCP client on loopback: the kernel knows which user created the
client's socket (sk_uid), and sock_diag for inet (inet_diag, NETLINK_SOCK_DIAG with
AF_INET/AF_INET6) hands it out for an exact 4-tuple; its groups then come from the user
database, since a TCP socket carries no process credentials. A TCP client from anywhere
but loopback has no local identity at all: None.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from dataclasses import dataclass
from typing import Final, final

from udskit.ancillary import peer_groups, peer_ucred
from udskit.errors import UdskitError

__all__ = ["PeerIdentity", "identify_peer", "tcp_peer_uid"]

_NETLINK_SOCK_DIAG: Final = 4
_SOCK_DIAG_BY_FAMILY: Final = 20
_NLM_F_REQUEST: Final = 1
_NLMSG_ERROR: Final = 2
_NLMSG_HDR: Final = struct.Struct("=IHHII")
# struct inet_diag_req_v2 (include/uapi/linux/inet_diag.h): family, protocol, ext, pad,
# states, then struct inet_diag_sockid: sport, dport (big endian), src[4], dst[4]
# (big endian words), interface, cookie[2].
_REQ: Final = struct.Struct("=BBBxI")
_SOCKID: Final = struct.Struct(">HH16s16s")
_SOCKID_TAIL: Final = struct.Struct("=III")
_NOCOOKIE: Final = 0xFFFFFFFF
# struct inet_diag_msg: family, state, timer, retrans, sockid (48 bytes), expires,
# rqueue, wqueue, uid, inode.
_MSG_UID_OFFSET: Final = 4 + 48 + 12


@final
@dataclass(frozen=True, slots=True)
class PeerIdentity:
    uid: int | None
    gid: int | None
    groups: tuple[int, ...] = ()


def _packed(family: int, host: str) -> bytes:
    raw = socket.inet_pton(family, host)
    return raw.ljust(16, b"\0")


def tcp_peer_uid(sock: socket.socket) -> int | None:
    """The uid that owns the client end of an accepted loopback TCP connection."""
    try:
        peer = sock.getpeername()
        local = sock.getsockname()
    except OSError:
        return None
    family = sock.family
    if not ipaddress.ip_address(peer[0]).is_loopback:
        return None
    request = _REQ.pack(family, socket.IPPROTO_TCP, 0, 0xFFFFFFFF)
    # The client's socket: its local end is our peer.
    request += _SOCKID.pack(peer[1], local[1], _packed(family, peer[0]), _packed(family, local[0]))
    request += _SOCKID_TAIL.pack(0, _NOCOOKIE, _NOCOOKIE)
    message = (
        _NLMSG_HDR.pack(_NLMSG_HDR.size + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0)
        + request
    )
    try:
        with socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, _NETLINK_SOCK_DIAG
        ) as nl:
            nl.settimeout(5.0)
            nl.sendall(message)
            reply = nl.recv(8192)
    except OSError:
        return None
    if len(reply) < _NLMSG_HDR.size + _MSG_UID_OFFSET + 4:
        return None
    _length, kind, _flags, _seq, _pid = _NLMSG_HDR.unpack_from(reply)
    if kind == _NLMSG_ERROR:
        return None
    (uid,) = struct.unpack_from("=I", reply, _NLMSG_HDR.size + _MSG_UID_OFFSET)
    return int(uid)


def _user_groups(uid: int) -> tuple[int | None, tuple[int, ...]]:
    import pwd

    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return None, ()
    try:
        groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    except OSError:
        groups = ()
    return entry.pw_gid, groups


def identify_peer(sock: socket.socket) -> PeerIdentity:
    """The credentials an admission check may go by (Nones when unknown)."""
    if sock.family == socket.AF_UNIX:
        cred = peer_ucred(sock)
        peer_uid, peer_gid = cred.uid, cred.gid
        try:
            groups = peer_groups(sock)
        except UdskitError:  # the kernel would not say: judge by uid and gid alone
            groups = ()
        return PeerIdentity(peer_uid, peer_gid, groups)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        uid = tcp_peer_uid(sock)
        if uid is None:
            return PeerIdentity(None, None)
        gid, groups = _user_groups(uid)
        return PeerIdentity(uid, gid if gid is not None else -1, groups)
    return PeerIdentity(None, None)
