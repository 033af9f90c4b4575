"""I/O: the stop signals (SIGINT, SIGTERM, SIGHUP), and keeping them where they belong.

The kernel hands a signal sent to the process to any thread that does not block it.
CPython runs Python signal handlers only in the main thread, and only once that thread
executes bytecode again: if the kernel picks a helper thread, a main thread blocked in
accept() or epoll_wait() is not interrupted, and Ctrl-C or SIGTERM goes unheard (seen
with `udskit listen --concurrent` and an idle client, about once in ten runs of the
tests under load). Helper threads are therefore started with the stop signals blocked
(`start_worker`); a new thread inherits its creator's mask, so there is no window.
The same mask guards the steps that must not be cut in two (`signals_held`), and
helper processes die with their parent (`die_with_parent`).

This module imports only `signal` and `contextlib` at the top: `udskit ls` uses it
before it has imported anything heavy.
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager, suppress

TYPE_CHECKING = False
if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, Iterator
    from typing import Any

__all__ = [
    "STOP_SIGNALS",
    "Terminated",
    "die_with_parent",
    "signals_held",
    "start_worker",
    "stop_signals_call",
]


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM or SIGHUP so that `finally` blocks run (the
    command line's handlers raise it; the dump engines raise it again after a stop)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


#: The signals that stop a udskit command (the CLI turns them into exceptions).
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
_PR_SET_PDEATHSIG = 1


@contextmanager
def signals_held() -> Iterator[None]:
    """Block the stop signals in this thread for the duration; pending ones are
    delivered (and their handlers run) right after."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def unblock_stop_signals() -> None:
    """For `preexec_fn`, in a forked child before exec: a command started while its
    parent held the stop signals (`signals_held`, a worker thread) must still hear
    SIGTERM and Ctrl-C. One C call, no lock: safe between fork and exec."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@contextmanager
def stop_signals_call(on_signal: Callable[[int], None]) -> Iterator[None]:
    """For the duration, a stop signal calls `on_signal(signum)` instead of raising, so
    a loop can stop between two events rather than in the middle of one; the previous
    handlers come back after, also those installed before an interruption. Outside
    the main thread (where Python runs no handler) it does nothing."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        on_signal(signum)

    saved: dict[int, Any] = {}
    try:
        for stop in STOP_SIGNALS:
            saved[stop] = signal.signal(stop, handler)
        yield
    finally:
        for signum, old in saved.items():
            signal.signal(signum, old)


def start_worker(
    target: Callable[..., object], *args: Any, name: str | None = None
) -> threading.Thread:
    """Start a daemon thread running `target(*args)` with the stop signals blocked."""
    import threading

    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    with signals_held():
        thread.start()
    return thread


def die_with_parent() -> None:
    """In a forked helper: PR_SET_PDEATHSIG (prctl(2)), so that it is killed when its
    parent dies, even while it sleeps in a call that would never see an end of file;
    if the parent is already gone, leave at once."""
    import ctypes

    parent = os.getppid()
    with suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
