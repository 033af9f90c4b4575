"""I/O: where captured events go: a pcapng file, text lines on a stream, or both.

`DumpTap` is the relay's `Tap` for `udskit dump`. It applies the user's selection
(`--pid`, `-c`, `-s`), records chunks for the file and builds `Event`s only when a
printer wants them. The relay engine calls a tap from its one loop thread, so there is
no lock on the per-chunk path.

Why the pcapng file is written by a second process (`PcapngWriter`): the proxy is a
single Python thread, and every microsecond it spends per chunk is a microsecond every
client waits. Encoding a chunk as an EPB with IPv4 and TCP headers costs about as much
as forwarding it (benchmarks/dump.py), so the proxy only appends a 22-byte record
header and the bytes to a buffer and writes the buffer to a pipe every 256 KiB; a
writer process (`writer_main`) turns the records into pcapng, at a lower priority, so
under load the CPU goes to the traffic first. The writer gets the output file as an
open fd (a bad -w path fails before anything is moved), inherits no socket, lives in
its own process group (Ctrl-C in the terminal is for the proxy, which then closes the
pipe) and, when the pipe ends (a normal exit, or the proxy was killed with -9), writes
everything it was sent and exits.
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from typing import BinaryIO, Final, final

from udskit.capture.events import Event, Selection
from udskit.capture.pcapng import PcapngEncoder
from udskit.capture.printers import Format, render
from udskit.errors import UdskitError, UsageError
from udskit.socktype import SocketType
from udskit.tap import ClientInfo, ConnectionInfo, Direction

__all__ = ["DumpTap", "LineSink", "PcapngSink", "PcapngWriter", "writer_main"]

#: Bytes gathered before one write(2): 256 KiB is a guess that keeps syscalls rare at
#: redis-benchmark rates while a killed dump loses little; see benchmarks/dump.py.
FLUSH_BYTES: Final = 256 * 1024
#: The writer process's niceness (see writer_main) and how much it may hold unwritten.
WRITER_NICE: Final = 10
SPOOL_BYTES: Final = 64 * 1024 * 1024
#: The pipe to the writer: 1 MiB (the default pipe-max-size) absorbs short stalls.
PIPE_BYTES: Final = 1 << 20

# Records on the pipe to the writer process: a kind byte, then
#   DATA  : c2s (1 byte), conn id, real length, recorded length, time_ns; the bytes
#   OPEN  : conn id, time_ns, JSON length; JSON {path, type, pid, uid, gid, command}
#   CLOSE : first (0 unknown, 1 c2s, 2 s2c), conn id, time_ns
_DATA: Final = struct.Struct("<BBIIIQ")
_OPEN: Final = struct.Struct("<BIQI")
_CLOSE: Final = struct.Struct("<BBIQ")
_KIND_DATA: Final = 1
_KIND_OPEN: Final = 2
_KIND_CLOSE: Final = 3
_FIRST_CODE: Final = {None: 0, Direction.C2S: 1, Direction.S2C: 2}
_FIRST: Final = (None, Direction.C2S, Direction.S2C)


def _open_for_writing(path: str) -> int:
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise UsageError(
            f"cannot write {path}: {os.strerror(exc.errno or 0).lower()}; "
            "pick a writable path for -w"
        ) from None


@final
class PcapngSink:
    """A pcapng file written in this process (for `-r ... -w`, where nothing is
    forwarded). `flush()` writes what is gathered; `close()` ends it."""

    def __init__(self, target: str | BinaryIO, server_port: int | None = None) -> None:
        self.encoder = PcapngEncoder(server_port)
        self._own = isinstance(target, str)
        if isinstance(target, str):
            self._file: BinaryIO = os.fdopen(_open_for_writing(target), "wb")
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
class PcapngWriter:
    """A pcapng file written by a writer process fed through a pipe (see the module
    docstring). `out` is the record buffer the tap appends to; `flush()` sends it."""

    def __init__(self, path: str, server_port: int | None = None) -> None:
        self.path = path
        fd = _open_for_writing(path)
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from udskit.capture.sinks import writer_main; writer_main()",
                    str(fd),
                    str(server_port or 0),
                ],
                stdin=subprocess.PIPE,
                pass_fds=(fd,),
                process_group=0,  # not our terminal's: Ctrl-C is for the proxy
            )
        finally:
            os.close(fd)
        assert self.proc.stdin is not None
        self._pipe = self.proc.stdin.fileno()
        with suppress(OSError):
            fcntl.fcntl(self._pipe, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        self.out = bytearray()
        self._closed = False

    def opened(
        self, conn: int, path: str, sock_type: SocketType, client: ClientInfo, time_ns: int
    ) -> None:
        meta = json.dumps(
            {
                "path": path,
                "type": sock_type.value,
                "pid": client.pid,
                "uid": client.uid,
                "gid": client.gid,
                "command": client.command,
            }
        ).encode()
        self.out += _OPEN.pack(_KIND_OPEN, conn, time_ns, len(meta))
        self.out += meta

    def data(
        self, conn: int, direction: Direction, payload: bytes | memoryview, length: int, t: int
    ) -> None:
        out = self.out
        out += _DATA.pack(_KIND_DATA, direction is Direction.C2S, conn, length, len(payload), t)
        out += payload
        if len(out) >= FLUSH_BYTES:
            self.flush()

    def closed(self, conn: int, first: Direction | None, time_ns: int) -> None:
        self.out += _CLOSE.pack(_KIND_CLOSE, _FIRST_CODE[first], conn, time_ns)
        self.flush()

    def flush(self) -> None:
        """Send the buffered records; blocks while the writer is behind (back-pressure:
        the relay slows down rather than losing records or growing without bound)."""
        out = self.out
        if not out:
            return
        view = memoryview(out)
        try:
            while view:
                view = view[os.write(self._pipe, view) :]
        except BrokenPipeError:
            raise UdskitError(f"the pcapng writer for {self.path} exited early") from None
        finally:
            view.release()
        out.clear()

    def close(self, timeout: float = 60.0) -> None:
        """Flush, end the pipe and wait for the writer to finish the file."""
        if self._closed:
            return
        self._closed = True
        try:
            self.flush()
        finally:
            assert self.proc.stdin is not None
            with suppress(BrokenPipeError):
                self.proc.stdin.close()
            try:
                status = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                status = self.proc.wait()
        if status != 0:
            raise UdskitError(
                f"the pcapng writer for {self.path} failed (exit status {status}); "
                "is the disk full?"
            )


def writer_main() -> None:
    """The writer process: records on stdin -> pcapng on the fd in argv[1].

    It runs at a lower priority (nice WRITER_NICE) so that while traffic is heavy the
    CPU goes to the clients, the server and the proxy first; a reader thread keeps the
    pipe drained into memory (up to SPOOL_BYTES, then the proxy waits), and the main
    thread encodes when it gets the CPU. Nothing is dropped: at the end of the pipe
    everything spooled is written before the process exits."""
    import signal
    import threading
    from collections import deque

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    with suppress(OSError):
        os.nice(WRITER_NICE)
    with suppress(OSError, AttributeError):
        # SCHED_IDLE (sched(7)): run when a CPU would otherwise idle.
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    fd, port = int(sys.argv[1]), int(sys.argv[2])
    encoder = PcapngEncoder(port or None)
    encoder.header()
    decoder = _RecordDecoder(encoder)
    spool: deque[bytes] = deque()
    state = {"bytes": 0, "eof": False}
    cond = threading.Condition()

    def read_pipe() -> None:
        try:
            while chunk := os.read(0, 1 << 20):
                with cond:
                    while state["bytes"] > SPOOL_BYTES:
                        cond.wait()
                    spool.append(chunk)
                    state["bytes"] += len(chunk)
                    cond.notify_all()
        finally:
            with cond:
                state["eof"] = True
                cond.notify_all()

    threading.Thread(target=read_pipe, name="udskit-dump-spool", daemon=True).start()
    with os.fdopen(fd, "wb", buffering=0) as f:
        while True:
            with cond:
                while not spool and not state["eof"]:
                    cond.wait()
                if not spool:
                    break
                chunks = list(spool)
                spool.clear()
                state["bytes"] = 0
                cond.notify_all()
            for chunk in chunks:
                decoder.feed(chunk)
                if len(encoder.out) >= FLUSH_BYTES:
                    f.write(encoder.out)
                    encoder.out.clear()
            with cond:
                idle = not spool
            if idle and encoder.out:  # caught up: let readers of the file see it all
                f.write(encoder.out)
                encoder.out.clear()
        f.write(encoder.out)


@final
class _RecordDecoder:
    """Pure part of the writer: pipe records -> encoder calls (records may be split
    across reads; an incomplete tail waits for the next read, or is dropped at EOF)."""

    def __init__(self, encoder: PcapngEncoder) -> None:
        self.encoder = encoder
        self.pending = b""

    def feed(self, chunk: bytes) -> None:
        buf = self.pending + chunk if self.pending else chunk
        view = memoryview(buf)
        pos, size = 0, len(buf)
        encoder = self.encoder
        data_size, open_size, close_size = _DATA.size, _OPEN.size, _CLOSE.size
        while pos < size:
            kind = buf[pos]
            if kind == _KIND_DATA:
                if pos + data_size > size:
                    break
                _k, c2s, conn, length, caplen, t = _DATA.unpack_from(buf, pos)
                end = pos + data_size + caplen
                if end > size:
                    break
                direction = Direction.C2S if c2s else Direction.S2C
                encoder.data(conn, direction, view[pos + data_size : end], length, t)
                pos = end
            elif kind == _KIND_OPEN:
                if pos + open_size > size:
                    break
                _k, conn, t, meta_len = _OPEN.unpack_from(buf, pos)
                end = pos + open_size + meta_len
                if end > size:
                    break
                meta = json.loads(bytes(view[pos + open_size : end]))
                client = ClientInfo(meta["pid"], meta["uid"], meta["gid"], meta["command"])
                encoder.opened(conn, meta["path"], SocketType(meta["type"]), client, t)
                pos = end
            elif kind == _KIND_CLOSE:
                if pos + close_size > size:
                    break
                _k, first, conn, t = _CLOSE.unpack_from(buf, pos)
                encoder.closed(conn, _FIRST[first], t)
                pos += close_size
            else:
                raise ValueError(f"bad record kind {kind} at {pos}")
        view.release()
        self.pending = buf[pos:]


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
        self.selection = selection = selection or Selection()
        self.pcapng = pcapng
        self.printer = printer
        self.on_limit = on_limit
        self._events = 0
        self.error: BaseException | None = None
        self._clients: dict[int, ClientInfo] = {}
        self._done = False
        self._snaplen = selection.snaplen
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
        try:
            if self.pcapng is not None:
                self.pcapng.opened(conn.id, self.path, conn.sock_type, client, time_ns)
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
        try:
            if self.pcapng is not None:
                self.pcapng.data(conn.id, direction, data, length, time_ns)
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
        self._events += 1
        limit = self.selection.count
        if limit is not None and self._events >= limit:
            self._done = True
            if self.on_limit is not None:
                self.on_limit()

    def _lean_data(self, pcapng: PcapngWriter) -> Callable[..., None]:
        """`data` when only a file is written, with no filter: the per-chunk hot path,
        as a closure over everything it touches (no attribute lookups). The writer
        ignores connections it was not told about."""
        out = pcapng.out  # flush() empties it in place: the same object throughout
        pack = _DATA.pack
        c2s = Direction.C2S
        count = 0

        def data(
            conn: ConnectionInfo, direction: Direction, data: bytes | memoryview, time_ns: int
        ) -> None:
            nonlocal out, count
            n = len(data)
            out += pack(_KIND_DATA, direction is c2s, conn.id, n, n, time_ns)
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
            if self.printer is not None:
                self.printer(
                    Event.close(time_ns, conn.id, self.path, conn.sock_type, client, first)
                )
        except Exception as exc:
            self._fail(exc)

    def flush(self) -> None:
        """Send what is buffered to the writer (the proxy calls this every
        FLUSH_INTERVAL, so a file being written, or left by a kill -9, is never far
        behind)."""
        if self.pcapng is not None and self.pcapng.out and not self._failed:
            try:
                self.pcapng.flush()
            except Exception as exc:
                self._fail(exc)

    @property
    def data_events(self) -> int:
        """Data events recorded so far."""
        return self._events + self._lean_count()

    # -- the end -------------------------------------------------------------------------
    @property
    def _failed(self) -> bool:
        return self.error is not None

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self._done = True
        self._lean_stop()
        if self.on_limit is not None:
            self.on_limit()

    def finish(self) -> None:
        """End the flows still open in the file and finish it (waits for the writer)."""
        if self.pcapng is not None:
            try:
                if not self._failed:
                    now = time.time_ns()
                    for conn_id in list(self._clients):
                        self.pcapng.closed(conn_id, None, now)
            finally:
                self._clients.clear()
                try:
                    self.pcapng.close()
                except (OSError, UdskitError) as exc:
                    if self.error is None:
                        self.error = exc
