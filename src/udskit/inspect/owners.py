"""I/O: which processes hold which sockets, from /proc (one pass over /proc/*/fd).

Every socket a process holds is a link `socket:[INODE]` under /proc/PID/fd (proc(5)).
`scan_socket_owners` reads them all once; a lookup per socket would read them all per
socket, which is what makes naive tools slow on hosts with thousands of sockets.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from typing import Final

from udskit.inspect.procfs import ProcNetUnixEntry, SocketOwner, decode_proc_net_unix

__all__ = [
    "SocketOwner",
    "find_socket_owners",
    "process_command",
    "read_proc_net_unix",
    "scan_socket_owners",
    "user_name",
]

_SOCKET_LINK: Final = "socket:["
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def read_proc_net_unix() -> list[ProcNetUnixEntry]:
    with open("/proc/net/unix", "rb") as f:
        return decode_proc_net_unix(f.read())


def process_command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return "?"


_USER_NAMES: dict[int, str] = {}


def user_name(uid: int) -> str:
    """The login name of `uid`, or the number as text (containers often lack entries)."""
    name = _USER_NAMES.get(uid)
    if name is None:
        import pwd

        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = str(uid)
        _USER_NAMES[uid] = name
    return name


def scan_socket_owners(
    wanted: Collection[int] | None = None,
) -> dict[int, tuple[SocketOwner, ...]]:
    """Socket inode -> the (pid, command, fd, uid, user) that hold it: one pass over /proc.

    With `wanted`, only those inodes are kept. Processes we may not look into (another
    user's, without root) and processes that exit meanwhile are skipped, as ss does.
    """
    keep = None if wanted is None else set(wanted)
    found: dict[int, tuple[SocketOwner, ...]] = {}
    readlink = os.readlink
    # tuple.__new__ skips NamedTuple's Python-level __new__: one owner per socket fd.
    new = tuple.__new__
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fd_dir = os.open(f"/proc/{name}/fd", _DIR_FLAGS)
        except OSError:
            continue
        try:
            try:
                fds = os.listdir(fd_dir)
            except OSError:
                continue
            pid = int(name)
            command: str | None = None
            uid: int | None = None
            user: str | None = None
            for fd in fds:
                # readlinkat() on the directory fd: no path walk per descriptor.
                try:
                    target = readlink(fd, dir_fd=fd_dir)
                except OSError:
                    continue
                if not target.startswith(_SOCKET_LINK):
                    continue
                inode = int(target[8:-1])
                if keep is not None and inode not in keep:
                    continue
                if command is None:
                    command = process_command(pid)
                    try:
                        uid = os.fstat(fd_dir).st_uid
                        user = user_name(uid)
                    except OSError:
                        uid = user = None
                owner = new(SocketOwner, (pid, command, int(fd), uid, user))
                before = found.get(inode)
                found[inode] = (owner,) if before is None else (*before, owner)
        finally:
            os.close(fd_dir)
    return found


def find_socket_owners(inodes: Collection[int]) -> dict[int, list[SocketOwner]]:
    """For each socket inode, the (pid, command, fd) that hold it. Unreadable pids skipped."""
    if not inodes:
        return {}
    return {inode: list(owners) for inode, owners in scan_socket_owners(inodes).items()}
