"""I/O: read every fact `udskit doctor` needs about an address, disturbing nobody.

Read-only, except for the one real connect at the end: each path component is
stat()ed, the sockets bound at the address come from sock_diag (UNIX_DIAG_VFS for a
file, the exact name for an abstract one), their holders from /proc/*/fd, other mount
namespaces through the holders' /proc/PID/root, other network namespaces through
/proc/PID/ns/net and that process's own /proc/PID/net/unix. The final connect opens a
socket and closes it without sending a byte (a datagram connect() sends nothing at
all), on a non-blocking socket, so a full backlog answers EAGAIN instead of hanging.
With --as-user and root, the connect runs in a child that has dropped to that user.
"""

from __future__ import annotations

import errno as errno_mod
import grp
import os
import pwd
import select
import socket
import stat
import struct
import time
from collections.abc import Iterable, Sequence
from contextlib import suppress
from typing import Final

from udskit.address import AddressKind, UnixAddress, format_address, parse_address
from udskit.doctor.facts import (
    ConnectFacts,
    Facts,
    FileFacts,
    LsmFacts,
    MountNsFacts,
    NetNsFacts,
    OwnerFacts,
    SocketFacts,
    UserFacts,
)
from udskit.errors import AddressError, UsageError
from udskit.inspect.owners import SocketOwner, scan_socket_owners
from udskit.procnet import decode_proc_net_unix
from udskit.sockdiag import Show, SockDiagError, SocketState, UnixSocketInfo, VfsInode
from udskit.socktype import SocketType

__all__ = ["gather_facts", "real_connect", "user_facts"]

_SHOW: Final = Show.NAME | Show.VFS | Show.PEER | Show.RQLEN | Show.UID
_ORDER: Final = {SocketState.LISTEN: 0, SocketState.UNCONNECTED: 1}
#: What the child of a connect as another user writes back: errno (0: worked),
#: seconds, sent (0/1), reply length (-1: none).
_RESULT: Final = struct.Struct("=idii")


# -- users ---------------------------------------------------------------------------
def user_facts(user: str | int | None = None) -> UserFacts:
    """The user to check for: a name or uid, or (None) the one running doctor."""
    if user is None:
        uid = os.geteuid()
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = str(uid)
        return UserFacts(name, uid, os.getegid(), frozenset(os.getgroups()))
    try:
        entry = (
            pwd.getpwuid(int(user))
            if isinstance(user, int) or user.isdigit()
            else pwd.getpwnam(user)
        )
    except KeyError:
        raise UsageError(f"no such user: {user!r}") from None
    groups = frozenset(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return UserFacts(entry.pw_name, entry.pw_uid, entry.pw_gid, groups)


# -- files ---------------------------------------------------------------------------
def _kind(mode: int) -> str:
    from udskit.probe import file_kind

    return file_kind(mode)


def _name_of_uid(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _name_of_gid(gid: int) -> str | None:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None


def _file_facts(path: str) -> tuple[FileFacts, os.stat_result | None]:
    """stat() as path resolution does it (following symlinks, as connect() does)."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return FileFacts(path, None), None
    except OSError as exc:
        return FileFacts(path, None, error=exc.strerror or str(exc)), None
    return (
        FileFacts(
            path,
            _kind(st.st_mode),
            st.st_mode,
            st.st_uid,
            st.st_gid,
            st.st_mtime,
            _name_of_uid(st.st_uid),
            _name_of_gid(st.st_gid),
        ),
        st,
    )


def _walk_directories(absolute: str) -> tuple[FileFacts, ...]:
    """/, then each directory down to the parent; stops at the first that is missing,
    unreadable or not a directory (nothing beyond it can be looked at)."""
    found: list[FileFacts] = []
    parent = os.path.dirname(absolute)
    current = "/"
    parts = [p for p in parent.split("/") if p]
    for i in range(len(parts) + 1):
        if i:
            current = os.path.join(current, parts[i - 1])
        facts, _st = _file_facts(current)
        found.append(facts)
        if facts.kind != "directory":
            break
    return tuple(found)


# -- processes -----------------------------------------------------------------------
def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _label(pid: int | str) -> str | None:
    for name in (f"/proc/{pid}/attr/apparmor/current", f"/proc/{pid}/attr/current"):
        try:
            with open(name, "rb") as f:
                text = f.read().rstrip(b"\0\n").decode("utf-8", "surrogateescape")
        except OSError:
            continue
        if text:
            return text
    return None


def _owner_facts(owner: SocketOwner, labels: bool) -> OwnerFacts:
    pid = owner.pid
    return OwnerFacts(
        pid,
        owner.command,
        owner.uid,
        owner.user,
        root=_readlink(f"/proc/{pid}/root"),
        netns=_readlink(f"/proc/{pid}/ns/net"),
        mntns=_readlink(f"/proc/{pid}/ns/mnt"),
        label=_label(pid) if labels else None,
    )


def _socket_facts(
    info: UnixSocketInfo,
    owners: dict[int, tuple[SocketOwner, ...]],
    labels: bool,
    by_inode: dict[int, UnixSocketInfo],
) -> SocketFacts:
    listening = info.state is SocketState.LISTEN
    peer = by_inode.get(info.peer_inode) if info.peer_inode is not None else None
    peer_address = None
    if peer is not None and peer.address.kind is not AddressKind.UNNAMED:
        peer_address = format_address(peer.address)
    return SocketFacts(
        inode=info.inode,
        type=info.type,
        state=info.state,
        pending=info.recv_q if listening else None,
        backlog=info.send_q if listening else None,
        peer_inode=info.peer_inode if info.type is SocketType.DGRAM else None,
        peer_address=peer_address if info.type is SocketType.DGRAM else None,
        uid=info.uid,
        owners=tuple(_owner_facts(o, labels) for o in owners.get(info.inode, ())),
    )


def _servers_first(infos: Iterable[UnixSocketInfo]) -> list[UnixSocketInfo]:
    """The sockets a client would reach first: a listener, then an unconnected bound
    datagram socket; a stream listener's accepted connections share its file, last."""
    return sorted(infos, key=lambda info: _ORDER.get(info.state, 2))


# -- network namespaces ----------------------------------------------------------------
def _other_netns(address: UnixAddress, own: str | None) -> list[tuple[str, list[int], bool]]:
    """(netns, inodes bound to the abstract name there, any listening) for every other
    network namespace a process is in, read from that process's /proc/PID/net/unix
    (which shows its own namespace's sockets; NULs in names show as '@')."""
    wanted = b"@" + address.name.replace(b"\0", b"@")
    one_pid: dict[str, str] = {}
    with suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            netns = _readlink(f"/proc/{entry.name}/ns/net")
            if netns is not None and netns != own:
                one_pid.setdefault(netns, entry.name)
    found = []
    for netns, pid in sorted(one_pid.items()):
        try:
            with open(f"/proc/{pid}/net/unix", "rb") as f:
                entries = decode_proc_net_unix(f.read())
        except OSError:
            continue
        matching = [e for e in entries if e.name == wanted]
        if matching:
            found.append((netns, [e.inode for e in matching], any(e.listening for e in matching)))
    return found


# -- security modules ------------------------------------------------------------------
def _read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _security_modules() -> tuple[LsmFacts, ...]:
    found = []
    if _read_text("/sys/module/apparmor/parameters/enabled") == "Y":
        found.append(LsmFacts("AppArmor", "enabled", _label("self")))
    enforce = _read_text("/sys/fs/selinux/enforce")
    if enforce is not None:
        mode = "enforcing" if enforce == "1" else "permissive"
        found.append(LsmFacts("SELinux", mode, _label("self")))
    return tuple(found)


# -- the real connect --------------------------------------------------------------------
def _attempt(
    address: UnixAddress, sock_type: SocketType, send_test: bool, timeout: float
) -> tuple[int, float, bool, int]:
    """(errno or 0, seconds, sent, reply length or -1). Non-blocking: a full backlog
    answers EAGAIN at once (unix_wait_for_peer is only for blocking sockets)."""
    sock = socket.socket(
        socket.AF_UNIX, sock_type.kernel | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
    )
    sent, reply = False, -1
    with sock:
        if sock_type is SocketType.DGRAM and send_test:
            sock.bind(b"")  # autobind, so that a reply can reach us
        start = time.perf_counter()
        try:
            sock.connect(address.to_sockaddr())
        except OSError as exc:
            return exc.errno or errno_mod.EIO, time.perf_counter() - start, False, -1
        seconds = time.perf_counter() - start
        if sock_type is SocketType.DGRAM and send_test:
            try:
                sock.send(b"")
            except OSError as exc:
                return exc.errno or errno_mod.EIO, seconds, False, -1
            sent = True
            ready, _, _ = select.select([sock], [], [], timeout)
            if ready:
                with suppress(OSError):
                    reply = len(sock.recv(65536))
    return 0, seconds, sent, reply


def _attempt_as(
    user: UserFacts, address: UnixAddress, sock_type: SocketType, send_test: bool, timeout: float
) -> tuple[int, float, bool, int]:
    """`_attempt` in a child process that has become `user` (we are root)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to the user, try, report, and leave without cleanup
        status = 0
        try:
            os.close(read_end)
            os.setgroups(sorted(user.groups))
            os.setresgid(user.gid, user.gid, user.gid)
            os.setresuid(user.uid, user.uid, user.uid)
            err, seconds, sent, reply = _attempt(address, sock_type, send_test, timeout)
            os.write(write_end, _RESULT.pack(err, seconds, int(sent), reply))
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as f:
            data = f.read()
    finally:
        os.waitpid(pid, 0)
    if len(data) != _RESULT.size:
        return errno_mod.EPERM, 0.0, False, -1
    err, seconds, sent_flag, reply = _RESULT.unpack(data)
    return err, seconds, bool(sent_flag), reply


def real_connect(
    address: UnixAddress,
    sock_type: SocketType,
    user: UserFacts | None = None,
    *,
    send_test: bool = False,
    timeout: float = 1.0,
) -> ConnectFacts:
    """Connect once and close, as `user` if given and we are root (else as ourselves,
    and the result says so)."""
    me = user_facts()
    note = None
    if user is not None and user.uid != me.uid:
        if me.uid == 0:
            err, seconds, sent, reply = _attempt_as(user, address, sock_type, send_test, timeout)
            return ConnectFacts(
                sock_type,
                f"uid {user.uid} ({user.name})",
                err or None,
                seconds,
                os.strerror(err).lower() if err else None,
                sent,
                reply if reply >= 0 else None,
            )
        note = f"only root can connect as {user.name}: this ran as {me.name}"
    err, seconds, sent, reply = _attempt(address, sock_type, send_test, timeout)
    return ConnectFacts(
        sock_type,
        f"uid {me.uid} ({me.name})",
        err or None,
        seconds,
        os.strerror(err).lower() if err else None,
        sent,
        reply if reply >= 0 else None,
        note,
    )


# -- everything ------------------------------------------------------------------------
def _dump() -> list[UnixSocketInfo] | None:
    from udskit.netlink import dump_unix_sockets

    try:
        return dump_unix_sockets(_SHOW)
    except (OSError, SockDiagError):
        return None


def _probe_bound_elsewhere(path: str) -> bool | None:
    """A socket bound to the file from another network namespace? (datagram probe)"""
    from udskit.probe import Liveness, probe_liveness

    verdict = probe_liveness(path)
    return None if verdict in (Liveness.UNKNOWN, Liveness.GONE) else verdict is Liveness.LIVE


def gather_facts(
    address: UnixAddress | str,
    *,
    wanted: SocketType | None = None,
    as_user: str | int | None = None,
    send_test: bool = False,
    connect: bool = True,
    timeout: float = 1.0,
) -> Facts:
    """Every fact about `address` that `diagnose` needs (see the module docstring).

    `connect=False` leaves out the real connect (its check is then skipped).
    """
    user = user_facts(as_user)
    text = address if isinstance(address, str) else str(address)
    if isinstance(address, str):
        try:
            address = parse_address(address)
        except AddressError as err:
            return Facts(text, None, str(err), wanted, user)
    if address.kind not in (AddressKind.PATHNAME, AddressKind.ABSTRACT):
        return Facts(text, address, None, wanted, user)

    lsm = _security_modules()
    labels = bool(lsm)
    own_netns = _readlink("/proc/self/ns/net")
    own_root = _readlink("/proc/self/root") or "/"
    infos = _dump()
    absolute: str | None = None
    directories: tuple[FileFacts, ...] = ()
    target: FileFacts | None = None
    target_st: os.stat_result | None = None
    here: list[UnixSocketInfo] = []
    by_name: list[UnixSocketInfo] = []
    if address.kind is AddressKind.PATHNAME:
        absolute = os.path.abspath(address.path)
        directories = _walk_directories(absolute)
        if all(d.kind == "directory" for d in directories):
            target, target_st = _file_facts(absolute)
        if infos is not None:
            vfs = None
            if target_st is not None and stat.S_ISSOCK(target_st.st_mode):
                vfs = VfsInode(target_st.st_dev, target_st.st_ino)
                here = [info for info in infos if info.vfs == vfs]
            names = {address.name, os.fsencode(absolute)}
            by_name = [
                info
                for info in infos
                if info.address.kind is AddressKind.PATHNAME
                and info.address.name in names
                and info.vfs != vfs
                and info.state in (SocketState.LISTEN, SocketState.UNCONNECTED)
            ]
    elif infos is not None:
        here = [info for info in infos if info.address == address]

    net_found = _other_netns(address, own_netns) if address.kind is AddressKind.ABSTRACT else []
    inodes = {info.inode for info in here} | {info.inode for info in by_name}
    inodes |= {inode for _ns, found, _l in net_found for inode in found}
    owners = scan_socket_owners(inodes) if inodes else {}

    by_inode = {info.inode: info for info in infos or ()}
    bound = tuple(_socket_facts(info, owners, labels, by_inode) for info in _servers_first(here))
    mount_ns: list[MountNsFacts] = []
    unlinked: list[SocketFacts] = []
    for info in _servers_first(by_name):
        sock = _socket_facts(info, owners, labels, by_inode)
        via = _via_root(absolute, info.vfs, sock.owners)
        if via is not None:
            mount_ns.append(MountNsFacts(sock, via[0], via[1]))
        elif target is None or not target.exists:
            unlinked.append(sock)
    net_ns = tuple(
        NetNsFacts(
            netns,
            listening,
            tuple(_owner_facts(o, labels) for inode in found for o in owners.get(inode, ())),
        )
        for netns, found, listening in net_found
    )
    bound_elsewhere = None
    if (
        absolute is not None
        and infos is not None
        and not here
        and target is not None
        and target.kind == "socket"
    ):
        bound_elsewhere = _probe_bound_elsewhere(absolute)

    connect_facts = None
    if connect:
        main = bound[0] if bound else (mount_ns[0].socket if mount_ns else None)
        sock_type = wanted or (main.type if main is not None else SocketType.STREAM)
        connect_facts = real_connect(
            address,
            sock_type,
            user if as_user is not None else None,
            send_test=send_test,
            timeout=timeout,
        )
    return Facts(
        text=text,
        address=address,
        wanted=wanted,
        user=user,
        absolute=absolute,
        directories=directories,
        target=target,
        sock_diag=infos is not None,
        bound=bound,
        bound_elsewhere=bound_elsewhere,
        mount_ns=tuple(mount_ns),
        unlinked=tuple(unlinked),
        net_ns=net_ns,
        own_netns=own_netns,
        own_root=own_root,
        lsm=lsm,
        connect=connect_facts,
    )


def _via_root(
    absolute: str | None, vfs: VfsInode | None, owners: Sequence[OwnerFacts]
) -> tuple[OwnerFacts, str] | None:
    """The holder through whose /proc/PID/root the socket's own file is at `absolute`."""
    if absolute is None or vfs is None:
        return None
    for owner in owners:
        via = f"/proc/{owner.pid}/root{absolute}"
        try:
            st = os.stat(via)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (vfs.dev, vfs.ino):
            return owner, via
    return None
