"""I/O: the process's umask, read without changing it and changed only with stops held.

umask(2) is process-wide and has no "get": the classic read, `old = os.umask(x);
os.umask(old)`, sets a wrong mask for a moment (a thread creating a file then gets it)
and, when a Ctrl-C lands between the two calls, keeps it. A library must leave its
host process as it found it: a long-running program that catches KeyboardInterrupt
once had every later directory born mode 0000 after an interrupted `listen --mode`
(seen as EACCES for other users in a test process that carried on). So the mask is
read from /proc/self/status, and set only with the stop signals blocked.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from udskit.signals import signals_held

__all__ = ["current_umask", "umask_as"]


def current_umask() -> int:
    """The umask, from the `Umask:` line of /proc/self/status (Linux 4.7 and later)."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    # Without /proc: the set-and-restore read, with stops held so it cannot stay set.
    with signals_held():
        old = os.umask(0o022)
        os.umask(old)
    return old


@contextmanager
def umask_as(mask: int) -> Iterator[None]:
    """Files made in the block are born with `mask`; the old mask is back after, also
    when a stop signal arrives inside (it is delivered after the restore). Keep the
    block short: one bind() or open(), nothing that waits."""
    with signals_held():
        old = os.umask(mask)
        try:
            yield
        finally:
            os.umask(old)
