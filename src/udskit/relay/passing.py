"""I/O: what travels with a relay's bytes: SCM_CREDENTIALS and SCM_RIGHTS descriptors.

Shared by stream sessions (stream.py) and the datagram front (datagram.py), which is
why it lives apart from both.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable
from contextlib import suppress
from typing import Final, final

_UCRED: Final = struct.Struct("3i")


@final
class Credentials:
    """SCM_CREDENTIALS to attach to each chunk one way (pid, uid, gid of the original
    sender). The kernel wants the pid to exist (__scm_send: ESRCH otherwise): once the
    sender has exited its chunks go on with the proxy's own pid and its uid and gid."""

    __slots__ = ("ancillary", "gid", "pid", "uid")

    def __init__(self, pid: int, uid: int, gid: int) -> None:
        self.pid, self.uid, self.gid = pid, uid, gid
        self.ancillary = [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, _UCRED.pack(pid, uid, gid))]

    def with_rights(self, rights: tuple[int, int, bytes]) -> list[tuple[int, int, bytes]]:
        return [rights, *self.ancillary]

    def sender(self, sock: socket.socket) -> Callable[[bytes | memoryview], int]:
        """`sock.send` with these credentials attached."""
        sendmsg = sock.sendmsg
        ancillary = self.ancillary

        def send(chunk: bytes | memoryview) -> int:
            try:
                return sendmsg((chunk,), ancillary)
            except ProcessLookupError:  # ESRCH: the sender has gone
                ancillary[0] = (
                    socket.SOL_SOCKET,
                    socket.SCM_CREDENTIALS,
                    _UCRED.pack(os.getpid(), self.uid, self.gid),
                )
                return sendmsg((chunk,), ancillary)

        return send


def close_all(fds: tuple[int, ...]) -> None:
    for fd in fds:
        with suppress(OSError):
            os.close(fd)


def describe_fds(fds: tuple[int, ...]) -> tuple[str, ...]:
    """What each passed descriptor is, for the record: `file:/etc/hosts`,
    `socket:[12345]`, `pipe:[678]`, `anon_inode:[eventfd]`, ... (readlink of
    /proc/self/fd, as lsof shows them); names escaped later by the printers."""
    kinds: list[str] = []
    for fd in fds:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = "?"
        kinds.append("file:" + target if target.startswith("/") else target)
    return tuple(kinds)
