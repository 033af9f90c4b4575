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

A signal can also arrive a moment too early. CPython's C handler only notes it; the
Python handler runs at the main thread's next bytecode. If the note is made just before
the main thread enters a blocking call (between CPython's last look and the syscall),
no EINTR comes, and an idle server sleeps in accept() with its Ctrl-C noted and never
acted on. That was seen in a soak as `listen --concurrent` still running 10 s after
SIGINT: SigPnd empty, main thread in accept4. `stops_reach_the_main_thread` closes
that window for the command line: the wakeup fd tells a watcher thread of each stop
signal, and the watcher interrupts the main thread with a harmless signal until a
stop handler has run.

This module imports only built-in modules at the top (`signal`, `select`, `time`,
`contextlib`): `udskit ls` uses it before it has imported anything heavy, and the
watcher thread must never import (a Ctrl-C that cut an import in the main thread can
leave the import lock held, and the watcher then waited on it for ever while the main
thread waited for the watcher: seen in a test of Ctrl-C at every point of start-up).
"""

from __future__ import annotations

import os
import select
import signal
import time
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
    "stop_handled",
    "stop_signals_call",
    "stops_reach_the_main_thread",
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
#: What interrupts the main thread's blocking call so that CPython runs a handler that
#: is due. SIGURG is ignored by default (a late one does nothing), and udskit never
#: makes itself a socket's owner (F_SETOWN), the only way the kernel sends it.
_KICK = signal.SIGURG
#: How often, and how long at most, the main thread is interrupted after a stop signal.
_KICK_EVERY = 0.01
_KICK_FOR = 2.0
#: Stop handlers run so far (in the main thread); the watcher stops kicking once this grows.
_handled = 0


def stop_handled() -> None:
    """Every stop handler of ours calls this first: the stop has reached Python code."""
    global _handled
    _handled += 1


def _ignore_kick(_signum: int, _frame: object) -> None:
    """The kick's only job is the EINTR; CPython then runs the handlers that are due."""


@contextmanager
def stops_reach_the_main_thread() -> Iterator[None]:
    """For the duration, a stop signal whose handler is due makes the main thread's
    blocking call return (EINTR), so the handler runs now rather than when that call
    ends (see the module's text). In the main thread only; elsewhere it does nothing.

    The wakeup fd (signal.set_wakeup_fd) receives a byte from CPython's C handler for
    each signal; a watcher thread reads it and, until a stop handler has run
    (`stop_handled`), sends the main thread SIGURG every 10 ms, for 2 s at most."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    set_up = None
    try:
        with signals_held():  # set up and taken down whole, whatever signal comes
            read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            previous_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
            previous_kick = signal.signal(_KICK, _ignore_kick)
            watcher = start_worker(
                _watch, read_end, threading.main_thread().ident, name="udskit-stop-watch"
            )
            set_up = (read_end, write_end, previous_fd, previous_kick, watcher)
        yield
    finally:
        if set_up is not None:
            # The first call blocks: a stop signal cannot cut the taking down in two
            # (it is delivered when the mask comes back, as an exception from here).
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
            try:
                read_end, write_end, previous_fd, previous_kick, watcher = set_up
                signal.set_wakeup_fd(previous_fd)
                # A byte 0 (no signal has that number) tells it to leave: a forked child
                # may hold the write end open, so no end of file would come.
                with suppress(OSError):
                    os.write(write_end, b"\0")
                watcher.join(_KICK_FOR + 1.0)
                os.close(write_end)
                if not watcher.is_alive():  # (it is a daemon: the process may still end)
                    os.close(read_end)
                signal.signal(_KICK, previous_kick)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _watch(read_end: int, main: int) -> None:
    """Read the signal numbers; after a stop signal, kick the main thread every 10 ms
    until a stop handler has run (or 2 s have passed). A byte 0, or the end, ends it."""
    poller = select.poll()
    poller.register(read_end, select.POLLIN)
    acked = _handled
    kick_until = 0.0
    while True:
        due = _handled == acked and time.monotonic() < kick_until
        if due:
            with suppress(OSError):
                signal.pthread_kill(main, _KICK)
        else:
            acked = _handled
        if not poller.poll(int(_KICK_EVERY * 1000) if due else -1):
            continue
        try:
            data = os.read(read_end, 512)
        except BlockingIOError:
            continue
        if not data or 0 in data:
            return  # the command is over
        if not STOP_SIGNALS.isdisjoint(data):  # (not our own kicks, nor a timer)
            kick_until = time.monotonic() + _KICK_FOR


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
        stop_handled()
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
