"""I/O: which processes hold which sockets, from /proc (one pass over /proc/*/fd).

Every socket a process holds is a link `socket:[INODE]` under /proc/PID/fd (proc(5)).
`scan_socket_owners` reads them all once; a lookup per socket would read them all per
socket, which is what makes naive tools slow on hosts with thousands of sockets.
"""

from __future__ import annotations

import gc
import marshal
import os
import signal
from array import array
from collections.abc import Collection
from contextlib import suppress
from typing import Final

from udskit.inspect.procfs import ProcNetUnixEntry, SocketOwner, decode_proc_net_unix

__all__ = [
    "BackgroundOwnerScan",
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


#: Per process holding sockets: (command, uid, user name).
ProcessFacts = dict[int, tuple[str, int | None, str | None]]


def _walk_socket_fds(
    keep: set[int] | None, skip_pid: int | None = None
) -> tuple[array[int], ProcessFacts]:
    """One pass over /proc/*/fd: flat (inode, pid, fd) triples for every socket
    descriptor, and the facts of each process that holds one. Processes we may not look
    into (another user's, without root) and processes that exit meanwhile are skipped,
    as ss does. `skip_pid` is left out (a forked scanner holds copies of its parent's
    descriptors and would otherwise list itself as their owner)."""
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


def _owners_from(triples: array[int], facts: ProcessFacts) -> dict[int, tuple[SocketOwner, ...]]:
    found: dict[int, tuple[SocketOwner, ...]] = {}
    get = found.get
    # tuple.__new__ skips NamedTuple's Python-level __new__: one owner per socket fd.
    new = tuple.__new__
    it = iter(triples)
    for inode, pid, fd in zip(it, it, it, strict=True):
        command, uid, user = facts[pid]
        owner = new(SocketOwner, (pid, command, fd, uid, user))
        before = get(inode)
        found[inode] = (owner,) if before is None else (*before, owner)
    return found


def scan_socket_owners(
    wanted: Collection[int] | None = None,
) -> dict[int, tuple[SocketOwner, ...]]:
    """Socket inode -> the (pid, command, fd, uid, user) that hold it: one pass over /proc.

    With `wanted`, only those inodes are kept.
    """
    return _owners_from(*_walk_socket_fds(None if wanted is None else set(wanted)))


def find_socket_owners(inodes: Collection[int]) -> dict[int, list[SocketOwner]]:
    """For each socket inode, the (pid, command, fd) that hold it. Unreadable pids skipped."""
    if not inodes:
        return {}
    return {inode: list(owners) for inode, owners in scan_socket_owners(inodes).items()}


class BackgroundOwnerScan:
    """`scan_socket_owners()` run in a forked child while the caller does other work.

    `udskit ls` starts it first thing, so the scan of /proc/*/fd (the largest part of a
    listing) runs on the second CPU while the parent imports, dumps netlink and decodes.
    For single-threaded callers only: a child forked while another thread holds a lock
    can deadlock, which is why the library's list_sockets() scans in-line by default.
    The result crosses the pipe as marshal data (the raw triples and the per-process facts).
    If the child fails for any reason, result() scans in-line instead.
    """

    def __init__(self) -> None:
        self._pid = -1
        self._fd = -1
        try:
            read_end, write_end = os.pipe()
        except OSError:
            return
        try:
            pid = os.fork()
        except OSError:
            os.close(read_end)
            os.close(write_end)
            return
        if pid == 0:  # the child: scan, send, and leave without running any cleanup
            status = 1
            try:
                os.close(read_end)
                gc.disable()
                triples, facts = _walk_socket_fds(None, skip_pid=os.getpid())
                data = memoryview(marshal.dumps((triples.tobytes(), facts)))
                while data:
                    data = data[os.write(write_end, data) :]
                status = 0
            finally:
                os._exit(status)
        os.close(write_end)
        self._pid, self._fd = pid, read_end

    def close(self) -> None:
        """Stop and reap the child if result() was never asked for (an error on the way)."""
        if self._pid < 0:
            return
        os.close(self._fd)
        with suppress(ProcessLookupError):
            os.kill(self._pid, signal.SIGKILL)
        os.waitpid(self._pid, 0)
        self._pid = -1

    def result(self) -> dict[int, tuple[SocketOwner, ...]]:
        if self._pid < 0:
            return scan_socket_owners()
        chunks = []
        try:
            while chunk := os.read(self._fd, 1 << 20):
                chunks.append(chunk)
        finally:
            os.close(self._fd)
            _pid, status = os.waitpid(self._pid, 0)
            self._pid = -1
        if status != 0:
            return scan_socket_owners()
        raw, facts = marshal.loads(b"".join(chunks))
        triples = array("q")
        triples.frombytes(raw)
        return _owners_from(triples, facts)
