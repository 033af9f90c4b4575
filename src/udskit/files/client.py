"""I/O: the clients of `udskit serve-files`: get_file, put_file, list_files.

A received file is written under a hidden temporary name next to its destination
(`O_CREAT | O_EXCL`, mode 0600) and renamed into place only once its SHA-256 matches
the sender's, so a failed or interrupted `get` leaves nothing behind, and an existing
file is replaced whole or not at all.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import final

from udskit.address import UnixAddress, parse_address
from udskit.errors import TransferError, UdskitError, UsageError
from udskit.files.paths import show_path, temporary_name
from udskit.files.protocol import (
    Digest,
    Done,
    End,
    Entry,
    ErrorReply,
    FileHeader,
    GetRequest,
    Hello,
    ListRequest,
    Message,
    PutRequest,
    Ready,
    Welcome,
    bad_frame,
    encode,
)
from udskit.files.wire import (
    expect,
    read_message,
    receive_contents,
    send_contents,
    send_message,
    tune,
)
from udskit.signals import signals_held
from udskit.umask import current_umask

__all__ = ["Transfer", "get_file", "list_files", "put_file"]

#: progress(bytes done, bytes in all)
ProgressCallback = Callable[[int, int], None]


@final
@dataclass(frozen=True, slots=True)
class Transfer:
    """What moved: the remote path (raw bytes), the local path, size and SHA-256 (hex)."""

    remote: bytes
    local: str
    size: int
    sha256: str


def _remote(path: str | bytes) -> bytes:
    return path if isinstance(path, bytes) else os.fsencode(path)


AddressLike = UnixAddress | str


def _connect(addr: UnixAddress) -> socket.socket:
    """A stream connection to `addr`. Not udskit.endpoints.open_connection: that module
    imports asyncio, a third of a client's start-up; the error still goes through the
    one boundary, `probe.os_errors`, imported only when there is an error to explain."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(addr.to_sockaddr())
    except OSError:
        sock.close()
        from udskit.probe import os_errors
        from udskit.socktype import SocketType

        with os_errors("connect", addr, SocketType.STREAM):
            raise
    return sock


@contextmanager
def _session(address: AddressLike, request: Message) -> Iterator[tuple[socket.socket, Welcome]]:
    """A connection with the greeting and `request` sent (in one write) and the
    server's WELCOME read; the server's ERROR (e.g. NOT_ALLOWED) as TransferError."""
    addr = address if isinstance(address, UnixAddress) else parse_address(address)
    sock = _connect(addr)
    try:
        tune(sock)
        sock.sendall(encode(Hello()) + encode(request))
        welcome = expect(read_message(sock), Welcome)
        yield sock, welcome
    except TransferError as err:
        raise TransferError(f"{addr}: {_printable(str(err))}", err.code) from None
    except OSError as exc:
        if isinstance(exc, UdskitError):
            raise
        if exc.errno in _GONE:
            # The server refused and closed before our bytes arrived (NOT_ALLOWED is
            # sent at once); its reason is still waiting in our receive queue.
            reply = _reason(sock)
            if reply is not None:
                raise TransferError(f"{addr}: {_printable(reply.message)}", reply.code) from None
        what = errno.errorcode.get(exc.errno or 0, "?")
        raise TransferError(
            f"{addr}: {(exc.strerror or str(exc)).lower()} ({what})"
            + (" on the connection: the server went away" if exc.errno in _GONE else "")
        ) from None
    finally:
        sock.close()


_GONE = frozenset({errno.EPIPE, errno.ECONNRESET})


def _printable(text: str) -> str:
    """The server's words, with anything a terminal would act on escaped."""
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)


def _local_target(remote: bytes, local: str | os.PathLike[str] | None) -> str:
    name = remote.rstrip(b"/").rsplit(b"/", 1)[-1]
    if local is not None and not os.path.isdir(local):
        return os.fspath(local)
    if name in (b"", b".", b".."):
        raise UsageError(f"{show_path(remote)} names no file; give a LOCAL path")
    return os.path.join(os.fspath(local) if local is not None else ".", os.fsdecode(name))


def get_file(
    address: AddressLike,
    remote: str | bytes,
    local: str | os.PathLike[str] | None = None,
    *,
    progress: ProgressCallback | None = None,
    on_header: Callable[[FileHeader], None] | None = None,
) -> Transfer:
    """Fetch `remote` (relative to the server's root) into `local` (default: its name in
    the current directory; a directory: that name inside it). The file appears only
    once complete and verified."""
    path = _remote(remote)
    target = _local_target(path, local)
    with _session(address, GetRequest(path)) as (sock, _welcome):
        header = expect(read_message(sock), FileHeader)
        if on_header is not None:
            on_header(header)
        directory = os.path.dirname(target) or "."
        temp = os.path.join(
            directory,
            os.fsdecode(temporary_name(os.fsencode(os.path.basename(target)), os.urandom(6).hex())),
        )
        renamed = False
        fd = -1
        try:
            # Ctrl-C is held while the file is created: it then interrupts inside this
            # try, whose finally removes the file, never between the two.
            with signals_held():
                try:
                    fd = os.open(
                        temp,
                        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                        0o600,
                    )
                except OSError as exc:
                    raise _local_error(directory, exc, "cannot create a file in") from None
            digest = receive_contents(sock, fd, header.size, _scaled(progress, header.size))
            sent = expect(read_message(sock), Digest)
            if sent.sha256 != digest:
                raise TransferError(
                    f"{show_path(path)}: SHA-256 mismatch (the file changed on the server "
                    "while it was sent?); nothing was kept"
                )
            os.fchmod(fd, header.mode & 0o777 & ~current_umask())
            try:
                os.rename(temp, target)
            except OSError as exc:
                raise _local_error(target, exc, "cannot rename into") from None
            renamed = True
        finally:
            if fd >= 0:
                os.close(fd)
                if not renamed:
                    with suppress(OSError):
                        os.unlink(temp)
    return Transfer(path, target, header.size, digest.hex())


def _local_error(path: str, exc: OSError, what: str) -> TransferError:
    name = errno.errorcode.get(exc.errno or 0, "?")
    return TransferError(f"{what} {path}: {(exc.strerror or str(exc)).lower()} ({name})")


def _scaled(progress: ProgressCallback | None, total: int) -> Callable[[int], None] | None:
    if progress is None:
        return None
    return lambda done: progress(done, total)


def put_file(
    address: AddressLike,
    local: str | os.PathLike[str],
    remote: str | bytes | None = None,
    *,
    progress: ProgressCallback | None = None,
) -> Transfer:
    """Send the regular file `local` to `remote` (default: its name) under the server's
    root. The server keeps it only once complete and verified."""
    local_path = os.fspath(local)
    path = _remote(remote) if remote is not None else os.fsencode(os.path.basename(local_path))
    try:
        fd = os.open(local_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise _local_error(local_path, exc, "cannot read") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            from udskit.probe import file_kind

            raise UsageError(
                f"{local_path} is a {file_kind(st.st_mode)}; only regular files can be sent"
            )
        request = PutRequest(path, st.st_size, st.st_mode & 0o777)
        with _session(address, request) as (sock, _welcome):
            expect(read_message(sock), Ready)
            digest = send_contents(sock, fd, st.st_size, _scaled(progress, st.st_size))
            send_message(sock, Digest(digest))
            done = expect(read_message(sock), Done)
            if done.sha256 != digest or done.size != st.st_size:
                raise bad_frame("the server confirmed other bytes than were sent")
    finally:
        os.close(fd)
    return Transfer(path, local_path, st.st_size, digest.hex())


def _reason(sock: socket.socket) -> ErrorReply | None:
    """The ERROR a server sent before it closed, if it sent one."""
    with suppress(OSError, TransferError):
        message = read_message(sock, eof_ok=True)
        if isinstance(message, ErrorReply):
            return message
    return None


def list_files(address: AddressLike, directory: str | bytes = "") -> list[Entry]:
    """The entries of `directory` (default: the root), sorted by name; a file's own
    entry when it names a file."""
    entries: list[Entry] = []
    with _session(address, ListRequest(_remote(directory))) as (sock, _welcome):
        while True:
            message = read_message(sock)
            if isinstance(message, End):
                break
            entries.append(expect(message, Entry))
        if message.count != len(entries):
            raise bad_frame(f"END counted {message.count} entries, {len(entries)} arrived")
    return entries
