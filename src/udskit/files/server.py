"""I/O: the file server behind `udskit serve-files`: one thread per connection, every
path opened beneath the root (`udskit.files.confine`), every client checked by its
SO_PEERCRED before a byte of the request is read.

A file written by PUT lives under a hidden temporary name (`O_CREAT | O_EXCL`, mode
0600) until its SHA-256 matches the client's; only then is it renamed into place, so a
transfer that fails, is cut or is refused leaves nothing behind.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import threading
from collections.abc import Callable, Collection
from contextlib import suppress
from types import TracebackType
from typing import Final, final

from udskit.address import escape_bytes
from udskit.ancillary import peer_ucred
from udskit.endpoints import AddressLike, Listener, open_listener
from udskit.errors import SocketError, TransferError, UsageError
from udskit.files.confine import (
    Resolver,
    describe_os_error,
    open_beneath,
    refuse_unless_regular,
)
from udskit.files.paths import AccessPolicy, show_path, split_remote_path, temporary_name
from udskit.files.protocol import (
    MAGIC,
    VERSION,
    Digest,
    Done,
    End,
    Entry,
    EntryKind,
    ErrorCode,
    ErrorReply,
    FileHeader,
    GetRequest,
    Hello,
    ListRequest,
    PutRequest,
    Ready,
    Welcome,
    bad_frame,
)
from udskit.files.wire import (
    expect,
    read_message,
    receive_contents,
    send_contents,
    send_message,
    tune,
)
from udskit.procfs import process_command
from udskit.signals import start_worker
from udskit.socktype import SocketType
from udskit.umask import current_umask

__all__ = ["FileServer", "serve_files"]

Log = Callable[[str], None]

#: How long stop() waits for connection threads after shutting their sockets down.
_JOIN_TIMEOUT: Final = 5.0


class _Aborted(Exception):
    """Raw file bytes were in flight: the only way to report is to close."""


@final
class FileServer:
    """Serves GET, PUT and LIST beneath `root` on `listener`.

    `serve_forever()` blocks (Ctrl-C ends it); `start()` serves from a thread;
    `close()` stops accepting, shuts every connection down (their temporary files
    are removed) and closes the listener. A context manager closes on exit.
    """

    def __init__(
        self,
        listener: Listener,
        root: str | os.PathLike[str],
        *,
        allow_uids: Collection[int] = (),
        allow_gids: Collection[int] = (),
        read_only: bool = False,
        max_size: int | None = None,
        resolver: Resolver = Resolver.AUTO,
        log: Log | None = None,
    ) -> None:
        try:
            self.root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise UsageError(
                f"--root {os.fspath(root)}: {exc.strerror.lower() if exc.strerror else exc}; "
                "give an existing directory"
            ) from None
        self.listener = listener
        self.root = os.path.realpath(root)
        self.policy = AccessPolicy.of(os.getuid(), allow_uids, allow_gids)
        self.read_only = read_only
        self.max_size = max_size
        self.resolver = resolver
        self._log = log or (lambda _line: None)
        self._umask = current_umask()
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- running -------------------------------------------------------------------------
    def serve_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _addr = self.listener.accept()
            except SocketError:
                if self._stopping.is_set():
                    return
                raise
            with self._lock:
                if self._stopping.is_set():
                    conn.close()
                    return
                self._connections.add(conn)
                thread = start_worker(self._serve_connection, conn, name="udskit-files-conn")
                self._threads.add(thread)

    def start(self) -> FileServer:
        self._thread = start_worker(self.serve_forever, name="udskit-files-accept")
        return self

    def close(self) -> None:
        self._stopping.set()
        with suppress(OSError):
            self.listener.sock.shutdown(socket.SHUT_RDWR)  # wakes accept()
        if self._thread is not None:
            self._thread.join(_JOIN_TIMEOUT)
        with self._lock:
            connections = list(self._connections)
            threads = list(self._threads)
        for conn in connections:
            with suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(_JOIN_TIMEOUT)
        self.listener.close()
        with suppress(OSError):
            os.close(self.root_fd)

    def __enter__(self) -> FileServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- one connection ------------------------------------------------------------------
    def _serve_connection(self, conn: socket.socket) -> None:
        cred = peer_ucred(conn)
        pid, uid, gid = cred.pid, cred.uid, cred.gid
        who = f"pid {pid} ({escape_bytes(process_command(pid).encode())}) uid {uid}"
        try:
            tune(conn)
            if not self.policy.allows(uid, gid):
                raise TransferError(self.policy.refusal(pid, uid, gid), ErrorCode.NOT_ALLOWED)
            hello = expect(read_message(conn), Hello)
            if hello.magic != MAGIC:
                raise bad_frame("no UDSF greeting")
            if hello.version != VERSION:
                raise TransferError(
                    f"protocol version {hello.version} is not spoken here (this server "
                    f"speaks version {VERSION}); use a udskit of the same release",
                    ErrorCode.VERSION,
                )
            send_message(conn, Welcome(VERSION, self.read_only, self.max_size))
            request = read_message(conn)
            if isinstance(request, GetRequest):
                self._log(f"{who}: get {show_path(request.path)}: {self._get(conn, request)}")
            elif isinstance(request, PutRequest):
                self._log(f"{who}: put {show_path(request.path)}: {self._put(conn, request)}")
            elif isinstance(request, ListRequest):
                self._log(f"{who}: list {show_path(request.path)}: {self._list(conn, request)}")
            else:
                raise bad_frame(f"expected a request, got {type(request).__name__}")
        except TransferError as err:
            self._log(f"{who}: refused: {err}")
            with suppress(OSError):
                send_message(conn, ErrorReply(ErrorCode(err.code or ErrorCode.IO), str(err)))
        except _Aborted as err:
            self._log(f"{who}: aborted: {err}")
        except OSError as exc:  # the client went away, or we are stopping
            if not self._stopping.is_set():
                self._log(f"{who}: connection lost: {exc.strerror or exc}")
        finally:
            with self._lock:
                self._connections.discard(conn)
                self._threads.discard(threading.current_thread())
            conn.close()

    def _get(self, conn: socket.socket, request: GetRequest) -> str:
        parts = split_remote_path(request.path)
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
        fd = open_beneath(self.root_fd, parts, os.O_RDONLY | os.O_NONBLOCK, resolver=self.resolver)
        try:
            st = os.fstat(fd)
            refuse_unless_regular(st.st_mode, parts)
            self._check_size(st.st_size, parts)
            send_message(conn, FileHeader(st.st_size, st.st_mode & 0o777, st.st_mtime_ns))
            try:
                digest = send_contents(conn, fd, st.st_size)
            except TransferError as err:
                raise _Aborted(str(err)) from None
            send_message(conn, Digest(digest))
            return f"{st.st_size} bytes sent"
        finally:
            os.close(fd)

    def _check_size(self, size: int, parts: tuple[bytes, ...]) -> None:
        if self.max_size is not None and size > self.max_size:
            raise TransferError(
                f"{show_path(b'/'.join(parts))}: {size} bytes is over this server's "
                f"--max-size of {self.max_size} bytes",
                ErrorCode.TOO_LARGE,
            )

    def _put(self, conn: socket.socket, request: PutRequest) -> str:
        if self.read_only:
            raise TransferError(
                "this server is read-only (--read-only): put is refused", ErrorCode.READ_ONLY
            )
        parts = split_remote_path(request.path)
        self._check_size(request.size, parts)
        dir_fd = open_beneath(
            self.root_fd,
            parts[:-1],
            os.O_PATH | os.O_DIRECTORY,
            resolver=self.resolver,
            requested=parts,
        )
        try:
            return self._put_into(conn, request, dir_fd, parts)
        finally:
            os.close(dir_fd)

    def _put_into(
        self, conn: socket.socket, request: PutRequest, dir_fd: int, parts: tuple[bytes, ...]
    ) -> str:
        name = parts[-1]
        try:
            existing = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise describe_os_error(self.root_fd, parts, exc) from None
        else:
            if stat.S_ISLNK(existing.st_mode):
                raise TransferError(
                    f"{show_path(b'/'.join(parts))}: is a symbolic link; the server "
                    "neither follows nor replaces symbolic links",
                    ErrorCode.SYMLINK,
                )
            refuse_unless_regular(existing.st_mode, parts)
        temp = temporary_name(name, os.urandom(6).hex())
        try:
            fd = os.open(
                temp,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=dir_fd,
            )
        except OSError as exc:
            raise describe_os_error(self.root_fd, parts, exc) from None
        renamed = False
        try:
            send_message(conn, Ready())
            try:
                digest = receive_contents(conn, fd, request.size)
            except TransferError as err:
                raise _Aborted(str(err)) from None
            except OSError as exc:
                if exc.errno is None or exc.errno in (errno.EPIPE, errno.ECONNRESET):
                    raise
                raise describe_os_error(self.root_fd, parts, exc) from None
            sent = expect(read_message(conn), Digest)
            if sent.sha256 != digest:
                raise TransferError(
                    f"{show_path(b'/'.join(parts))}: SHA-256 mismatch (the bytes that "
                    "arrived are not the ones sent); nothing was kept",
                    ErrorCode.DIGEST_MISMATCH,
                )
            os.fchmod(fd, request.mode & 0o777 & ~self._umask)
            try:
                os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except OSError as exc:
                raise describe_os_error(self.root_fd, parts, exc) from None
            renamed = True
            send_message(conn, Done(request.size, digest))
            return f"{request.size} bytes received"
        finally:
            os.close(fd)
            if not renamed:
                with suppress(OSError):
                    os.unlink(temp, dir_fd=dir_fd)

    def _list(self, conn: socket.socket, request: ListRequest) -> str:
        parts = split_remote_path(request.path, allow_root=True)
        fd = open_beneath(self.root_fd, parts, os.O_RDONLY | os.O_NONBLOCK, resolver=self.resolver)
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode):
                entries = [_entry(parts[-1], st)]
            elif stat.S_ISDIR(st.st_mode):
                entries = _read_directory(fd)
            else:
                raise TransferError(
                    f"{show_path(b'/'.join(parts))}: not a directory", ErrorCode.NOT_DIRECTORY
                )
        finally:
            os.close(fd)
        for entry in entries:
            send_message(conn, entry)
        send_message(conn, End(len(entries)))
        return f"{len(entries)} entries"


def _entry(name: bytes, st: os.stat_result) -> Entry:
    mode = st.st_mode
    kind = (
        EntryKind.FILE
        if stat.S_ISREG(mode)
        else EntryKind.DIRECTORY
        if stat.S_ISDIR(mode)
        else EntryKind.SYMLINK
        if stat.S_ISLNK(mode)
        else EntryKind.OTHER
    )
    return Entry(name, kind, st.st_size, mode & 0o7777, st.st_mtime_ns)


def _read_directory(fd: int) -> list[Entry]:
    entries = []
    with os.scandir(fd) as it:
        for item in it:
            with suppress(OSError):  # vanished between readdir and stat
                entries.append(_entry(os.fsencode(item.name), item.stat(follow_symlinks=False)))
    entries.sort(key=lambda e: e.name)
    return entries


def serve_files(
    address: AddressLike,
    root: str | os.PathLike[str],
    *,
    allow_uids: Collection[int] = (),
    allow_gids: Collection[int] = (),
    read_only: bool = False,
    max_size: int | None = None,
    log: Log | None = None,
    ready: Callable[[FileServer], None] | None = None,
) -> None:
    """Serve `root` on `address` until interrupted (Ctrl-C, or an exception from `ready`).

    `ready` is called once the listener is bound, with the server (its `listener.address`
    tells the name the kernel chose for `@`)."""
    listener = open_listener(address, SocketType.STREAM)
    try:
        server = FileServer(
            listener,
            root,
            allow_uids=allow_uids,
            allow_gids=allow_gids,
            read_only=read_only,
            max_size=max_size,
            log=log,
        )
    except BaseException:
        listener.close()
        raise
    with server:
        if ready is not None:
            ready(server)
        server.serve_forever()
