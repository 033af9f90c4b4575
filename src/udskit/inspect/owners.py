"""I/O: which processes hold which sockets, as `SocketOwner` records.

The walk over /proc/*/fd itself is in `udskit.inspect.fdscan` (kept free of heavy
imports so that `udskit ls` can fork it first thing); this module turns its raw
result into records. The low-level readers are in `udskit.procfs`.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Collection

from udskit.inspect.fdscan import BackgroundFdScan
from udskit.procfs import (
    ProcessFacts,
    RawScan,
    process_command,
    read_proc_net_unix,
    user_name,
    walk_socket_fds,
)
from udskit.sockdiag import SocketOwner

__all__ = [
    "SocketOwner",
    "find_socket_owners",
    "owners_from_background",
    "owners_from_scan",
    "process_command",
    "read_proc_net_unix",
    "scan_socket_owners",
    "user_name",
]


def _owners_from(
    triples: array[int], facts: ProcessFacts, keep: Collection[int] | None = None
) -> dict[int, tuple[SocketOwner, ...]]:
    found: dict[int, tuple[SocketOwner, ...]] = {}
    get = found.get
    # tuple.__new__ skips NamedTuple's Python-level __new__: one owner per socket fd.
    new = tuple.__new__
    it = iter(triples)
    for inode, pid, fd in zip(it, it, it, strict=True):
        if keep is not None and inode not in keep:
            continue
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
    return _owners_from(*walk_socket_fds(None if wanted is None else set(wanted)))


def find_socket_owners(inodes: Collection[int]) -> dict[int, list[SocketOwner]]:
    """For each socket inode, the (pid, command, fd) that hold it. Unreadable pids skipped."""
    if not inodes:
        return {}
    return {inode: list(owners) for inode, owners in scan_socket_owners(inodes).items()}


def owners_from_scan(
    scan: RawScan, wanted: Collection[int] | None = None
) -> dict[int, tuple[SocketOwner, ...]]:
    """Socket inode -> its owners, from a scan's raw result (only `wanted`, if given)."""
    return _owners_from(*scan, wanted)


def owners_from_background(
    scan: BackgroundFdScan,
) -> Callable[[], dict[int, tuple[SocketOwner, ...]]]:
    """The owners provider for `list_sockets(owners=...)` from a scan started earlier."""

    def provide() -> dict[int, tuple[SocketOwner, ...]]:
        return _owners_from(*scan.result())

    return provide
