"""I/O: which capture engine `udskit dump` uses: the proxy, or eBPF, or the best one.

`--engine auto` takes eBPF where it can run (root, libbpf, clang or a cached build,
a kernel that loads the program) and otherwise the proxy, saying why in one line.
What only eBPF can capture (`--inode`, `--pid` without an address) fails instead of
falling back, since the proxy would capture something else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from udskit.capture.bpf_loader import RING_BYTES, BpfUnavailable
from udskit.capture.ebpf import EbpfDump, target_from
from udskit.capture.ebpf_records import Target
from udskit.capture.events import Selection
from udskit.errors import UsageError

__all__ = ["EBPF_BACKLOG_BYTES", "choose_engine", "selection_for"]

#: With eBPF, waiting for the pcapng writer slows no client down (the kernel keeps
#: going and the ring buffer fills), so the capture may hold more in memory before
#: it records chunks as lengths only: a burst of a few hundred MiB is kept whole.
EBPF_BACKLOG_BYTES = 512 << 20


def selection_for(
    selection: Selection,
    *,
    address: str | None = None,
    inode: int | None = None,
    pid: int | None = None,
    command: Sequence[str] | None = None,
) -> Selection:
    """The user's filters as the capture applies them: `pid` filters clients only
    with an address (without one it is the target), and `-Q` is seen from the server
    of the address, from process `pid`, or from the client end (an inode's holder,
    the command): see `Flow`."""
    if command or (address is None and inode is not None):
        return dataclasses.replace(selection, viewer=Selection.CLIENT_SIDE)
    if address is None and pid is not None:
        return dataclasses.replace(selection, pid=None, viewer=pid)
    return selection


def choose_engine(
    engine: str,
    *,
    address: str | None = None,
    inode: int | None = None,
    pid: int | None = None,
    listen: str | None = None,
    command: Sequence[str] | None = None,
    ring_bytes: int = RING_BYTES,
    say: Callable[[str], None] = lambda _line: None,
) -> EbpfDump | None:
    """A loaded EbpfDump, or None when the proxy engine is to be used (`say` is told
    why, in one line, when auto falls back). `pid` is the target only without an
    address (with one it is a filter, applied by the caller's Selection)."""
    if engine not in ("proxy", "ebpf", "auto"):
        raise UsageError(f"unknown engine {engine!r}: proxy, ebpf or auto")
    only_ebpf = inode is not None or (address is None and pid is not None) or bool(command)
    if command and (address is not None or inode is not None or listen is not None):
        raise UsageError("udskit dump -- CMD captures the command's connections: give no ADDR")
    if engine == "proxy":
        if only_ebpf:
            raise UsageError("--inode, --pid without ADDR and -- CMD need --engine ebpf (or auto)")
        return None
    if listen is not None:
        if engine == "ebpf":
            raise UsageError("--listen is for the proxy engine: the eBPF engine moves nothing")
        say("udskit dump: engine proxy (--listen given)")
        return None
    if address is not None and inode is not None:
        raise UsageError("give ADDR or --inode N, not both")
    if command:
        dump = EbpfDump(Target(pid=0), command=command, ring_bytes=ring_bytes)
    else:
        target = target_from(address, inode, pid if address is None else None)
        dump = EbpfDump(target, ring_bytes=ring_bytes)
    try:
        dump.load()
    except BpfUnavailable as exc:
        if engine == "ebpf" or only_ebpf:
            raise
        say(f"udskit dump: engine proxy, as eBPF cannot run here: {exc}")
        return None
    return dump
