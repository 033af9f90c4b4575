"""I/O: the relay's event loop, a thin layer over epoll(7).

Why not asyncio: a relay does almost nothing per event (one recv and one send, or two
splices), so the loop's own cost per event decides the request rate. Here one readiness
event is one dict lookup and one call; asyncio adds Handle objects, a ready queue and a
transport per socket. Level-triggered, so a handler may do one round of work and rely
on being called again.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import select
import threading
import time
from collections.abc import Callable
from typing import Final, final

Handler = Callable[[int], None]

IN: Final = select.EPOLLIN
OUT: Final = select.EPOLLOUT
#: Reported whether asked for or not (epoll_ctl(2)).
HUP: Final = select.EPOLLHUP
ERR: Final = select.EPOLLERR
_PARKED: Final = -1


@final
class Timer:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


@final
class Loop:
    """epoll + timers + a wake-up pipe so that another thread can stop it."""

    def __init__(self) -> None:
        self.epoll = select.epoll()
        self.handlers: dict[int, Handler] = {}
        self._masks: dict[int, int] = {}
        self._timers: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.stopping = False
        self.thread: threading.Thread | None = None  # the one in run(), if any
        self.register(self._wake_r, IN, self._on_wake)

    # -- registration ------------------------------------------------------------------
    def register(self, fd: int, mask: int, handler: Handler) -> None:
        self.epoll.register(fd, mask)
        self.handlers[fd] = handler
        self._masks[fd] = mask

    def modify(self, fd: int, mask: int) -> None:
        current = self._masks.get(fd)
        if current == mask:
            return
        if current == _PARKED:
            if not mask:
                return
            self.epoll.register(fd, mask)
        else:
            self.epoll.modify(fd, mask)
        self._masks[fd] = mask

    def park(self, fd: int) -> None:
        """Take `fd` out of epoll, keeping its handler, until modify() asks for events.

        EPOLLHUP is reported whatever the mask (epoll_ctl(2)); a socket whose peer has
        gone while we do not want to read it yet would wake the loop for ever.
        """
        if fd in self._masks and self._masks[fd] != _PARKED:
            self.epoll.unregister(fd)
            self._masks[fd] = _PARKED

    def unregister(self, fd: int) -> None:
        if self.handlers.pop(fd, None) is not None and self._masks.pop(fd) != _PARKED:
            with contextlib.suppress(OSError, ValueError):
                self.epoll.unregister(fd)

    # -- timers ---------------------------------------------------------------------------
    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(time.monotonic() + delay, callback)
        heapq.heappush(self._timers, (timer.when, next(self._seq), timer))
        return timer

    def _run_timers(self) -> float:
        """Run due timers; return the poll timeout until the next one (-1: none)."""
        timers = self._timers
        now = time.monotonic()
        while timers:
            when, _seq, timer = timers[0]
            if timer.cancelled:
                heapq.heappop(timers)
                continue
            if when > now:
                return when - now
            heapq.heappop(timers)
            timer.callback()
        return -1.0

    # -- running --------------------------------------------------------------------------
    def run(self, until: Callable[[], bool] | None = None) -> None:
        """Dispatch events until stop() or until `until()` turns true."""
        poll = self.epoll.poll
        handlers = self.handlers
        self.thread = threading.current_thread()
        try:
            while not self.stopping:
                timeout = self._run_timers() if self._timers else -1.0
                if until is not None and until():
                    return
                for fd, events in poll(timeout):
                    handler = handlers.get(fd)
                    if handler is not None:
                        handler(events)
                if self.stopping:
                    return
        finally:
            self.thread = None

    def stop(self) -> None:
        """Ask the loop to return; safe from any thread and from signal handlers."""
        self.stopping = True
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")

    def _on_wake(self, _events: int) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        self.epoll.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.handlers.clear()
        self._masks.clear()
