"""Pure: the one exception tree, and the errno table that turns a failure into advice.

::

    UdskitError
      AddressError(ValueError)    bad text or bytes for an address; no syscall was made
      UsageError(ValueError)      options that do not fit together; no syscall was made
      SocketError(OSError)        a syscall on an address failed; keeps .errno
        PeerClosed                the other side went away (EPIPE, ECONNRESET)
      PassError                   descriptors or credentials could not be passed
        ControlTruncated          MSG_CTRUNC: more fds arrived than there was room for
      HandoffError                a listener hand-off between processes failed
      ActivationError             socket activation (LISTEN_FDS, NOTIFY_SOCKET) failed
      TransferError               a file transfer was refused or failed (udskit.files)

Only what a user can cause inherits from UdskitError: the command line prints it as
one line and exits non-zero. Bugs stay ordinary exceptions with their tracebacks.

The message of a SocketError is built here, from facts that the I/O side gathered
(which path component is missing, who owns a live listener, the socket's real type),
so that every command words the same failure the same way.
"""

from __future__ import annotations

import errno as errno_mod
import os
from collections.abc import Mapping
from typing import Final


class UdskitError(Exception):
    """Anything a user can cause; `str(err)` is one actionable line."""


class AddressError(UdskitError, ValueError):
    """Text or bytes that are not a valid address; raised before any syscall."""


class UsageError(UdskitError, ValueError):
    """Options or arguments that do not fit together."""


class SocketError(UdskitError, OSError):
    """A syscall on an address failed. `.errno` is the kernel's; str() is the advice."""

    def __init__(self, op: str, address: str, err: int | None, message: str) -> None:
        OSError.__init__(self, err, message)
        self.op = op
        self.address = address
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[type[SocketError], tuple[str, str, int | None, str]]:
        return (type(self), (self.op, self.address, self.errno, self.message))


class PeerClosed(SocketError):
    """The other end closed or reset the connection."""


class PassError(UdskitError):
    """Descriptors or credentials could not be sent or received as asked."""


class ControlTruncated(PassError):
    """The control data of a message did not fit (MSG_CTRUNC); every descriptor that
    did arrive has been closed. `.received` is how many that were."""

    def __init__(self, message: str, received: int = 0) -> None:
        super().__init__(message)
        self.received = received


class HandoffError(UdskitError):
    """A listener hand-off between two processes failed; nothing changed hands."""


class ActivationError(UdskitError):
    """Socket activation failed: inherited sockets (LISTEN_FDS) or readiness (READY=1)."""


class TransferError(UdskitError):
    """A file transfer (udskit.files) was refused or failed: the server's one-line
    reason, a digest mismatch, a broken stream. `.code` is the protocol's error code
    (`udskit.files.protocol.ErrorCode`), or None for a failure found on this side."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class BpfUnavailable(UdskitError):
    """The eBPF capture engine cannot run here (not root, no libbpf or clang, a kernel
    that refuses the program); the message says why and what to do instead."""


#: Short words for the errnos users meet on unix sockets.
_WHAT: Final[Mapping[int, str]] = {
    errno_mod.ENOENT: "no such file",
    errno_mod.ECONNREFUSED: "connection refused",
    errno_mod.EACCES: "permission denied",
    errno_mod.EPERM: "operation not permitted",
    errno_mod.EPROTOTYPE: "wrong socket type",
    errno_mod.EADDRINUSE: "address in use",
    errno_mod.EMSGSIZE: "message too long",
    errno_mod.EAGAIN: "resource temporarily unavailable",
    errno_mod.EPIPE: "broken pipe",
    errno_mod.ECONNRESET: "connection reset by peer",
    errno_mod.ENOTDIR: "not a directory",
    errno_mod.ENAMETOOLONG: "name too long",
    errno_mod.ENOTSOCK: "not a socket",
    errno_mod.EISDIR: "is a directory",
    errno_mod.EROFS: "read-only file system",
    errno_mod.ENOTCONN: "not connected",
    errno_mod.EDESTADDRREQ: "no destination address",
    errno_mod.ETIMEDOUT: "timed out",
    errno_mod.ENOBUFS: "no buffer space",
}

#: Advice when the I/O side found no more specific facts: (operation, errno) -> hint.
#: The operation "*" matches any.
HINTS: Final[Mapping[tuple[str, int], str]] = {
    ("connect", errno_mod.ECONNREFUSED): (
        "nothing listens there (a stale file left by a dead server?); start the server, "
        "or look with `udskit ls --stale`"
    ),
    ("send", errno_mod.ECONNREFUSED): (
        "nothing is bound there any more (the receiver exited?); see `udskit ls`"
    ),
    (
        "connect",
        errno_mod.ENOENT,
    ): "no socket file there; is the server running, is the path right?",
    ("send", errno_mod.ENOENT): "no socket file there; is the receiver running, is the path right?",
    ("connect", errno_mod.EPROTOTYPE): "the listener has another socket type; try --type",
    ("send", errno_mod.EPROTOTYPE): "the receiver has another socket type; try --type",
    ("*", errno_mod.EACCES): (
        "connect needs write permission on the socket file and search permission on "
        "every directory; bind needs write permission on the directory"
    ),
    ("listen", errno_mod.EADDRINUSE): "something already uses that address; pick another",
    ("*", errno_mod.EMSGSIZE): "send smaller messages, or raise SO_SNDBUF",
    ("*", errno_mod.EAGAIN): (
        "the receiver's queue is full (it is not reading fast enough); wait, or block"
    ),
    ("*", errno_mod.EPIPE): "the peer closed the connection",
    ("*", errno_mod.ECONNRESET): "the peer closed the connection with data unread",
    ("*", errno_mod.ENOTCONN): "the socket is not connected; connect first or give an address",
    ("*", errno_mod.EROFS): "the directory is on a read-only file system; bind elsewhere",
}

PEER_GONE: Final = frozenset({errno_mod.EPIPE, errno_mod.ECONNRESET})


def errno_name(err: int) -> str:
    return errno_mod.errorcode.get(err, f"errno {err}")


def describe(op: str, address: str, err: int, detail: str | None = None) -> str:
    """One line: what failed, on which address, why (errno), and the likely fix.

    `detail` is the specific finding of the I/O side; without it the generic hint of
    HINTS is used.
    """
    what = _WHAT.get(err) or os.strerror(err).lower()
    hint = detail or HINTS.get((op, err)) or HINTS.get(("*", err))
    head = f"{op} {address}: {what} ({errno_name(err)})"
    return f"{head}: {hint}" if hint else head


def socket_error(op: str, address: str, err: int, detail: str | None = None) -> SocketError:
    """The SocketError (or PeerClosed) for a failed syscall, with its message made."""
    cls = PeerClosed if err in PEER_GONE else SocketError
    return cls(op, address, err, describe(op, address, err, detail))
