"""I/O: helper threads that leave the process's stop signals to the main thread.

The kernel hands a signal sent to the process to any thread that does not block it.
CPython runs Python signal handlers only in the main thread, and only once that thread
executes bytecode again: if the kernel picks a helper thread, a main thread blocked in
accept() or epoll_wait() is not interrupted, and Ctrl-C or SIGTERM goes unheard (seen
with `udskit listen --concurrent` and an idle client, about once in ten runs of the
tests under load). Helper threads are therefore started with SIGINT, SIGTERM and
SIGHUP blocked; a new thread inherits its creator's mask, so there is no window.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any, Final

__all__ = ["STOP_SIGNALS", "start_worker"]

#: The signals that stop a udskit command (the CLI turns them into exceptions).
STOP_SIGNALS: Final = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})


def start_worker(
    target: Callable[..., object], *args: Any, name: str | None = None
) -> threading.Thread:
    """Start a daemon thread running `target(*args)` with the stop signals blocked."""
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return thread
