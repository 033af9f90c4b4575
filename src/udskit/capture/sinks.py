"""I/O: where captured events go: a pcapng file, text lines on a stream, or both.

`DumpTap` is the relay's `Tap` for `udskit dump`: it applies the user's selection
(`--pid`, `-c`, `-s`), feeds the pcapng encoder straight from the engine's buffer
(no `Event` is built on the `-w`-only path: the per-chunk path is the hot one) and
builds events only when a printer wants them. The relay calls it from its loop thread;
a lock keeps two writers from interleaving if an engine ever calls from several.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import BinaryIO, Final, final

from udskit.capture.events import Event, Selection
from udskit.capture.pcapng import PcapngEncoder
from udskit.capture.printers import Format, render
from udskit.errors import UsageError
from udskit.tap import ClientInfo, ConnectionInfo, Direction

__all__ = ["DumpTap", "LineSink", "PcapngSink"]

#: Bytes gathered before one write(2): 256 KiB is a guess that keeps syscalls rare at
#: redis-benchmark rates while a killed dump loses little; see benchmarks/dump.py.
FLUSH_BYTES: Final = 256 * 1024


@final
class PcapngSink:
    """A pcapng file being written. `flush()` writes what is gathered; `close()` ends it.

    A dump killed with -9 leaves a file cut at a block boundary of the last flush,
    which Wireshark and `udskit dump -r` both read.
    """

    def __init__(self, target: str | BinaryIO, server_port: int | None = None) -> None:
        self.encoder = PcapngEncoder(server_port)
        self._own = isinstance(target, str)
        if isinstance(target, str):
            try:
                self._file: BinaryIO = open(target, "wb")  # noqa: SIM115 - closed in close()
            except OSError as exc:
                raise UsageError(
                    f"cannot write {target}: {os.strerror(exc.errno or 0).lower()}; "
                    "pick a writable path for -w"
                ) from None
        else:
            self._file = target
        self.encoder.header()
        self.flush()

    def flush(self) -> None:
        out = self.encoder.out
        if out:
            self._file.write(out)
            out.clear()
            self._file.flush()

    def close(self) -> None:
        self.flush()
        if self._own:
            self._file.close()


@final
class LineSink:
    """Events rendered as text lines onto a byte stream, flushed per event so that a
    person (or `grep`) sees each one as it happens."""

    def __init__(self, stream: BinaryIO, fmt: Format = Format.LINE, utc: bool = False) -> None:
        self.stream = stream
        self.fmt = fmt
        self.utc = utc

    def __call__(self, event: Event) -> None:
        text = "\n".join(render(event, self.fmt, self.utc)) + "\n"
        self.stream.write(text.encode("utf-8", errors="surrogateescape"))
        self.stream.flush()


@final
class DumpTap:
    """The relay's tap for `udskit dump`: select, record, print.

    `on_limit` is called once, from the engine's thread, when `-c` data events have
    been recorded; the caller stops the engine from there. Errors writing the file are
    kept in `error` (a tap must not raise) and reported by the caller.
    """

    def __init__(
        self,
        path: str,
        selection: Selection | None = None,
        pcapng: PcapngSink | None = None,
        printer: Callable[[Event], None] | None = None,
        on_limit: Callable[[], None] | None = None,
    ) -> None:
        self.path = path
        self.selection = selection = selection or Selection()
        self.pcapng = pcapng
        self.printer = printer
        self.on_limit = on_limit
        self.data_events = 0
        self.error: BaseException | None = None
        self._clients: dict[int, ClientInfo] = {}
        self._lock = threading.Lock()
        self._done = False
        self._snaplen = selection.snaplen
        self._encoder = pcapng.encoder if pcapng is not None else None

    # -- Tap ----------------------------------------------------------------------------
    def opened(self, conn: ConnectionInfo, time_ns: int) -> None:
        client = conn.client
        if self._done or not self.selection.wants(client):
            return
        with self._lock:
            self._clients[conn.id] = client
            try:
                if self._encoder is not None:
                    self._encoder.opened(conn.id, self.path, conn.sock_type, client, time_ns)
                if self.printer is not None:
                    self.printer(Event.open(time_ns, conn.id, self.path, conn.sock_type, client))
            except Exception as exc:  # a tap must not raise: report it from the main thread
                self._fail(exc)

    def data(
        self, conn: ConnectionInfo, direction: Direction, data: bytes | memoryview, time_ns: int
    ) -> None:
        client = self._clients.get(conn.id)
        if client is None or self._done:
            return
        length = len(data)
        snaplen = self._snaplen
        if snaplen is not None and length > snaplen:
            data = data[:snaplen]
        with self._lock:
            try:
                encoder = self._encoder
                if encoder is not None:
                    encoder.data(conn.id, direction, data, length, time_ns)
                    if len(encoder.out) >= FLUSH_BYTES:
                        self.pcapng.flush()  # type: ignore[union-attr]
                if self.printer is not None:
                    self.printer(
                        Event.chunk(
                            time_ns,
                            conn.id,
                            self.path,
                            conn.sock_type,
                            client,
                            direction,
                            bytes(data),
                            length,
                        )
                    )
            except Exception as exc:
                self._fail(exc)
                return
            self.data_events += 1
            limit = self.selection.count
            if limit is not None and self.data_events >= limit:
                self._done = True
                if self.on_limit is not None:
                    self.on_limit()

    def closed(self, conn: ConnectionInfo, first: Direction | None, time_ns: int) -> None:
        client = self._clients.pop(conn.id, None)
        if client is None:
            return
        with self._lock:
            try:
                if self._encoder is not None:
                    self._encoder.closed(conn.id, first, time_ns)
                    self.pcapng.flush()  # type: ignore[union-attr]
                if self.printer is not None:
                    self.printer(
                        Event.close(time_ns, conn.id, self.path, conn.sock_type, client, first)
                    )
            except Exception as exc:
                self._fail(exc)

    # -- the end -------------------------------------------------------------------------
    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self._done = True
        if self.on_limit is not None:
            self.on_limit()

    def finish(self) -> None:
        """Close what is still open in the file (so every flow ends) and flush it."""
        with self._lock:
            if self._encoder is not None:
                import time

                now = time.time_ns()
                for conn_id in list(self._clients):
                    self._encoder.closed(conn_id, None, now)
                self._clients.clear()
            if self.pcapng is not None:
                self.pcapng.close()
