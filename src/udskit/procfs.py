"""I/O: the low-level readers of /proc that any part of udskit may use (proc(5)).

Below every capability: the error advice of `udskit.probe`, the relay's and the dump's
client descriptions and the lister all read these, so none of them needs to import
`udskit.inspect`. `walk_socket_fds` is the one pass over /proc/*/fd that finds which
processes hold which sockets (a lookup per socket would read them all per socket, which
is what makes naive tools slow on hosts with thousands of sockets); `process_command`
and `user_name` describe a process; `read_proc_net_unix` reads the fallback view of
unix sockets (decoded by the pure `udskit.procnet`).

Imports only os and array at module level, on purpose: `udskit ls` forks its scan
(udskit.inspect.fdscan) before importing anything heavier.
"""

from __future__ import annotations

import os
from array import array

TYPE_CHECKING = False  # typing costs ~9 ms at startup (see udskit/__init__.py)
if TYPE_CHECKING:
    from udskit.procnet import ProcNetUnixEntry

__all__ = [
    "ProcessFacts",
    "RawScan",
    "process_command",
    "read_proc_net_unix",
    "user_name",
    "walk_socket_fds",
]

_SOCKET_LINK = "socket:["
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC

#: Per process holding sockets: (command, uid, user name).
ProcessFacts = dict[int, tuple[str, "int | None", "str | None"]]
#: Flat (inode, pid, fd) triples for every socket descriptor, and the facts per process.
RawScan = tuple["array[int]", ProcessFacts]


def process_command(pid: int) -> str:
    """/proc/PID/comm: the name ss and lsof print; '?' once the process has gone."""
    try:
        # Exact bytes (surrogateescape) and only the kernel's newline removed: a name
        # is any 15 bytes a process chose (prctl PR_SET_NAME); printers escape it.
        with open(f"/proc/{pid}/comm", "rb") as f:
            raw = f.read()
    except OSError:
        return "?"
    return raw.removesuffix(b"\n").decode("utf-8", errors="surrogateescape")


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


def walk_socket_fds(keep: set[int] | None = None, skip_pid: int | None = None) -> RawScan:
    """One pass over /proc/*/fd: (inode, pid, fd) for every socket descriptor, and the
    facts of each process that holds one.

    Processes we may not look into (another user's, without root) and processes that
    exit meanwhile are skipped, as ss does. With `keep`, only those inodes are kept.
    `skip_pid` is left out (a forked scanner holds copies of its parent's descriptors
    and would otherwise list itself as their owner).
    """
    skip = str(skip_pid)
    triples = array("q")
    push = triples.extend
    facts: ProcessFacts = {}
    readlink = os.readlink
    for name in os.listdir("/proc"):
        if not name.isdigit() or name == skip:
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
            known = False
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
                push((inode, pid, int(fd)))
                if not known:
                    known = True
                    try:
                        uid: int | None = os.fstat(fd_dir).st_uid
                    except OSError:
                        uid = None
                    user = user_name(uid) if uid is not None else None
                    facts[pid] = (process_command(pid), uid, user)
        finally:
            os.close(fd_dir)
    return triples, facts


def read_proc_net_unix() -> list[ProcNetUnixEntry]:
    """/proc/net/unix, decoded: the view of unix sockets where sock_diag is missing."""
    from udskit.procnet import decode_proc_net_unix

    with open("/proc/net/unix", "rb") as f:
        return decode_proc_net_unix(f.read())
