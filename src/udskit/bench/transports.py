"""I/O: a connected pair of ends for each transport the bench compares.

Both ends are made in one process before it forks, so that the setup (listen,
connect, accept) is the library's own code path and is never timed; after the fork
each process keeps one end. Unix sockets come from `udskit.endpoints`, so the bench
measures what a udskit user gets: the same safe bind, the same cleanup.

An end hands the patterns two bound methods, `send` and `recv_into`, taken straight
from the socket or file object: nothing of ours sits between the timed loop and the
syscall.
"""

from __future__ import annotations

import errno
import io
import itertools
import os
import socket
import struct
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Final, final

from udskit.address import UnixAddress
from udskit.bench.results import Transport
from udskit.endpoints import open_connection, open_listener, open_socketpair
from udskit.errors import socket_error
from udskit.socktype import SocketType

#: Transports whose messages cannot exceed a size the kernel fixes per socket.
CAPPED: Final = {
    Transport.UNIX_DGRAM: SocketType.DGRAM,
    Transport.UNIX_SEQPACKET: SocketType.SEQPACKET,
}

_names = itertools.count()


@final
class End:
    """One end of a transport: `send(view) -> int` and `recv_into(view) -> int` make one
    syscall each (a stream send may be partial; a receive of 0 means the peer is done).
    """

    def __init__(
        self,
        send: Callable[[memoryview], int],
        recv_into: Callable[[memoryview], int],
        closers: list[Callable[[], None]],
        *,
        end_marker: Callable[[], object] | None = None,
    ) -> None:
        self.send = send
        self.recv_into = recv_into
        self._closers = closers
        self._end_marker = end_marker

    def finish(self) -> None:
        """Tell the peer we are done, then close. Stream, seqpacket and pipe peers read
        end-of-file when we close; a datagram peer has no end of file, so it gets an
        empty datagram (no payload the bench sends is empty)."""
        if self._end_marker is not None:
            with suppress(OSError):
                self._end_marker()
        self.close()

    def close(self) -> None:
        """Close our descriptors only (also what the other process does with this end)."""
        closers, self._closers = self._closers, []
        for close in closers:
            with suppress(OSError):
                close()


def _socket_end(sock: socket.socket, timeout: float, *, datagram: bool = False) -> End:
    _kernel_timeouts(sock, timeout)
    marker: Callable[[], object] | None = (lambda: sock.send(b"")) if datagram else None
    return End(sock.send, sock.recv_into, [sock.close], end_marker=marker)


def _kernel_timeouts(sock: socket.socket, seconds: float) -> None:
    """SO_RCVTIMEO/SO_SNDTIMEO: a blocked call fails with EAGAIN if the peer vanished.

    Unlike settimeout(), which makes Python poll() before every call, these cost
    nothing per call: the kernel checks them only while the call sleeps (socket(7)).
    """
    whole = int(seconds)
    timeval = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


def open_pair(transport: Transport, sockdir: Path, timeout: float) -> tuple[End, End]:
    """(the measuring end, the peer's end) of a fresh transport.

    `sockdir` holds the socket files of pathname transports (each is unlinked before
    this returns: connected sockets no longer need it). `timeout` bounds any single
    blocked call, so a dead peer turns into an error instead of a hang.
    """
    if transport is Transport.PIPE:
        return _pipe_pair()
    if transport is Transport.TCP:
        client, server = _tcp_pair()
        return _socket_end(client, timeout), _socket_end(server, timeout)
    if transport is Transport.SOCKETPAIR:
        a, b = open_socketpair(SocketType.STREAM)
        return _socket_end(a, timeout), _socket_end(b, timeout)
    if transport is Transport.UNIX_DGRAM:
        client, server = _dgram_pair(UnixAddress.pathname(str(_fresh_path(sockdir))))
        return _socket_end(client, timeout, datagram=True), _socket_end(
            server, timeout, datagram=True
        )
    if transport is Transport.UNIX_STREAM_ABSTRACT:
        address = UnixAddress.abstract(f"udskit-bench-{os.getpid()}-{next(_names)}".encode())
        client, server = _connected_pair(address, SocketType.STREAM)
    elif transport is Transport.UNIX_SEQPACKET:
        client, server = _connected_pair(
            UnixAddress.pathname(str(_fresh_path(sockdir))), SocketType.SEQPACKET
        )
    else:
        client, server = _connected_pair(
            UnixAddress.pathname(str(_fresh_path(sockdir))), SocketType.STREAM
        )
    return _socket_end(client, timeout), _socket_end(server, timeout)


def _fresh_path(sockdir: Path) -> Path:
    return sockdir / f"b{next(_names)}.sock"


def _connected_pair(
    address: UnixAddress, sock_type: SocketType
) -> tuple[socket.socket, socket.socket]:
    """listen, connect, accept; the listener (and its socket file) is gone afterwards."""
    with open_listener(address, sock_type, backlog=1) as listener:
        client = open_connection(address, sock_type)
        try:
            server, _peer = listener.accept()
        except BaseException:
            client.close()
            raise
    return client, server


def _dgram_pair(address: UnixAddress) -> tuple[socket.socket, socket.socket]:
    """Two datagram sockets connected to each other, as a client and its server.

    The server binds the socket file; the client autobinds (open_connection does) so
    that the server can connect back to it. A connected datagram socket keeps its
    peer's socket, not its name, so the file can go before any data moves.
    """
    with open_listener(address, SocketType.DGRAM) as listener:
        client = open_connection(address, SocketType.DGRAM)
        try:
            server = listener.sock.dup()
            try:
                server.connect(client.getsockname())
            except BaseException:
                server.close()
                raise
        except BaseException:
            client.close()
            raise
    return client, server


@contextmanager
def _tcp_errors(op: str, where: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if exc.errno is None:
            raise
        raise socket_error(op, where, exc.errno) from exc


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A TCP connection on 127.0.0.1, both ends with TCP_NODELAY (no Nagle delay, so a
    small pingpong message leaves at once, as on a unix socket)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        with _tcp_errors("listen", "tcp:127.0.0.1:0"):
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
        port = listener.getsockname()[1]
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            with _tcp_errors("connect", f"tcp:127.0.0.1:{port}"):
                client.connect(("127.0.0.1", port))
                server, _peer = listener.accept()
        except BaseException:
            client.close()
            raise
    finally:
        listener.close()
    for sock in (client, server):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client, server


def _pipe_pair() -> tuple[End, End]:
    """Two pipes, one each way. FileIO's readinto and write are one read(2) or write(2)
    each, straight from C, like a socket's recv_into and send."""
    down_r, down_w = os.pipe2(os.O_CLOEXEC)
    up_r, up_w = os.pipe2(os.O_CLOEXEC)
    files = [
        io.FileIO(fd, mode, closefd=True)
        for fd, mode in ((down_r, "rb"), (down_w, "wb"), (up_r, "rb"), (up_w, "wb"))
    ]
    down_in, down_out, up_in, up_out = files
    ours = End(down_out.write, _readinto(up_in), [down_out.close, up_in.close])
    theirs = End(up_out.write, _readinto(down_in), [up_out.close, down_in.close])
    return ours, theirs


def _readinto(f: io.FileIO) -> Callable[[memoryview], int]:
    # FileIO.readinto returns None only for non-blocking descriptors; ours block.
    return f.readinto


# -- what this machine allows -----------------------------------------------------------
def message_cap(sock_type: SocketType) -> int:
    """The largest message one send can carry on a fresh socket of this type.

    unix_dgram_sendmsg (net/unix/af_unix.c) refuses with EMSGSIZE anything over
    sk_sndbuf - 32, and seqpacket sends go through the same function; sk_sndbuf starts
    at net.core.wmem_default. We find the limit by sending, since a sysctl or an LSM
    may change it; a binary search over nonblocking sends to our own socketpair.
    """
    a, b = open_socketpair(sock_type)
    try:
        low, high = 1, 64 * 1024 * 1024
        while low < high:
            mid = (low + high + 1) // 2
            try:
                a.send(bytes(mid), socket.MSG_DONTWAIT)
            except OSError as exc:
                if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS, errno.ENOMEM, errno.EAGAIN):
                    raise
                high = mid - 1
            else:
                b.recv(1, socket.MSG_TRUNC)
                low = mid
        return low
    finally:
        a.close()
        b.close()


def message_caps() -> Mapping[Transport, int]:
    return {transport: message_cap(kind) for transport, kind in CAPPED.items()}


def default_sndbuf() -> int:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))
