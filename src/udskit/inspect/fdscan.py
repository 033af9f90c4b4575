"""I/O: the one pass over /proc/*/fd (`udskit.procfs.walk_socket_fds`), run in a
forked child while `udskit ls` reads netlink.

This module imports only small parts of the standard library (and udskit.signals and
udskit.procfs, which keep to the same rule), on purpose: `udskit ls` forks
`BackgroundFdScan` before it imports the rest of the lister, so the walk (the largest
part of a listing) runs on the second CPU from the first milliseconds. The records
(`SocketOwner`) are made from the raw result in `udskit.inspect.owners`.
"""

from __future__ import annotations

import gc
import marshal
import os
import signal
from array import array
from contextlib import suppress

from udskit.procfs import (
    ProcessFacts,
    RawScan,
    process_command,
    user_name,
    walk_socket_fds,
)
from udskit.signals import signals_held

__all__ = [
    "BackgroundFdScan",
    "ProcessFacts",
    "RawScan",
    "owner_texts_of",
    "process_command",
    "user_name",
    "walk_socket_fds",
]


def owner_texts_of(scan: RawScan) -> dict[int, str]:
    """Socket inode -> the JSON text of its owners (`ownerjson.owners_text`), in the
    order of the triples, which is also the order `SocketOwner` tuples are made in."""
    from udskit.inspect.ownerjson import process_texts

    triples, facts = scan
    texts: dict[int, str] = {}
    get = texts.get
    per_process: dict[int, tuple[str, str]] = {}
    around_of = per_process.get
    it = iter(triples)
    # One text per descriptor, joined per inode as owners_text() joins them: most
    # sockets have one holder, so no list per inode is made.
    for inode, pid, fd in zip(it, it, it, strict=True):
        around = around_of(pid)
        if around is None:
            around = per_process[pid] = process_texts(pid, *facts[pid])
        before = get(inode)
        if before is None:
            texts[inode] = f"{around[0]}{fd}{around[1]}"
        else:
            texts[inode] = f"{before}, {around[0]}{fd}{around[1]}"
    return texts


class BackgroundFdScan:
    """`walk_socket_fds()` run in a forked child while the caller does other work.

    For single-threaded callers only: a child forked while another thread holds a lock
    can deadlock, which is why the library's list_sockets() scans in-line by default.
    The result crosses a pipe as marshal data (the raw triples and the per-process facts).
    If the child fails for any reason, result() scans in-line instead.

    With `json_texts`, the child also writes each socket's owners as JSON text (it is
    otherwise idle while the parent reads netlink); `owner_texts` holds them after
    result(), or None if the child failed.
    """

    def __init__(
        self, *, json_texts: bool = False, registry: list[BackgroundFdScan] | None = None
    ) -> None:
        """Fork the child. With `registry`, the scan is appended to it before any
        Ctrl-C or SIGTERM can interrupt (they are blocked from the fork until then),
        so whoever cleans up the registry always finds the child."""
        self._pid = -1
        self._fd = -1
        self.owner_texts: dict[int, str] | None = None
        try:
            read_end, write_end = os.pipe2(os.O_CLOEXEC)
        except OSError:
            return
        with signals_held():
            try:
                pid = os.fork()
            except OSError:
                os.close(read_end)
                os.close(write_end)
                return
            if pid == 0:  # the child: scan, send, and leave without running any cleanup
                # Its signals stay blocked: a Ctrl-C is for the parent, which kills it.
                status = 1
                try:
                    os.close(read_end)
                    gc.disable()
                    scan = walk_socket_fds(None, skip_pid=os.getpid())
                    texts = owner_texts_of(scan) if json_texts else None
                    data = memoryview(marshal.dumps((scan[0].tobytes(), scan[1], texts)))
                    while data:
                        data = data[os.write(write_end, data) :]
                    status = 0
                finally:
                    os._exit(status)
            os.close(write_end)
            self._pid, self._fd = pid, read_end
            if registry is not None:
                registry.append(self)

    def close(self) -> None:
        """Stop and reap the child if result() was not asked for (an error on the way);
        after result(), nothing is left to do. Safe to call more than once."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
        if self._pid >= 0:
            with suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
            with signals_held():  # after SIGKILL the wait is short: let nothing cut it
                self._reap()

    def _reap(self) -> int | None:
        """The child's wait status; None if the kernel reaped it already (SIGCHLD is
        ignored in this process), in which case only the data can tell success."""
        pid, self._pid = self._pid, -1
        try:
            return os.waitpid(pid, 0)[1]
        except ChildProcessError:
            return None

    def result(self) -> RawScan:
        """The scan (after waiting for the child); scanned in-line if the child failed."""
        if self._pid < 0 and self._fd < 0:
            return walk_socket_fds()
        chunks = []
        try:
            while chunk := os.read(self._fd, 1 << 20):
                chunks.append(chunk)
        except BaseException:
            self.close()  # a Ctrl-C while we wait: the child must not outlive us
            raise
        os.close(self._fd)
        self._fd = -1
        status = self._reap()
        if status is not None and status != 0:
            return walk_socket_fds()
        try:
            raw, facts, self.owner_texts = marshal.loads(b"".join(chunks))
        except (EOFError, ValueError, TypeError):  # a child that died mid-way
            self.owner_texts = None
            return walk_socket_fds()
        triples = array("q")
        triples.frombytes(raw)
        return triples, facts
