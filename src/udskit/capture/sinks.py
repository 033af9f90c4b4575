"""I/O: where captured events go: the tap of `udskit dump` and its text sink.

`DumpTap` is the relay's `Tap` for `udskit dump`. It applies the user's selection
(`--pid`, `-c`, `-s`), records chunks for the file (a `PcapngWriter`, see
udskit.capture.pcapwriter) and builds `Event`s only when a printer wants them, such as
`LineSink`, which writes text lines to a stream. The relay engine calls a tap from its
one loop thread, so there is no lock on the per-chunk path.

`PcapngSink`, `PcapngWriter` and `writer_main` are importable from here as before the
split: the wire format is udskit.capture.writerwire, the proxy's side of the writer
udskit.capture.pcapwriter and its processes udskit.capture.writerproc.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import BinaryIO, final

from udskit.capture.events import Event, Selection
from udskit.capture.pcapwriter import PcapngSink, PcapngWriter
from udskit.capture.printers import Format, render
from udskit.capture.writerproc import writer_main
from udskit.capture.writerwire import DATA, FLUSH_BYTES, KIND_DATA
from udskit.errors import UdskitError
from udskit.safetext import safe_line
from udskit.tap import ClientInfo, ConnectionInfo, Direction

__all__ = ["DumpTap", "LineSink", "PcapngSink", "PcapngWriter", "writer_main"]


@final
class LineSink:
    """Events rendered as text lines onto a byte stream, flushed per event so that a
    person (or `grep`) sees each one as it happens."""

    def __init__(self, stream: BinaryIO, fmt: Format = Format.LINE, utc: bool = False) -> None:
        self.stream = stream
        self.fmt = fmt
        self.utc = utc

    def __call__(self, event: Event) -> None:
        # Each field a peer controls is escaped by the printers; safe_line is the guard.
        text = "\n".join([safe_line(line) for line in render(event, self.fmt, self.utc)]) + "\n"
        self.stream.write(text.encode("utf-8", errors="surrogateescape"))
        self.stream.flush()


@final
class DumpTap:
    """The relay's tap for `udskit dump`: select, record, print.

    `on_limit` is called once, from the engine's thread, when `-c` data events have
    been recorded or recording failed; the caller stops the engine from there. Errors
    are kept in `error` (a tap must not raise) and reported by the caller.
    """

    def __init__(
        self,
        path: str,
        selection: Selection | None = None,
        pcapng: PcapngWriter | None = None,
        printer: Callable[[Event], None] | None = None,
        on_limit: Callable[[], None] | None = None,
    ) -> None:
        self.path = path
        #: Name each connection by its own `listen` address instead of `path` (the
        #: eBPF engine's `-- CMD`, whose connections go to different sockets).
        self.path_per_connection = False
        self._paths: dict[int, str] = {}
        self.selection = selection = selection or Selection()
        self.pcapng = pcapng
        self.printer = printer
        self.on_limit = on_limit
        self._events = 0
        self.error: BaseException | None = None
        self._clients: dict[int, ClientInfo] = {}
        self._done = False
        self._snaplen = selection.snaplen
        self._flow_filtered = selection.flow is not None
        self._lean_count: Callable[[], int] = lambda: 0
        self._lean_stop: Callable[[], None] = lambda: None
        if pcapng is not None and printer is None and selection == Selection():
            self.data = self._lean_data(pcapng)  # type: ignore[method-assign]

    # -- Tap ----------------------------------------------------------------------------
    def opened(self, conn: ConnectionInfo, time_ns: int) -> None:
        client = conn.client
        if self._done or not self.selection.wants(client):
            return
        self._clients[conn.id] = client
        path = self.path
        if self.path_per_connection:
            path = self._paths[conn.id] = conn.listen
        try:
            if self.pcapng is not None:
                self.pcapng.opened(conn.id, path, conn.sock_type, client, time_ns, conn.midstream)
            if self.printer is not None:
                self.printer(Event.open(time_ns, conn.id, path, conn.sock_type, client))
        except Exception as exc:  # a tap must not raise: report it from the main thread
            self._fail(exc)

    def data(
        self,
        conn: ConnectionInfo,
        direction: Direction,
        data: bytes | memoryview,
        time_ns: int,
        length: int | None = None,
    ) -> None:
        """`length`: the chunk's real size when `data` is already cut (the eBPF
        engine's snap length); None means all of it is in `data`."""
        client = self._clients.get(conn.id)
        if client is None or self._done:
            return
        if self._flow_filtered and not self.selection.keeps(client, direction):
            return
        if length is None:
            length = len(data)
        snaplen = self._snaplen
        if snaplen is not None and length > snaplen:
            data = data[:snaplen]
        try:
            if self.pcapng is not None:
                self.pcapng.data(conn.id, direction, data, length, time_ns)
            if self.printer is not None:
                self.printer(
                    Event.chunk(
                        time_ns,
                        conn.id,
                        self._paths.get(conn.id, self.path),
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
        self._events += 1
        limit = self.selection.count
        if limit is not None and self._events >= limit:
            self._done = True
            if self.on_limit is not None:
                self.on_limit()

    def fds(
        self, conn: ConnectionInfo, direction: Direction, kinds: tuple[str, ...], time_ns: int
    ) -> None:  # called just before the `data` of the chunk they came with
        """Descriptors are passed with the next chunk: a line (and JSON object) says
        how many and what each was; in the pcapng file, that chunk's comment does."""
        client = self._clients.get(conn.id)
        if client is None or self._done:
            return
        try:
            if self.pcapng is not None:
                self.pcapng.fds(conn.id, direction, kinds, time_ns)
            if self.printer is None:
                return
            self.printer(
                Event.passed_fds(
                    time_ns, conn.id, self.path, conn.sock_type, client, direction, kinds
                )
            )
        except Exception as exc:
            self._fail(exc)

    def _lean_data(self, pcapng: PcapngWriter) -> Callable[..., None]:
        """`data` when only a file is written, with no filter: the per-chunk hot path,
        as a closure over everything it touches (no attribute lookups). The writer
        ignores connections it was not told about."""
        out = pcapng.out  # flush() empties it in place: the same object throughout
        pack = DATA.pack
        c2s = Direction.C2S
        count = 0

        def data(
            conn: ConnectionInfo,
            direction: Direction,
            data: bytes | memoryview,
            time_ns: int,
            length: int | None = None,
        ) -> None:
            nonlocal out, count
            n = len(data)
            real = n if length is None else length
            out += pack(KIND_DATA, direction is c2s, conn.id, real, n, time_ns)
            out += data
            count += 1
            if len(out) >= FLUSH_BYTES:
                try:
                    pcapng.flush()
                except Exception as exc:
                    self._fail(exc)

        def stop() -> None:
            self.data = lambda *_args: None  # type: ignore[method-assign]

        self._lean_count = lambda: count
        self._lean_stop = stop
        return data

    def closed(self, conn: ConnectionInfo, first: Direction | None, time_ns: int) -> None:
        client = self._clients.pop(conn.id, None)
        if client is None:
            return
        try:
            if self.pcapng is not None and not self._failed:
                self.pcapng.closed(conn.id, first, time_ns)
            if self.printer is not None and not self._failed:
                self.printer(
                    Event.close(
                        time_ns,
                        conn.id,
                        self._paths.pop(conn.id, self.path),
                        conn.sock_type,
                        client,
                        first,
                    )
                )
        except Exception as exc:
            self._fail(exc)

    def flush(self) -> bool:
        """Send what is buffered to the writer (the proxy calls this every
        FLUSH_INTERVAL, so a file being written, or left by a kill -9, is never far
        behind), and notice a writer that died. Returns whether records still wait
        for room in the pipe (then the proxy calls again sooner)."""
        if self.pcapng is None or self._failed:
            return False
        try:
            self.pcapng.check()
            return self.pcapng.flush()
        except Exception as exc:
            self._fail(exc)
            return False

    @property
    def data_events(self) -> int:
        """Data events recorded so far."""
        return self._events + self._lean_count()

    # -- the end -------------------------------------------------------------------------
    @property
    def _failed(self) -> bool:
        return self.error is not None

    @property
    def stdout_closed(self) -> bool:
        """Did printing stop because the reader of stdout went away (`| head -1`)?"""
        return isinstance(self.error, BrokenPipeError)

    def _fail(self, exc: BaseException) -> None:
        # Once: a second call (a close event printed to the same closed stdout) would
        # stop the engine again, in the middle of the drain that lets clients finish.
        if self.error is not None:
            return
        self.error = exc
        self._done = True
        self._lean_stop()
        if self.on_limit is not None:
            self.on_limit()

    def finish(self, on_slow: Callable[[], None] | None = None) -> None:
        """End the flows still open in the file and finish it (waits for the writer;
        `on_slow` is called if that takes a while, see PcapngWriter.close)."""
        if self.pcapng is not None:
            try:
                if not self._failed:
                    now = time.time_ns()
                    for conn_id in list(self._clients):
                        self.pcapng.closed(conn_id, None, now)
            finally:
                self._clients.clear()
                try:
                    self.pcapng.close(on_slow)
                except (OSError, UdskitError) as exc:
                    if self.error is None:
                        self.error = exc
