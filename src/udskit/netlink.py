"""I/O: the sock_diag exchange over netlink (sock_diag(7)): every unix socket of this
network namespace, or one by inode, as `udskit.sockdiag` records.

Low-level on purpose: the lister builds listings on it, and the error advice of
`udskit.probe` asks it who is bound at an address, without importing `udskit.inspect`.
"""

from __future__ import annotations

import errno
from typing import Final

from udskit.sockdiag import (
    NETLINK_SOCK_DIAG,
    Show,
    SockDiagError,
    UnixSocketInfo,
    build_request,
    decode_replies,
)

__all__ = ["dump_unix_sockets", "query_unix_socket"]

#: Netlink caps a dump's datagrams at 32 KiB (netlink_recvmsg, max_recvmsg_len), so
#: one 64 KiB buffer always holds a whole one.
_RECV_SIZE: Final = 65536
#: Generous: the kernel answers a dump of 20,000 sockets in about 10 ms.
_NETLINK_TIMEOUT: Final = 10.0


def _netlink_exchange(request: bytes, *, exact: bool) -> list[UnixSocketInfo]:
    import socket  # here, not above: `udskit ls` starts faster without it

    found: list[UnixSocketInfo] = []
    # Made in the `with` line itself: a Ctrl-C between two lines leaked the socket.
    with socket.socket(
        socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG
    ) as sock:
        sock.settimeout(_NETLINK_TIMEOUT)
        sock.sendall(request)
        while True:
            data = sock.recv(_RECV_SIZE)
            if not data:
                break
            batch, done = decode_replies(data)
            found += batch
            # An exact request is answered by one message, without NLMSG_DONE.
            if done or exact:
                break
    return found


def dump_unix_sockets(show: Show | None = None) -> list[UnixSocketInfo]:
    """Every unix socket of this network namespace, from sock_diag.

    Raises OSError or SockDiagError where netlink sock_diag is not available (no
    unix_diag module, a sandbox that forbids AF_NETLINK).
    """
    return _netlink_exchange(build_request(show or Show.default()), exact=False)


def query_unix_socket(inode: int, show: Show | None = None) -> UnixSocketInfo | None:
    """One socket by inode (None if there is none), without dumping all of them."""
    try:
        found = _netlink_exchange(build_request(show or Show.default(), inode=inode), exact=True)
    except SockDiagError as err:
        if err.errno == errno.ENOENT:
            return None
        raise
    return found[0] if found else None
