"""I/O: open the two sides of a relay: listeners, upstream connections, commands, stdio.

Whatever a side is, the engine sees a socket: `exec:CMD` runs the command on one end of
a socketpair (as socat does), and `-` bridges stdin/stdout to a socketpair with two
threads. So one forwarding engine, with splice and half-close, serves every kind.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import subprocess
import threading
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import BinaryIO, final

from udskit.address import UnixAddress
from udskit.endpoint_spec import EndpointKind, EndpointSpec
from udskit.endpoints import DEFAULT_BACKLOG, Listener, open_listener
from udskit.errors import SocketError, UsageError, socket_error
from udskit.probe import os_errors
from udskit.signals import start_worker, unblock_stop_signals
from udskit.socktype import SocketType


@final
@dataclass(slots=True)
class ListenSide:
    """A listening (or, for datagrams, bound) socket and what to do on close."""

    sock: socket.socket
    spec: EndpointSpec  # with the real port for tcp-listen:0
    listener: Listener | None  # unix listeners we opened: close() unlinks the file
    owned: bool

    @property
    def is_unix(self) -> bool:
        return self.sock.family == socket.AF_UNIX

    def close(self) -> None:
        if not self.owned:
            return
        if self.listener is not None:
            self.listener.close()
        else:
            self.sock.close()


def open_listen_side(
    spec: EndpointSpec,
    *,
    backlog: int = DEFAULT_BACKLOG,
    mode: int | None = None,
    owner: str | int | None = None,
    group: str | int | None = None,
) -> ListenSide:
    if spec.kind is EndpointKind.UNIX_LISTEN:
        assert spec.address is not None
        listener = open_listener(
            spec.address, spec.sock_type, backlog=backlog, mode=mode, owner=owner, group=group
        )
        listener.sock.setblocking(False)
        # As bound: an autobound name is the one the kernel picked.
        real = EndpointSpec(spec.kind, address=listener.address, sock_type=spec.sock_type)
        return ListenSide(listener.sock, real, listener, owned=True)
    if spec.kind is EndpointKind.TCP_LISTEN:  # (Relay checked --mode/--owner/--group)
        assert spec.host is not None and spec.port is not None
        family, sockaddr = resolve_tcp(spec, "listen")
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(sockaddr)
                sock.listen(backlog)
            except OSError as exc:
                raise _tcp_error("listen", spec, exc) from exc
            sock.setblocking(False)
            port = sock.getsockname()[1]
        except BaseException:
            sock.close()
            raise
        real = EndpointSpec(EndpointKind.TCP_LISTEN, host=spec.host, port=port)
        return ListenSide(sock, real, None, owned=True)
    raise UsageError(f"{spec} does not listen")


def adopt_listen_side(source: Listener | socket.socket) -> ListenSide:
    """A listener the caller opened (udskit dump binds its own): the relay never closes it."""
    if isinstance(source, Listener):
        spec = EndpointSpec(EndpointKind.UNIX_LISTEN, address=source.address, sock_type=source.type)
        source.sock.setblocking(False)
        return ListenSide(source.sock, spec, source, owned=False)
    sock = source
    sock.setblocking(False)
    if sock.family == socket.AF_UNIX:
        from udskit.address import decode_sockaddr

        address = decode_sockaddr(sock.getsockname())
        sock_type = SocketType.from_kernel(sock.type & 0xF)
        spec = EndpointSpec(EndpointKind.UNIX_LISTEN, address=address, sock_type=sock_type)
    else:
        host, port = sock.getsockname()[:2]
        spec = EndpointSpec(EndpointKind.TCP_LISTEN, host=host, port=port)
    return ListenSide(sock, spec, None, owned=False)


def resolve_tcp(
    spec: EndpointSpec, op: str
) -> tuple[int, tuple[str, int] | tuple[str, int, int, int]]:
    """(family, sockaddr) for a TCP endpoint; names are resolved once, here."""
    assert spec.host is not None and spec.port is not None
    try:
        infos = socket.getaddrinfo(spec.host, spec.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise SocketError(
            op, str(spec), None, f"{op} {spec}: cannot resolve {spec.host!r} ({exc.strerror})"
        ) from None
    family, _type, _proto, _name, sockaddr = infos[0]
    return family, sockaddr  # type: ignore[return-value]


def _tcp_error(op: str, spec: EndpointSpec, exc: OSError) -> SocketError:
    hints = {
        errno.EADDRINUSE: "another program listens on that port; pick another (or 0)",
        errno.ECONNREFUSED: "nothing listens on that port; is the server running?",
        errno.EACCES: "ports below 1024 need root (CAP_NET_BIND_SERVICE); pick a higher one",
        errno.EADDRNOTAVAIL: "that address is not on this machine; use 127.0.0.1 or ::1",
    }
    return socket_error(op, str(spec), exc.errno or 0, hints.get(exc.errno or 0))


def socket_type(sock: socket.socket) -> SocketType:
    """The type of a relay socket (TCP sockets are streams)."""
    if sock.family != socket.AF_UNIX:
        return SocketType.STREAM
    return SocketType.from_kernel(sock.type & 0xF)


# -- upstream ----------------------------------------------------------------------------
@final
@dataclass(slots=True)
class Target:
    """Where each client's upstream connection goes, resolved once."""

    spec: EndpointSpec
    family: int
    sock_type: SocketType
    sockaddr: object  # what socket.connect takes

    def new_socket(self) -> socket.socket:
        kind = self.sock_type.kernel if self.family == socket.AF_UNIX else socket.SOCK_STREAM
        return socket.socket(self.family, kind | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)

    def error(self, op: str, err: int) -> SocketError:
        """The actionable message for a failed connect/send to this target."""
        if self.family == socket.AF_UNIX:
            assert self.spec.address is not None
            try:
                with os_errors(op, self.spec.address, self.sock_type):
                    raise OSError(err, os.strerror(err))
            except SocketError as made:
                return made
        return _tcp_error(op, self.spec, OSError(err, os.strerror(err)))


def resolve_target(spec: EndpointSpec) -> Target:
    if spec.kind is EndpointKind.UNIX:
        assert spec.address is not None
        return Target(spec, socket.AF_UNIX, spec.sock_type, spec.address.to_sockaddr())
    if spec.kind is EndpointKind.TCP:
        family, sockaddr = resolve_tcp(spec, "connect")
        return Target(spec, family, SocketType.STREAM, sockaddr)
    return Target(spec, socket.AF_UNIX, SocketType.STREAM, None)


def connect_blocking(target: Target, timeout: float) -> socket.socket:
    """A connected socket (left non-blocking), or a SocketError saying what to do."""
    try:
        sock = target.new_socket()
    except OSError as exc:  # EMFILE, ENFILE
        raise target.error("connect", exc.errno or errno.EIO) from None
    try:
        if target.sock_type is SocketType.DGRAM:
            sock.bind(UnixAddress.autobind().to_sockaddr())
        sock.settimeout(timeout)
        try:
            sock.connect(target.sockaddr)  # type: ignore[arg-type]
        except TimeoutError:
            raise target.error("connect", errno.ETIMEDOUT) from None
        except OSError as exc:
            raise target.error("connect", exc.errno or errno.EIO) from None
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


# -- exec and stdio ---------------------------------------------------------------------------
def spawn_exec(command: str) -> tuple[socket.socket, subprocess.Popen[bytes]]:
    """Run `command` through /bin/sh with stdin and stdout on a socketpair; our end back.

    A socketpair rather than two pipes: half-close (shutdown) reaches the command as
    EOF on its stdin, and our end is a stream socket, so splice works on it. The
    command leads its own process group, so that the relay can end what it started
    too (/bin/sh -c may fork the real command rather than exec it).
    """
    try:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    except OSError as exc:  # EMFILE/ENFILE: no fds left for this client
        raise SocketError("exec", command, exc.errno, f"exec {command}: {exc.strerror}") from None
    try:
        try:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", command],
                stdin=theirs.fileno(),
                stdout=theirs.fileno(),
                close_fds=True,
                process_group=0,
                # The caller may hold the stop signals around this (see Relay): the
                # command must not inherit them blocked.
                preexec_fn=unblock_stop_signals,  # noqa: PLW1509 (one C call, no lock)
            )
        except OSError as exc:
            raise SocketError("exec", command, exc.errno, f"exec {command}: {exc}") from None
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    ours.setblocking(False)
    return ours, proc


def stdio_bridge(stdin: BinaryIO, stdout: BinaryIO) -> tuple[socket.socket, threading.Thread]:
    """A socket whose peer is our stdin/stdout, moved by two daemon threads; the second
    value is the stdout thread, to join before exiting so no output is lost.

    stdin's EOF arrives as EOF on the socket; EOF on the socket (the other side shut
    down) flushes stdout. Plain fds are read and written with os.read/os.write, so a
    thread still blocked on a terminal at exit holds no buffer lock; an fd left
    non-blocking by whoever gave it to us is waited for with poll (EAGAIN is not EOF).
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    read = _reader(stdin)
    write = _writer(stdout)
    remaining = [2]
    lock = threading.Lock()

    def done() -> None:
        with lock:
            remaining[0] -= 1
            if remaining[0] == 0:
                theirs.close()

    def pump_in() -> None:
        try:
            while chunk := read(65536):
                theirs.sendall(chunk)
        except OSError:
            pass
        with suppress(OSError):
            theirs.shutdown(socket.SHUT_WR)
        done()

    def pump_out() -> None:
        try:
            while chunk := theirs.recv(65536):
                write(chunk)
        except (OSError, ValueError):
            pass
        with suppress(OSError):
            theirs.shutdown(socket.SHUT_RD)
        done()

    threads = [
        start_worker(target, name=f"udskit-relay-{target.__name__}")
        for target in (pump_in, pump_out)
    ]
    ours.setblocking(False)
    return ours, threads[1]


def _reader(stream: BinaryIO) -> Callable[[int], bytes]:
    try:
        fd = stream.fileno()
    except (OSError, ValueError, AttributeError):
        read1 = getattr(stream, "read1", None)
        return read1 if read1 is not None else stream.read

    def read(size: int) -> bytes:
        while True:
            try:
                return os.read(fd, size)
            except BlockingIOError:
                _wait(fd, select.POLLIN)

    return read


def _writer(stream: BinaryIO) -> Callable[[bytes], None]:
    try:
        fd = stream.fileno()
    except (OSError, ValueError, AttributeError):

        def write_stream(data: bytes) -> None:
            stream.write(data)
            stream.flush()

        return write_stream
    with suppress(OSError, ValueError):
        stream.flush()  # whatever the caller buffered goes first

    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                _wait(fd, select.POLLOUT)

    return write


def _wait(fd: int, event: int) -> None:
    """Block until a non-blocking fd is ready (or has an error, which the retry shows)."""
    poller = select.poll()
    poller.register(fd, event)
    poller.poll()
