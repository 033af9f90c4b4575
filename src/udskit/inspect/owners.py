"""I/O: which processes hold which sockets, from /proc (one pass over /proc/*/fd)."""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass
from typing import final

from udskit.inspect.procfs import ProcNetUnixEntry, decode_proc_net_unix, socket_inode_of_link


@final
@dataclass(frozen=True, slots=True)
class SocketOwner:
    pid: int
    command: str
    fd: int

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.command})"


def read_proc_net_unix() -> list[ProcNetUnixEntry]:
    with open("/proc/net/unix", "rb") as f:
        return decode_proc_net_unix(f.read())


def process_command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return "?"


def find_socket_owners(inodes: Collection[int]) -> dict[int, list[SocketOwner]]:
    """For each socket inode, the (pid, command, fd) that hold it. Unreadable pids skipped."""
    wanted = set(inodes)
    found: dict[int, list[SocketOwner]] = {}
    if not wanted:
        return found
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                inode = socket_inode_of_link(os.readlink(f"{fd_dir}/{fd}"))
            except OSError:
                continue
            if inode in wanted:
                found.setdefault(inode, []).append(SocketOwner(pid, process_command(pid), int(fd)))
    return found
