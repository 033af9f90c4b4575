"""I/O: listen, connect and socketpair on unix sockets of every type and address kind.

Safe bind is the heart of it: a socket file left by a dead server is replaced, a file
with a live socket behind it is never removed (the error names its owner), and a file
that is not a socket is never touched. The listener's own socket file is unlinked when
it closes, but only if the file is still the one it created.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import socket
import stat
import struct
import weakref
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Final, final

from udskit.address import (
    AddressKind,
    UnixAddress,
    decode_sockaddr,
    format_address,
    parse_address,
)
from udskit.errors import AddressError, UsageError, socket_error
from udskit.fsguard import Directory, FileSwapped, exclusive, socket_file_inode
from udskit.probe import Liveness, bound_owners, file_kind, os_errors, probe_liveness
from udskit.signals import signals_held
from udskit.socktype import SocketType
from udskit.umask import current_umask, umask_as

if TYPE_CHECKING:  # asyncio costs every command ~30 ms at start; only its users import it
    import asyncio

__all__ = [
    "DEFAULT_BACKLOG",
    "Listener",
    "Message",
    "SocketType",
    "UnixServer",
    "as_address",
    "directory_lock",
    "open_connection",
    "open_connection_async",
    "open_listener",
    "open_socketpair",
    "recv_message",
    "resolve_group",
    "resolve_user",
    "send_message",
    "start_server_async",
]

#: listen() backlog. socat's default of 5 makes 50 simultaneous connects fail with
#: EAGAIN; the kernel caps this at net.core.somaxconn anyway.
DEFAULT_BACKLOG: Final = 4096

AddressLike = UnixAddress | str | os.PathLike[str]


def as_address(address: AddressLike) -> UnixAddress:
    return address if isinstance(address, UnixAddress) else parse_address(address)


def _new_socket(sock_type: SocketType) -> socket.socket:
    return socket.socket(socket.AF_UNIX, sock_type.kernel | socket.SOCK_CLOEXEC)


# -- users and groups ------------------------------------------------------------------
def resolve_user(user: str | int) -> int:
    """A user name or number -> uid; unknown names are a UsageError."""
    if isinstance(user, int) or user.isdigit():
        return int(user)
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise UsageError(f"no such user: {user!r}") from None


def resolve_group(group: str | int) -> int:
    if isinstance(group, int) or group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise UsageError(f"no such group: {group!r}") from None


# -- the listener ------------------------------------------------------------------------
@final
class Listener:
    """A bound (and, for stream and seqpacket, listening) socket that cleans up after itself.

    `replaced_stale` tells whether a dead socket file had to be removed first.
    Closing unlinks the socket file only if it is still the file this listener created.
    """

    def __init__(
        self,
        sock: socket.socket,
        address: UnixAddress,
        sock_type: SocketType,
        created: tuple[int, int] | None,
        replaced_stale: bool,
        directory: Directory | None = None,
        notes: tuple[str, ...] = (),
    ) -> None:
        self._pid = os.getpid()
        self._closed = False
        self.sock = sock
        self.address = address
        self.type = sock_type
        self.replaced_stale = replaced_stale
        #: Lines for the user, e.g. that other users may replace the socket file.
        self.notes = notes
        self._created = created
        self._directory = directory  # held open: close() unlinks relative to it
        if created is not None:
            _open_listeners[id(sock)] = self

    def fileno(self) -> int:
        return self.sock.fileno()

    def accept(self) -> tuple[socket.socket, UnixAddress]:
        with os_errors("accept", self.address, self.type):
            conn, raw = self.sock.accept()
        return conn, decode_sockaddr(raw)

    def detach_file(self) -> None:
        """Leave the socket file in place on close (another process took it over)."""
        self._created = None
        _open_listeners.pop(id(self.sock), None)
        if self._directory is not None:
            self._directory.close()
            self._directory = None

    def close(self) -> None:
        if self._closed:
            return
        # Held: a Ctrl-C in the middle would leave the socket file (it is delivered
        # right after).
        with signals_held():
            self._closed = True
            try:
                self.sock.close()
            finally:
                self._unlink_own_file()
                _open_listeners.pop(id(self.sock), None)

    def __del__(self) -> None:
        # A stop signal can land where a listener was made but nobody holds it yet (the
        # instant between open_listener's return and the caller's `with`): it is then
        # dropped, and its file must go with it as the socket does. Never in a forked
        # child, whose parent still serves on that file.
        if not getattr(self, "_closed", True) and getattr(self, "_pid", 0) == os.getpid():
            with suppress(Exception):
                self.close()

    def _unlink_own_file(self) -> None:
        directory, self._directory = self._directory, None
        if directory is None:
            return
        with directory:
            if self._created is not None:
                with suppress(OSError):
                    directory.unlink_if(os.path.basename(self.address.path), self._created)

    def __enter__(self) -> Listener:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Listener {self.type.value} {self.address}>"


#: Listeners whose socket file is ours to unlink, by id of their socket; weak, so that a
#: listener a library user drops is still collected.
_open_listeners: weakref.WeakValueDictionary[int, Listener] = weakref.WeakValueDictionary()


def close_open_listeners() -> None:
    """Close every listener of this process that still owns its socket file.

    For a process on its way out (the command line calls it last, whatever ended the
    command): a stop signal can land between open_listener's return and the caller's
    `with` or `try`, where no code of the caller would unlink the file."""
    me = os.getpid()
    for listener in list(_open_listeners.values()):
        if listener._pid == me:  # a forked child must not unlink its parent's files
            with suppress(OSError):
                listener.close()
    _open_listeners.clear()


def open_listener(
    address: AddressLike,
    sock_type: SocketType = SocketType.STREAM,
    *,
    backlog: int = DEFAULT_BACKLOG,
    mode: int | None = None,
    owner: str | int | None = None,
    group: str | int | None = None,
    replace_stale: bool = True,
    passcred: bool = False,
) -> Listener:
    """Bind (safely) and listen. Close the result, or use it as a context manager.

    With `mode`, `owner` or `group`, the socket file is created with no permissions at
    all and opened up only after the owner is set, so at no instant can anybody
    connect whom the final mode would refuse. Mode and owner are set on the inode the
    socket is bound to, never through a name another user may have swapped
    (`udskit.fsguard`). `passcred` turns SO_PASSCRED on before bind, so that even the
    first datagram carries its sender's credentials.
    """
    addr = as_address(address)
    if addr.kind is AddressKind.UNNAMED:
        raise UsageError("cannot listen on an unnamed address; give a path or @name")
    if (mode is not None or owner is not None or group is not None) and not addr.is_pathname:
        raise UsageError(
            f"--mode/--owner/--group apply to socket files; {addr} is abstract and has "
            "no permissions (filter peers by --allow-uid instead)"
        )
    uid = resolve_user(owner) if owner is not None else -1
    gid = resolve_group(group) if group is not None else -1
    directory: Directory | None = None
    notes: tuple[str, ...] = ()
    sock: socket.socket | None = None
    created: tuple[int, int] | None = None
    try:
        with signals_held():  # not a socket made and dropped unclosed by a Ctrl-C
            sock = _new_socket(sock_type)
        if passcred:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        replaced = False
        if addr.kind is AddressKind.PATHNAME:
            # Opened before the lock: the fds the lock opens and closes then leave no
            # gap below the ones the listener keeps.
            with os_errors("listen", addr, sock_type):
                directory = Directory(addr.path)
            try:
                with directory_lock(addr.path, "listen"):
                    note = directory.exposure_note(os.path.basename(addr.path))
                    notes = (note,) if note else ()
                    replaced, created = _bind_path(
                        sock, addr, sock_type, mode, uid, gid, replace_stale, directory, backlog
                    )
            except _LiveThere:
                # Who holds it is looked up (in /proc) after the lock is released: twenty
                # servers started at once must not queue behind each other's lookups.
                raise _live(addr) from None
        else:
            with os_errors("listen", addr, sock_type):
                sock.bind(addr.to_sockaddr())
            _listen(sock, addr, sock_type, backlog)
        bound = decode_sockaddr(sock.getsockname())
        # Made inside the try: a Ctrl-C between bind and the Listener's existence left
        # the socket file behind (seen in soaks; every line is now tried by a test).
        listener = Listener(
            sock,
            bound if bound.kind is not AddressKind.UNNAMED else addr,
            sock_type,
            created,
            replaced,
            directory,
            notes,
        )
    except BaseException:
        # Interrupted (a signal, a failure) after bind: our file goes with the socket.
        with signals_held():
            if directory is not None:
                with suppress(OSError):
                    ours = created
                    if ours is None and sock is not None and sock.getsockname():
                        ours = socket_file_inode(sock)
                    if ours is not None:
                        directory.unlink_if(os.path.basename(addr.path), ours)
                directory.close()
            if sock is not None:
                sock.close()
                _open_listeners.pop(id(sock), None)
        raise
    return listener


def _listen(sock: socket.socket, addr: UnixAddress, sock_type: SocketType, backlog: int) -> None:
    if sock_type.connection_oriented:
        with os_errors("listen", addr, sock_type):
            sock.listen(backlog)


@contextmanager
def directory_lock(path: str, op: str = "lock") -> Iterator[None]:
    """Exclude other udskit processes (of this user) from the directory that holds
    `path` while its socket file changes hands, for at most `fsguard.LOCK_WAIT`.

    Two udskit servers starting at once must not both take a stale file for dead and
    have one unlink the other's fresh socket; a dump starting or stopping must not
    interleave its links and renames with a bind. The lock file is udskit's own, in a
    directory only this user may write: a flock on the socket's directory itself could
    be held by any user who can open it, and hung root's udskit."""
    with exclusive(path, op=op):
        yield


def _bind_path(
    sock: socket.socket,
    addr: UnixAddress,
    sock_type: SocketType,
    mode: int | None,
    uid: int,
    gid: int,
    replace_stale: bool,
    directory: Directory,
    backlog: int,
) -> tuple[bool, tuple[int, int] | None]:
    """Bind to a pathname, replacing a stale socket file, and listen. Returns whether it
    replaced one, and the (st_dev, st_ino) of the socket file it created.

    listen() comes right after bind(): a client that sees the file appear must not be
    refused while udskit looks up its inode. A restricted file (mode 0000 until its
    owner and mode are set) listens only once they are: whoever sees it listening sees
    its final permissions."""
    name = os.path.basename(addr.path)
    restricted = mode is not None or uid != -1 or gid != -1
    replaced = False
    for _attempt in range(5):
        try:
            _bind_once(sock, addr, sock_type, restricted)
            break
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            if not replace_stale:
                raise _in_use(addr, "a file exists there (stale replacement is off)") from None
            if _remove_if_stale(addr, directory):
                replaced = True
    else:
        raise _in_use(addr, "the file keeps coming back; another program races us for it")
    if not restricted:
        _listen(sock, addr, sock_type, backlog)
    exposed = directory.exposure(os.geteuid()) is not None
    # Only a user who may rename names here could swap the file between bind and the
    # lstat; where nobody else can, the lstat is the truth and costs no netlink query.
    ours = socket_file_inode(sock) if restricted or exposed else directory.inode(name)
    if ours is None:
        # No sock_diag: the name is all there is. Trust it only where no other user
        # can change names; elsewhere refuse to touch mode or owner.
        if restricted and exposed:
            raise socket_error(
                "listen",
                str(addr),
                errno.EPERM,
                f"{directory.exposure_note(name)}, and without sock_diag (unix_diag) "
                "udskit cannot tell its own file from a swapped one; drop "
                "--mode/--owner/--group or bind in a directory only you can write",
            )
        ours = directory.inode(name)
    if restricted:
        assert ours is not None
        try:
            final_mode = mode if mode is not None else 0o777 & ~current_umask()
            try:
                directory.set_owner_and_mode(name, ours, uid, gid, final_mode)
            except FileSwapped as err:
                raise socket_error(
                    "listen",
                    str(addr),
                    errno.EBUSY,
                    f"{err} before udskit could set its mode and owner; nothing was "
                    f"changed ({directory.exposure_note(name) or 'another process is racing'})",
                ) from None
            except PermissionError:
                raise socket_error(
                    "listen",
                    str(addr),
                    errno.EPERM,
                    "giving the socket file another owner needs root (CAP_CHOWN), and "
                    "--group needs you to be a member of that group",
                ) from None
            except OSError:
                with os_errors("listen", addr, sock_type):
                    raise
            _listen(sock, addr, sock_type, backlog)
        except BaseException:
            # Our own file, born with mode 0000: left behind it would block every retry.
            with suppress(OSError):
                directory.unlink_if(name, ours)
            raise
    return replaced, ours


def _bind_once(
    sock: socket.socket, addr: UnixAddress, sock_type: SocketType, restricted: bool
) -> None:
    """One bind(). With `restricted`, the file is born with mode 0000 (umask 0777).

    umask is process-wide: another thread creating a file in these microseconds would
    get mode 0000 too. The only alternative, binding under a temporary name and
    renaming, leaves the kernel's bound name (getsockname, ss, /proc) pointing at the
    temporary name, which misleads every tool that lists sockets.
    """
    if not restricted:
        try:
            sock.bind(addr.to_sockaddr())
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise
            with os_errors("listen", addr):
                raise
        return
    try:
        with umask_as(0o777):
            sock.bind(addr.to_sockaddr())
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise
        with os_errors("listen", addr, sock_type):
            raise


def _in_use(addr: UnixAddress, detail: str) -> Exception:
    return socket_error("listen", str(addr), errno.EADDRINUSE, detail)


def _remove_if_stale(addr: UnixAddress, directory: Directory) -> bool:
    """Unlink the file at `addr` if it is a socket file with no socket behind it.

    `probe_liveness` decides (a datagram connect(), which never creates a connection
    on a live server; see its table): only STALE is removed, UNKNOWN (we may not
    connect) is refused, never guessed. The probe goes by path: if another user swaps
    the file in between, the inode check before unlink notices and we look again.
    """
    path = addr.path
    name = os.path.basename(path)
    before = directory.lstat(name)
    if before is None:
        return False  # gone meanwhile: just bind again
    if not stat.S_ISSOCK(before.st_mode):
        raise _in_use(
            addr,
            f"{path} is a {file_kind(before.st_mode)}, not a socket; udskit never removes "
            "it: move it away or pick another path",
        )
    verdict = probe_liveness(addr.to_sockaddr())
    if verdict is Liveness.GONE:
        return False  # gone meanwhile: just bind again
    if verdict is Liveness.UNKNOWN:
        raise _in_use(
            addr,
            "a socket file exists there and we may not check whether it is live; "
            "remove it yourself if its server is dead",
        )
    if verdict is Liveness.LIVE:
        raise _LiveThere
    # Only the inode that was probed, and relative to the directory that was checked
    # (unlink never follows a symlink, but the directory on the way might change).
    return directory.unlink_if(name, (before.st_dev, before.st_ino))


class _LiveThere(Exception):
    """A live server holds the path (turned into `_live()` outside the lock)."""


def _live(addr: UnixAddress) -> Exception:
    owners = bound_owners(addr)
    who = f" ({owners})" if owners else ""
    return _in_use(
        addr,
        f"a live server listens there{who}; udskit never removes it: stop it or pick another path",
    )


# -- connecting ----------------------------------------------------------------------------
def open_connection(
    address: AddressLike,
    sock_type: SocketType = SocketType.STREAM,
    *,
    bind: AddressLike | None = None,
    timeout: float | None = None,
) -> socket.socket:
    """A socket connected to `address`. The caller closes it.

    A datagram socket is autobound unless `bind` says otherwise: without a name of its
    own it could send but never receive a reply (unix(7), "autobind").
    """
    addr = as_address(address)
    if addr.kind in (AddressKind.AUTOBIND, AddressKind.UNNAMED):
        raise AddressError(
            f"cannot connect to {format_address(addr)}: a client connects to a name; "
            "'@' (autobind) and '*' (unnamed) only say how a socket binds"
        )
    sock = _new_socket(sock_type)
    try:
        local = as_address(bind) if bind is not None else None
        if local is None and sock_type is SocketType.DGRAM:
            local = UnixAddress.autobind()
        if local is not None:
            with os_errors("bind", local, sock_type):
                sock.bind(local.to_sockaddr())
        sock.settimeout(timeout)
        with os_errors("connect", addr, sock_type):
            sock.connect(addr.to_sockaddr())
    except BaseException:
        sock.close()
        raise
    return sock


def open_socketpair(
    sock_type: SocketType = SocketType.STREAM,
) -> tuple[socket.socket, socket.socket]:
    """Two connected, unnamed sockets (the third address kind)."""
    return socket.socketpair(socket.AF_UNIX, sock_type.kernel | socket.SOCK_CLOEXEC)


# -- messages -----------------------------------------------------------------------------
@final
@dataclass(frozen=True, slots=True)
class Message:
    """One received message. `length` is its real size; `truncated` if it exceeded the buffer.

    `credentials` is the sender's (pid, uid, gid) from SCM_CREDENTIALS when it was asked
    for and the kernel attached it (the receiver needs SO_PASSCRED)."""

    data: bytes
    length: int
    truncated: bool
    sender: UnixAddress
    credentials: tuple[int, int, int] | None = None


_UCRED: Final = struct.Struct("3i")


def recv_message(
    sock: socket.socket, bufsize: int, address: UnixAddress, *, credentials: bool = False
) -> Message:
    """Receive one datagram or seqpacket record, noticing truncation.

    With MSG_TRUNC in the flags the kernel returns the real length even when the buffer
    was smaller (unix_dgram_recvmsg, Linux >= 3.4), so a cut message is reported rather
    than silently shortened. recvmsg_into hands back that count as it is.

    With `credentials`, the sender's SCM_CREDENTIALS are read too. A datagram queued
    before SO_PASSCRED was on carries pid 0 and the overflow uid (65534), which are not
    the sender's: such a message gets `credentials=None`.
    """
    buf = bytearray(bufsize)
    space = socket.CMSG_SPACE(_UCRED.size) if credentials else 0
    with os_errors("recv", address):
        count, anc, flags, raw = sock.recvmsg_into([buf], space, socket.MSG_TRUNC)
    creds: tuple[int, int, int] | None = None
    for level, kind, data in anc:
        ours = level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
        if ours and len(data) >= _UCRED.size:
            pid, uid, gid = _UCRED.unpack_from(data)
            if pid > 0:
                creds = (pid, uid, gid)
    truncated = bool(flags & socket.MSG_TRUNC) or count > bufsize
    return Message(bytes(buf[: min(count, bufsize)]), count, truncated, decode_sockaddr(raw), creds)


def send_message(
    sock: socket.socket, data: bytes, address: UnixAddress, to: UnixAddress | None = None
) -> None:
    """Send one message (to `to` for an unconnected datagram socket), errors explained."""
    with os_errors("send", to or address, sock=sock, size=len(data)):
        if to is None:
            sock.send(data)
        else:
            sock.sendto(data, to.to_sockaddr())


# -- asyncio -----------------------------------------------------------------------------------
async def open_connection_async(
    address: AddressLike, *, limit: int = 2**16
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """asyncio streams over a unix stream connection, with udskit's error messages."""
    import asyncio

    addr = as_address(address)
    sock = _new_socket(SocketType.STREAM)
    sock.setblocking(False)
    try:
        with os_errors("connect", addr, SocketType.STREAM):
            await asyncio.get_running_loop().sock_connect(sock, addr.to_sockaddr())
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_unix_connection(sock=sock, limit=limit)


ClientHandler = Callable[["asyncio.StreamReader", "asyncio.StreamWriter"], Awaitable[None]]


@final
class UnixServer:
    """An asyncio server on a safely bound listener; closing it unlinks the socket file."""

    def __init__(self, server: asyncio.Server, listener: Listener) -> None:
        self.server = server
        self.listener = listener
        self.address = listener.address

    def close(self) -> None:
        self.server.close()
        self.listener.close()

    async def wait_closed(self) -> None:
        await self.server.wait_closed()

    async def serve_forever(self) -> None:
        await self.server.serve_forever()

    async def __aenter__(self) -> UnixServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()


async def start_server_async(
    handler: ClientHandler,
    address: AddressLike,
    *,
    backlog: int = DEFAULT_BACKLOG,
    mode: int | None = None,
    owner: str | int | None = None,
    group: str | int | None = None,
) -> UnixServer:
    """Like asyncio.start_unix_server, with safe bind, modes and cleanup."""
    import asyncio

    listener = open_listener(address, backlog=backlog, mode=mode, owner=owner, group=group)
    try:
        server = await asyncio.start_unix_server(handler, sock=listener.sock, backlog=backlog)
    except BaseException:
        listener.close()
        raise
    return UnixServer(server, listener)
