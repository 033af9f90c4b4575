"""I/O: the watchdog process itself (`python -m udskit.capture.watchdog_child`).

Its own module, apart from `capture.watchdog` (what the dump uses to start and dismiss
it): the process restores through `capture.proxy`, which imports `capture.watchdog`,
and the import graph stays free of cycles.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys
from collections.abc import Sequence
from contextlib import suppress

from udskit.capture.restoreplan import Watch, plan_watch
from udskit.capture.watchdog import DISMISS, WATCHDOG_COMM

__all__ = ["main", "watch"]


# -- the watchdog process ----------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=WATCHDOG_COMM)
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--pidfd", type=int, required=True)
    parser.add_argument("--pipe", type=int, required=True)
    parser.add_argument("path")
    args = parser.parse_args(argv)
    # In its own session already; this covers a kill -INT aimed at it by hand too.
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    # Started with the dump's stop signals blocked (see Watchdog.start): SIGTERM works.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
    with suppress(OSError), open("/proc/self/comm", "w") as comm:
        comm.write(WATCHDOG_COMM)
    # Imported now, while the dump runs: a restore must not wait for imports.
    from udskit.capture.proxy import dump_record, restore_leftovers
    from udskit.errors import UdskitError
    from udskit.safetext import safe_line

    if watch(args.pidfd, args.pipe) is Watch.LEAVE:
        return 0
    say = f"udskit dump: (watchdog) the dump (pid {args.pid}) died without restoring"
    try:
        if dump_record(args.path) is None:
            return 0  # it died after its own restore, just before its word: all is done
        notes = restore_leftovers(args.path)
    except (UdskitError, OSError) as err:
        _say(safe_line(f"{say}; the restore failed: {err}"))
        return 1
    for note in notes:
        _say(safe_line(f"{say}: {note}"))
    return 0


def watch(pidfd: int, pipe: int) -> Watch:
    """Wait until the dump dismisses us (LEAVE) or exits without a word (RESTORE)."""
    os.set_blocking(pipe, False)
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    poller.register(pipe, select.POLLIN)
    said = b""
    dismissed = exited = False
    while True:
        decision = plan_watch(dismissed=dismissed, dump_exited=exited)
        if decision is not Watch.WAIT:
            return decision
        for fd, _events in poller.poll():
            if fd == pidfd:
                exited = True
                poller.unregister(pidfd)
        # The pipe is read after every wake-up, also the one that says the dump exited:
        # a word written just before a clean exit is in it by then.
        while True:
            try:
                chunk = os.read(pipe, 64)
            except BlockingIOError:
                break
            if not chunk:
                with suppress(KeyError):
                    poller.unregister(pipe)  # closed: only the pidfd can tell us more
                break
            said += chunk
        dismissed = DISMISS in said


def _say(line: str) -> None:
    with suppress(OSError):
        os.write(2, (line + "\n").encode("utf-8", errors="backslashreplace"))


if __name__ == "__main__":
    sys.exit(main())
