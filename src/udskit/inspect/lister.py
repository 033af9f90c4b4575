"""I/O: every unix socket on the machine, with its peer, queues, owners and file.

`list_sockets()` asks the kernel over netlink sock_diag (falling back on
/proc/net/unix, and saying why, where netlink is not there), reads /proc/*/fd once
for the owning processes, joins every socket to its peer so that "who talks to whom"
is one look, and checks each socket file against the path it was bound at (a file
renamed or deleted since bind leaves a socket nobody can reach by that name).

`find_stale_files()` finds the opposite: socket files with no socket behind them, the
debris that makes the next bind() fail with EADDRINUSE. `bound_socket()` answers
"which socket is bound to this file, and who holds it" for error messages.

Sockets of other network namespaces are invisible here (sock_diag and /proc/net/unix
both show the caller's namespace only).
"""

from __future__ import annotations

import fnmatch
import gc
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Final, NamedTuple, final

from udskit.address import AddressKind, UnixAddress, format_address, parse_address
from udskit.inspect.listing import (
    Connection,
    FileState,
    Listing,
    SocketFile,
    SocketFilter,
    Source,
    StaleFile,
    UnixSocket,
)
from udskit.inspect.owners import SocketOwner, read_proc_net_unix, scan_socket_owners
from udskit.netlink import dump_unix_sockets, query_unix_socket
from udskit.procnet import info_from_proc_entry
from udskit.sockdiag import (
    KERNEL_FIELDS,
    Show,
    SockDiagError,
    SocketState,
    UnixSocketInfo,
    VfsInode,
)
from udskit.socktype import SocketType

__all__ = [
    "Connection",
    "FileState",
    "KernelView",
    "Listing",
    "SocketFile",
    "SocketFilter",
    "Source",
    "StaleFile",
    "UnixSocket",
    "bound_socket",
    "bound_socket_at",
    "check_socket_file",
    "dump_unix_sockets",
    "find_stale_files",
    "list_sockets",
    "open_connections",
    "query_unix_socket",
    "read_kernel_view",
]

#: Where socket files usually live; `find_stale_files` also looks next to every bound one.
STALE_ROOTS: Final = ("/run", "/var/run", "/tmp", "/var/tmp", "/dev/shm")


def read_proc_sockets() -> list[UnixSocketInfo]:
    """The fallback: /proc/net/unix, with the fields it lacks left None."""
    infos = (info_from_proc_entry(entry) for entry in read_proc_net_unix())
    return [info for info in infos if info is not None]


def _kernel_view(
    source: Source | None, show: Show
) -> tuple[list[UnixSocketInfo], Source, str | None]:
    if source is Source.PROC:
        return read_proc_sockets(), Source.PROC, None
    try:
        return dump_unix_sockets(show), Source.NETLINK, None
    except (OSError, SockDiagError) as err:
        if source is Source.NETLINK:
            raise
        why = os.strerror(err.errno) if err.errno else str(err)
        note = (
            f"netlink sock_diag is not available ({why}); read /proc/net/unix instead: "
            "no peers, queues, uids or file checks, and NUL bytes in abstract names "
            "show as '@'"
        )
        return read_proc_sockets(), Source.PROC, note


# -- filters ---------------------------------------------------------------------------
class _Matcher:
    """SocketFilter's address pattern, compiled once."""

    def __init__(self, pattern: str) -> None:
        self.regex: re.Pattern[str] | None = None
        self.address: UnixAddress | None = None
        self.file: tuple[int, int] | None = None
        self.absolute: bytes | None = None
        if any(c in pattern for c in "*?["):
            self.regex = re.compile(fnmatch.translate(pattern))
            return
        self.address = parse_address(pattern)
        if self.address.kind is AddressKind.PATHNAME:
            path = self.address.path
            self.absolute = os.fsencode(os.path.abspath(path))
            try:
                st = os.stat(path)
            except OSError:
                return
            if stat.S_ISSOCK(st.st_mode):
                self.file = (st.st_dev, st.st_ino)

    def __call__(self, info: UnixSocketInfo) -> bool:
        if self.regex is not None:
            if self.regex.match(format_address(info.address)) is not None:
                return True
            # A glob a shell expanded holds the raw name, not its escaped notation.
            raw = info.address
            return raw.is_pathname and self.regex.match(os.fsdecode(raw.name)) is not None
        address = info.address
        if address == self.address:
            return True
        if address.kind is not AddressKind.PATHNAME:
            return False
        vfs = info.vfs
        if self.file is not None and vfs is not None and (vfs.dev, vfs.ino) == self.file:
            return True
        return address.name == self.absolute


def _prefilter(infos: list[UnixSocketInfo], where: SocketFilter) -> list[UnixSocketInfo]:
    """The part of the filter that needs no process scan."""
    matchers = [_Matcher(pattern) for pattern in where.patterns]
    kept: list[UnixSocketInfo] = []
    for info in infos:
        if where.listening and info.state is not SocketState.LISTEN:
            continue
        if where.types and info.type not in where.types:
            continue
        if where.abstract and info.address.kind is not AddressKind.ABSTRACT:
            continue
        if matchers and not any(match(info) for match in matchers):
            continue
        kept.append(info)
    return kept


def _held_by(sock: UnixSocket, where: SocketFilter) -> bool:
    if where.pids and not any(p.pid in where.pids for p in sock.processes):
        return False
    if where.uids:
        return sock.uid in where.uids or any(p.uid in where.uids for p in sock.processes)
    return True


# -- socket files ----------------------------------------------------------------------
def _roots_of(owners: Sequence[SocketOwner]) -> list[str]:
    """Our root, then the root of a process holding the socket (a chroot or container)."""
    roots = [""]
    if owners:
        roots.append(f"/proc/{owners[0].pid}/root")
    return roots


def _same_file(path: str, vfs: VfsInode) -> bool | None:
    """True if `path` is the socket's file, False if it is another, None if nothing is there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (vfs.dev, vfs.ino)


def _renamed_to(directory: str, vfs: VfsInode) -> str | None:
    """The name the socket file has now in `directory`, if it is still there."""
    try:
        with os.scandir(directory or "/") as entries:
            for entry in entries:
                # d_ino from getdents: no stat() unless the inode number matches.
                if entry.inode() == vfs.ino and _same_file(entry.path, vfs):
                    return entry.path
    except OSError:
        return None
    return None


def check_socket_file(
    address: UnixAddress, vfs: VfsInode | None, owners: Sequence[SocketOwner] = ()
) -> SocketFile:
    """Is the file a pathname socket was bound to still at its path?

    Compares UNIX_DIAG_VFS with lstat() of the path, in our root and then in the root
    of a process holding the socket; looks for a renamed file in the same directory.
    """
    path = address.path
    if vfs is None or not path.startswith("/"):
        # A relative name was resolved against the binder's cwd at bind time, which
        # nobody remembers; guessing would mark live sockets deleted.
        return _UNKNOWN_FILE
    roots = _roots_of(owners)
    occupied = False
    for root in roots:
        same = _same_file(root + path, vfs)
        if same:
            return _PRESENT_FILE
        occupied = occupied or same is False
    for root in roots:
        moved = _renamed_to(root + os.path.dirname(path), vfs)
        if moved is not None:
            return SocketFile(FileState.RENAMED, moved[len(root) :])
    return _REPLACED_FILE if occupied else _DELETED_FILE


_PRESENT_FILE: Final = SocketFile(FileState.PRESENT)
_UNKNOWN_FILE: Final = SocketFile(FileState.UNKNOWN)
_DELETED_FILE: Final = SocketFile(FileState.DELETED)
_REPLACED_FILE: Final = SocketFile(FileState.REPLACED)


# -- the listing -----------------------------------------------------------------------
@final
class KernelView(NamedTuple):
    """What the kernel says, before any process is looked at."""

    #: Every socket of the namespace (peers and clients are looked up here).
    infos: list[UnixSocketInfo]
    #: Those the filter keeps, as far as the kernel's facts alone can tell.
    kept: list[UnixSocketInfo]
    by_inode: dict[int, UnixSocketInfo]
    source: Source
    #: Why /proc/net/unix was read instead of sock_diag (None when netlink worked).
    note: str | None


def read_kernel_view(
    where: SocketFilter, *, meminfo: bool = False, source: Source | None = None
) -> KernelView:
    """Every unix socket from sock_diag (or /proc/net/unix), prefiltered by `where`."""
    show = Show.default() | Show.MEMINFO if meminfo else Show.default()
    infos, used, note = _kernel_view(source, show)
    by_inode = {info.inode: info for info in infos}
    kept = _prefilter(infos, where) if where.needs_prefilter else infos
    return KernelView(infos, kept, by_inode, used, note)


@contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """Pause the cyclic GC: a listing makes ~5 tuples per socket and no cycles, and on
    20,000 sockets the collector's walks over the growing heap cost 15% of the run."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def list_sockets(
    where: SocketFilter | None = None,
    *,
    processes: bool = True,
    meminfo: bool = False,
    connections: bool = False,
    source: Source | None = None,
    owners: Callable[[], Mapping[int, tuple[SocketOwner, ...]]] | None = None,
) -> Listing:
    """Every unix socket (that `where` keeps), with peers, queues, owners and files.

    `owners` provides the socket owners when they are needed (after the kernel's view
    is read); by default `scan_socket_owners`. `udskit ls` passes a scan it started
    earlier in a child process (`owners_from_background`).

    `processes=False` skips the scan of /proc/*/fd (the slow part on busy hosts).
    `source=Source.PROC` reads /proc/net/unix even where sock_diag works;
    `source=Source.NETLINK` raises instead of falling back.
    """
    with _no_cycle_collection():
        return _list_sockets(
            where or SocketFilter(),
            processes,
            meminfo,
            connections,
            source,
            owners or scan_socket_owners,
        )


def _list_sockets(
    where: SocketFilter,
    processes: bool,
    meminfo: bool,
    connections: bool,
    source: Source | None,
    scan_owners: Callable[[], Mapping[int, tuple[SocketOwner, ...]]],
) -> Listing:
    view = read_kernel_view(where, meminfo=meminfo, source=source)
    infos, kept, by_inode, used, note = view
    owners = scan_owners() if processes or where.needs_owners else {}

    # One pass; every name below is local because this runs once per socket.
    files: dict[VfsInode, SocketFile] = {}
    no_owners: tuple[SocketOwner, ...] = ()
    pathname = AddressKind.PATHNAME
    owners_of = owners.get
    info_of = by_inode.get
    new = tuple.__new__  # NamedTuple's own __new__ is Python code; this is not
    kernel = KERNEL_FIELDS
    sockets: list[UnixSocket] = []
    append = sockets.append
    for info in kept:
        peer_inode = info.peer_inode
        if peer_inode is None:
            peers, peer_address = no_owners, None
        else:
            peers = owners_of(peer_inode, no_owners)
            peer = info_of(peer_inode)
            peer_address = peer.address if peer is not None else None
        address = info.address
        mine = owners_of(info.inode, no_owners)
        if address.kind is pathname:
            vfs = info.vfs
            sock_file = files.get(vfs) if vfs is not None else None
            if sock_file is None:
                sock_file = check_socket_file(address, vfs, mine)
                if vfs is not None:
                    files[vfs] = sock_file
            joined = (mine, peers, peer_address, sock_file)
            append(new(UnixSocket, info[:kernel] + joined))
        else:
            # slice + tuple are C calls; (*info, ...) builds a list first.
            append(new(UnixSocket, info[:kernel] + (mine, peers, peer_address, None)))  # noqa: RUF005

    if where.needs_owners:
        sockets = [s for s in sockets if _held_by(s, where)]
    if not processes:
        sockets = [s._replace(processes=(), peer_processes=()) for s in sockets]
    found_connections = _connections(sockets, infos, owners) if connections else {}
    return Listing(tuple(sockets), used, note, found_connections)


def _connections(
    sockets: Iterable[UnixSocket],
    infos: Iterable[UnixSocketInfo],
    owners: Mapping[int, tuple[SocketOwner, ...]],
) -> dict[int, tuple[Connection, ...]]:
    """For each listener and bound datagram socket in `sockets`, its clients."""
    every = list(infos)
    by_inode = {info.inode: info for info in every}
    accepted: dict[tuple[SocketType, UnixAddress, VfsInode | None], list[UnixSocketInfo]] = {}
    pointing_at: dict[int, list[UnixSocketInfo]] = {}
    for info in every:
        if info.address.kind is not AddressKind.UNNAMED and info.state is not SocketState.LISTEN:
            # An accepted socket shares the listener's address and file
            # (unix_stream_connect copies otheru->addr and otheru->path).
            accepted.setdefault((info.type, info.address, info.vfs), []).append(info)
        if info.peer_inode is not None and info.type is SocketType.DGRAM:
            pointing_at.setdefault(info.peer_inode, []).append(info)

    def full(info: UnixSocketInfo | None) -> UnixSocket | None:
        if info is None:
            return None
        peer = by_inode.get(info.peer_inode) if info.peer_inode is not None else None
        return info._replace(
            processes=owners.get(info.inode, ()),
            peer_processes=owners.get(info.peer_inode, ()) if info.peer_inode is not None else (),
            peer_address=peer.address if peer is not None else None,
        )

    found: dict[int, tuple[Connection, ...]] = {}
    for sock in sockets:
        clients: list[Connection] = []
        if sock.state is SocketState.LISTEN:
            for server in accepted.get((sock.type, sock.address, sock.vfs), ()):
                client_inode = server.peer_inode
                client = by_inode.get(client_inode) if client_inode is not None else None
                clients.append(
                    Connection(
                        False,
                        full(server),
                        client_inode,
                        full(client),
                        owners.get(client_inode, ()) if client_inode is not None else (),
                    )
                )
            for client_inode in sock.pending:
                client = by_inode.get(client_inode)
                clients.append(
                    Connection(True, None, client_inode, full(client), owners.get(client_inode, ()))
                )
        elif sock.type is SocketType.DGRAM and sock.address.kind is not AddressKind.UNNAMED:
            for client in pointing_at.get(sock.inode, ()):
                clients.append(
                    Connection(
                        False, None, client.inode, full(client), owners.get(client.inode, ())
                    )
                )
        else:
            continue
        found[sock.inode] = tuple(clients)
    return found


# -- the file -> socket direction -----------------------------------------------------
def bound_socket(st_dev: int, st_ino: int) -> UnixSocket | None:
    """The socket bound to the file with this (st_dev, st_ino), with its processes.

    For messages like "address in use by pid 123 (nginx)". A stream listener shares its
    file with every connection it accepted; the listener is the one returned.
    """
    wanted = VfsInode(st_dev, st_ino)
    try:
        infos = dump_unix_sockets(Show.NAME | Show.VFS | Show.RQLEN | Show.UID)
    except (OSError, SockDiagError):
        return None
    candidates = [info for info in infos if info.vfs == wanted]
    if not candidates:
        return None
    order = {SocketState.LISTEN: 0, SocketState.UNCONNECTED: 1}
    best = min(candidates, key=lambda info: order.get(info.state, 2))
    owners = scan_socket_owners([best.inode]).get(best.inode, ())
    return best._replace(processes=owners, file=SocketFile(FileState.PRESENT))


def open_connections(st_dev: int, st_ino: int) -> int | None:
    """How many connections the server bound to this file has accepted and still holds
    (a stream or seqpacket listener's accepted sockets share its file, UNIX_DIAG_VFS);
    None where sock_diag cannot tell."""
    wanted = VfsInode(st_dev, st_ino)
    try:
        infos = dump_unix_sockets(Show.NAME | Show.VFS)
    except (OSError, SockDiagError):
        return None
    return sum(
        1
        for info in infos
        if info.vfs == wanted and info.state not in (SocketState.LISTEN, SocketState.UNCONNECTED)
    )


def bound_socket_at(path: str | os.PathLike[str]) -> UnixSocket | None:
    """`bound_socket` for the file at `path` (None: no file, not a socket, or nothing bound)."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISSOCK(st.st_mode):
        return None
    return bound_socket(st.st_dev, st.st_ino)


# -- stale socket files ----------------------------------------------------------------
def _walk_sockets(root: str, depth: int) -> Iterator[tuple[str, os.stat_result]]:
    """Socket files under `root`, `depth` levels down, without following symlinks."""
    try:
        entries = list(os.scandir(root))
    except OSError:
        return
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                if depth > 0:
                    yield from _walk_sockets(entry.path, depth - 1)
                continue
            if entry.is_file(follow_symlinks=False) or entry.is_symlink():
                continue
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISSOCK(st.st_mode):
            yield entry.path, st


def _candidates(paths: Sequence[str] | None, depth: int) -> Iterator[tuple[str, os.stat_result]]:
    if paths is None:
        roots = list(STALE_ROOTS)
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        if runtime:
            roots.append(runtime)
        paths = roots
    seen: set[str] = set()
    for given in paths:
        real = os.path.realpath(given)
        if real in seen:
            continue
        seen.add(real)
        try:
            st = os.lstat(given)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            yield from _walk_sockets(given, depth)
        elif stat.S_ISSOCK(st.st_mode):
            yield given, st


def find_stale_files(
    paths: Sequence[str] | None = None, *, depth: int = 3, pattern: str | None = None
) -> list[StaleFile]:
    """Socket files with no socket bound to them, under `paths` (default: STALE_ROOTS).

    A file is a candidate when no socket of ours has its (dev, ino) (UNIX_DIAG_VFS);
    each candidate is then confirmed by `probe.probe_liveness` (a datagram connect()
    that makes no connection), so a socket bound from another network namespace, or a
    file we may not connect to, is never called stale.
    `pattern` is a glob over paths (`/tmp/*.sock`).
    """
    try:
        bound: set[VfsInode] | None = {
            info.vfs for info in dump_unix_sockets(Show.VFS) if info.vfs is not None
        }
    except (OSError, SockDiagError):
        bound = None  # /proc/net/unix has no inodes: the probe decides alone
    from udskit.probe import Liveness, probe_liveness  # not at import: ls starts faster

    regex = re.compile(fnmatch.translate(pattern)) if pattern is not None else None
    stale: list[StaleFile] = []
    seen: set[tuple[int, int]] = set()
    for path, st in _candidates(paths, depth):
        key = (st.st_dev, st.st_ino)
        if key in seen:
            continue
        seen.add(key)
        if regex is not None and regex.match(path) is None:
            continue
        if bound is not None and VfsInode(*key) in bound:
            continue
        if probe_liveness(path) is Liveness.STALE:
            stale.append(StaleFile(path, st.st_dev, st.st_ino, st.st_uid, st.st_mtime))
    stale.sort(key=lambda f: f.path)
    return stale
