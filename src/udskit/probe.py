"""I/O: find the facts behind a failed syscall, so the error can say what to do.

`os_errors()` is the one boundary where OSError becomes SocketError: it wraps every
syscall udskit makes on an address. On failure it looks around, read-only and without
side effects on anybody's sockets (no connection is ever made to a live server): which
path component is missing, which permission is lacking, the real type of the socket
there, who holds a bound name. The wording lives in `udskit.errors`.

`probe_liveness()` is the one test of whether a socket file has a server behind it;
`judge_liveness()` is its pure decision, one table from the errno of a test connect()
to live / stale / unknown / gone (see LIVENESS_TABLE for each row and why).
"""

from __future__ import annotations

import enum
import errno
import os
import pwd
import socket
import stat
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Final

from udskit.address import AddressKind, UnixAddress
from udskit.errors import UdskitError, socket_error
from udskit.procfs import process_command, read_proc_net_unix, walk_socket_fds
from udskit.safetext import escape_text
from udskit.socktype import SocketType


@contextmanager
def os_errors(
    op: str,
    address: UnixAddress,
    sock_type: SocketType | None = None,
    *,
    sock: socket.socket | None = None,
    size: int | None = None,
) -> Iterator[None]:
    """Turn an OSError raised inside into a SocketError with an actionable message."""
    try:
        yield
    except UdskitError:
        raise
    except OSError as exc:
        if exc.errno is None:
            raise
        try:
            detail = explain(op, address, exc.errno, sock_type, sock=sock, size=size)
        except Exception:  # advice is best effort: never let it replace the real error
            detail = None
        raise socket_error(op, str(address), exc.errno, detail) from exc


def explain(
    op: str,
    address: UnixAddress,
    err: int,
    sock_type: SocketType | None = None,
    *,
    sock: socket.socket | None = None,
    size: int | None = None,
) -> str | None:
    """The specific reason for `err`, or None to fall back on the generic hint."""
    path = address.path if address.kind is AddressKind.PATHNAME else None
    if err == errno.ENOENT and path is not None:
        if op in ("listen", "bind"):
            return _cannot_create(path)
        return missing_component(path)
    if err == errno.ECONNREFUSED:
        if path is None and sock_type is not None:
            # An abstract name is looked up with the type (unix_find_abstract): one of
            # another type answers ECONNREFUSED, not EPROTOTYPE as a file would.
            hint = _other_type(address, sock_type)
            if hint is not None:
                return hint
        return _refused(address, path)
    if err in (errno.EACCES, errno.EPERM) and path is not None:
        return permission_problem(path, binding=op in ("listen", "bind"))
    if err == errno.EPROTOTYPE:
        return _other_type(address, sock_type)
    if err == errno.EADDRINUSE and address.kind is AddressKind.ABSTRACT:
        owners = bound_owners(address)
        who = f" by {owners}" if owners else ""
        return f"{address} is already bound{who}; stop it or pick another name"
    if err == errno.EMSGSIZE:
        return _too_big(sock, size)
    if err in (errno.EAGAIN, errno.EWOULDBLOCK):
        if op == "connect":
            return "the listener's backlog is full (it is not accepting fast enough); retry"
        return (
            f"the receiver's queue is full (net.unix.max_dgram_qlen is {_max_dgram_qlen()}); "
            "it is not reading fast enough: wait and retry"
        )
    return None


def _other_type(address: UnixAddress, sock_type: SocketType | None) -> str | None:
    """'... is a datagram socket; use --type dgram' when a socket of another type than
    `sock_type` is bound at `address`."""
    real = bound_type(address, exclude=sock_type)
    if real is None:
        return None
    return f"{address} is a {real.noun} socket; use --type {real.value}"


def _cannot_create(path: str) -> str:
    """Why bind() found no place for a socket file."""
    directory = os.path.dirname(os.path.abspath(path)) or "/"
    missing = missing_component(path)
    if not missing.startswith("no socket file"):
        return missing  # a directory on the way is missing, or is not a directory
    return (
        f"{directory} takes no new files (a virtual file system such as /proc or /sys?); "
        "bind in a directory on a real file system, such as /run or /tmp"
    )


def _refused(address: UnixAddress, path: str | None) -> str:
    if path is None:
        return f"nothing is bound to {address} in this network namespace; is the server running?"
    try:
        st = os.lstat(path)
    except OSError:
        return "the socket file vanished; is the server running?"
    if not stat.S_ISSOCK(st.st_mode):
        return f"{path} is a {file_kind(st.st_mode)}, not a socket"
    if bound_type(address) is not None:
        return "a socket is bound there but does not accept connections (not listening yet?)"
    return (
        "the socket file exists but nothing listens on it: a stale file left by a dead "
        "server; start the server (`udskit listen` replaces a stale file) or remove it"
    )


def _too_big(sock: socket.socket | None, size: int | None) -> str:
    limit = ""
    if sock is not None:
        with suppress(OSError):
            limit = f" (SO_SNDBUF is {sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)} bytes)"
    what = f"{size} bytes do not" if size is not None else "the message does not"
    return f"{what} fit in one datagram here{limit}; send smaller messages or raise SO_SNDBUF"


def _max_dgram_qlen() -> str:
    try:
        with open("/proc/sys/net/unix/max_dgram_qlen") as f:
            return f.read().strip()
    except OSError:
        return "?"


def file_kind(mode: int) -> str:
    for test, noun in (
        (stat.S_ISREG, "regular file"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISLNK, "symbolic link"),
        (stat.S_ISFIFO, "FIFO (named pipe)"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return noun
    return "file"


def missing_component(path: str) -> str:
    """Name the first component of `path` that does not exist."""
    absolute = os.path.abspath(path)
    parts = absolute.split("/")[1:]
    current = ""
    for i, part in enumerate(parts):
        current += "/" + part
        try:
            st = os.stat(current)
        except FileNotFoundError:
            if i < len(parts) - 1:
                return f"directory {current} does not exist; create it or fix the path"
            return f"no socket file {current} (its directory exists); is the server running?"
        except OSError:
            return f"cannot look into {os.path.dirname(current)}"
        if i < len(parts) - 1 and not stat.S_ISDIR(st.st_mode):
            return f"{current} is a {file_kind(st.st_mode)}, not a directory"
    return f"no socket file {absolute}; is the server running?"


def current_user() -> str:
    """'uid 1000 (alice)', for messages."""
    uid = os.geteuid()
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def describe_file(path: str, st: os.stat_result) -> str:
    """'/run/x.sock (mode 0660, owner root:adm)', for messages."""
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    import grp

    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"{path} (mode {stat.S_IMODE(st.st_mode):04o}, owner {owner}:{group})"


def permission_problem(path: str, *, binding: bool) -> str | None:
    """Which permission on which path the caller lacks; see path_resolution(7)."""
    absolute = os.path.abspath(path)
    parent = os.path.dirname(absolute)
    # Search (x) permission on every directory on the way.
    current = "/"
    for part in parent.split("/")[1:]:
        current = os.path.join(current, part)
        if not os.access(current, os.X_OK, effective_ids=True):
            st = os.stat(current)
            return (
                f"{current_user()} lacks search (x) permission on directory "
                f"{describe_file(current, st)}; grant it or use another directory"
            )
    if binding:
        if not os.access(parent, os.W_OK, effective_ids=True):
            where = describe_file(parent, os.stat(parent))
            return (
                f"{current_user()} lacks write permission on directory {where}, "
                "which bind needs to create the socket file; bind elsewhere (e.g. under "
                "$XDG_RUNTIME_DIR) or use an abstract name"
            )
        return None
    try:
        st = os.stat(absolute)
    except OSError:
        return None
    if not os.access(absolute, os.W_OK, effective_ids=True):
        where = describe_file(absolute, st)
        return (
            f"{current_user()} lacks write permission on socket file {where}, "
            "which connect needs; have the server grant it (`udskit listen --mode 0660 "
            "--group GROUP`) or run as an allowed user"
        )
    return None


def _wanted_names(address: UnixAddress) -> set[bytes]:
    """The names /proc/net/unix may show for `address` (it shows NULs as '@')."""
    if address.kind is AddressKind.PATHNAME:
        return {address.name, os.fsencode(os.path.abspath(address.path))}
    if address.kind is AddressKind.ABSTRACT:
        return {b"@" + address.name.replace(b"\0", b"@")}
    return set()


def _entries_for(address: UnixAddress) -> list[tuple[int, int]]:
    """(inode, kernel type) of the sockets bound at `address`, listeners first.

    Exact through sock_diag: a pathname by its file's (dev, ino), which also finds a
    server that bound a relative name or was reached through a symlink; an abstract
    name by its exact bytes. /proc/net/unix only where netlink is missing: it matches
    names as text and shows NULs as '@'.
    """
    if address.kind not in (AddressKind.PATHNAME, AddressKind.ABSTRACT):
        return []
    from udskit.netlink import dump_unix_sockets
    from udskit.sockdiag import Show, SockDiagError, SocketState, VfsInode

    try:
        infos = dump_unix_sockets(Show.NAME | Show.VFS)
    except (OSError, SockDiagError):
        wanted = _wanted_names(address)
        return [(e.inode, e.type) for e in read_proc_net_unix() if e.name in wanted]
    if address.kind is AddressKind.PATHNAME:
        try:
            st = os.stat(address.path)  # connect() follows symlinks too
        except OSError:
            return []
        vfs = VfsInode(st.st_dev, st.st_ino)
        found = [info for info in infos if info.vfs == vfs]
    else:
        found = [info for info in infos if info.address == address]
    found.sort(key=lambda info: info.state is not SocketState.LISTEN)
    return [(info.inode, info.type.kernel) for info in found]


def bound_type(address: UnixAddress, exclude: SocketType | None = None) -> SocketType | None:
    """The type of a socket bound at `address` (another than `exclude`), if any."""
    for _inode, kernel_type in _entries_for(address):
        try:
            found = SocketType.from_kernel(kernel_type)
        except ValueError:
            continue
        if found is not exclude:
            return found
    return None


def bound_owners(address: UnixAddress) -> str | None:
    """'pid 123 (redis-server)' for the processes holding a socket bound at `address`."""
    inodes = {inode for inode, _ in _entries_for(address)}
    if not inodes:
        return None
    triples, _facts = walk_socket_fds(inodes)
    pids = set(triples[1::3])
    found = sorted({f"pid {pid} ({escape_text(process_command(pid))})" for pid in pids})
    return ", ".join(found) if found else None


def is_bound(address: UnixAddress, *, listening: bool | None = None) -> bool:
    """Is a socket bound at `address` (and listening, if asked)? Reads /proc/net/unix,
    so unlike a test connect() it leaves no stray connection on the server."""
    if address.kind is AddressKind.PATHNAME and not os.path.exists(address.path):
        return False
    wanted = _wanted_names(address)
    return any(
        e.name in wanted and (listening is None or e.listening == listening)
        for e in read_proc_net_unix()
    )


# -- liveness of a socket file -------------------------------------------------------------
class Liveness(enum.Enum):
    """What a test connect() proved about the socket file at a path."""

    LIVE = "live"  #: a socket is bound to the file's inode: never replace it
    STALE = "stale"  #: no socket is bound to the file's inode: safe to replace
    UNKNOWN = "unknown"  #: not proven either way: never replace, never call it stale
    GONE = "gone"  #: nothing at the path (any more)


_EVERY_TYPE: Final = tuple(SocketType)
_CONNECTING_TYPES: Final = (SocketType.STREAM, SocketType.SEQPACKET)

#: (probe type, errno of connect(), 0 for success) -> (verdict, why). Kernel functions
#: cited are in net/unix/af_unix.c. Anything not in the table is UNKNOWN: udskit never
#: replaces or calls stale what it has not proven dead.
LIVENESS_TABLE: Final[Mapping[tuple[SocketType, int], tuple[Liveness, str]]] = {
    **{
        (t, errno.ENOENT): (Liveness.GONE, "the path names nothing (removed meanwhile)")
        for t in _EVERY_TYPE
    },
    **{
        (t, errno.ENOTDIR): (Liveness.GONE, "a directory on the way is a file now")
        for t in _EVERY_TYPE
    },
    **{
        (t, errno.EACCES): (
            Liveness.UNKNOWN,
            "no write permission on the file (unix_find_bsd asks before looking for a "
            "socket), or an LSM refused after finding one: not proven stale",
        )
        for t in _EVERY_TYPE
    },
    **{
        (t, errno.EPROTOTYPE): (
            Liveness.LIVE,
            "a socket of another type is bound to the inode, listening or not yet",
        )
        for t in _EVERY_TYPE
    },
    (SocketType.DGRAM, 0): (
        Liveness.LIVE,
        "a datagram socket is bound there; connecting one made no connection on it",
    ),
    (SocketType.DGRAM, errno.ECONNREFUSED): (
        Liveness.STALE,
        "unix_find_bsd found no socket bound to the inode (a datagram connect is "
        "refused for nothing else once the file is known to be a socket)",
    ),
    (SocketType.DGRAM, errno.EPERM): (
        Liveness.LIVE,
        "a datagram socket is bound there and connected to another peer "
        "(unix_may_send); a socket inode cannot be made immutable, the other EPERM",
    ),
    **{
        (t, 0): (Liveness.LIVE, "a listener accepted the connection (one was made!)")
        for t in _CONNECTING_TYPES
    },
    **{
        (t, errno.EAGAIN): (Liveness.LIVE, "a listener is there with a full backlog")
        for t in _CONNECTING_TYPES
    },
    **{
        (t, errno.ECONNREFUSED): (
            Liveness.UNKNOWN,
            "no socket bound, or one bound that does not listen yet (a server between "
            "bind and listen, unix_stream_connect): only a datagram probe tells them apart",
        )
        for t in _CONNECTING_TYPES
    },
}


def judge_liveness(probe_type: SocketType, err: int, *, is_socket: bool = True) -> Liveness:
    """Pure: the verdict of a test connect() of type `probe_type` that ended in `err`
    (0 for success) on a path whose file `is_socket` (a regular file answers
    ECONNREFUSED too, and is not a stale socket). See LIVENESS_TABLE."""
    verdict, _why = LIVENESS_TABLE.get((probe_type, err), (Liveness.UNKNOWN, ""))
    if verdict is Liveness.STALE and not is_socket:
        return Liveness.UNKNOWN
    return verdict


def probe_liveness(path: str | bytes, probe_type: SocketType = SocketType.DGRAM) -> Liveness:
    """Is a socket bound behind the socket file at `path`? One non-blocking connect()
    of `probe_type`, judged by `judge_liveness`.

    The default datagram probe is the one to use: it never makes a connection on a live
    server (unix_dgram_connect only records a peer), sees sockets bound from another
    network namespace (which sock_diag cannot), and its ECONNREFUSED proves that no
    socket holds the inode. The path is followed like connect() follows it; a caller
    that will unlink must compare the inode it probed with the one it removes.
    """
    sock = socket.socket(
        socket.AF_UNIX, probe_type.kernel | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
    )
    try:
        err = sock.connect_ex(path)
    finally:
        sock.close()
    is_socket = True
    if judge_liveness(probe_type, err) is Liveness.STALE:
        try:
            is_socket = stat.S_ISSOCK(os.stat(path).st_mode)
        except OSError:
            return Liveness.GONE
    return judge_liveness(probe_type, err, is_socket=is_socket)
