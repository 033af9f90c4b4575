"""I/O: `Capture`, a capture's whole life as a library, for either engine.

    from udskit.capture import Capture

    with Capture("/run/app.sock", engine="auto", write="cap.pcapng") as cap:
        for event in cap.events(timeout=10):
            print(event.kind, event.direction, event.client.pid, event.data[:40])
    print(cap.stats)

`start()` picks and starts the engine (the proxy takes the socket's place; eBPF
watches the kernel), `events()` yields `Event`s as they happen, `stop()` ends the
capture, puts back what the proxy moved, finishes the pcapng file and returns the
notes (losses, what was put back). The engine runs in a worker thread with the stop
signals blocked, so the caller's thread keeps its Ctrl-C.

This wraps the engines as they are (`ProxyDump`, `EbpfDump`) and the same `DumpTap`
the CLI uses, so a program sees exactly the events `udskit dump --json` prints.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, final

from udskit.capture.engine import choose_engine
from udskit.capture.events import Event, Selection
from udskit.capture.pcapwriter import PcapngWriter
from udskit.capture.sinks import DumpTap
from udskit.signals import start_worker
from udskit.socktype import SocketType

__all__ = ["Capture", "CaptureStats"]

_END = object()


@final
@dataclass(frozen=True, slots=True)
class CaptureStats:
    """What a capture recorded, and what it could not (each note is one sentence)."""

    engine: str
    data_events: int
    connections: int
    notes: tuple[str, ...]


class Capture:
    """One capture of `address` (or of socket `inode`, or of process `pid`'s
    connections, with the eBPF engine). `engine` is "proxy", "ebpf" or "auto";
    `write` a pcapng path (or "-": standard output); `selection` the filters of
    `udskit dump` (--pid, --pname, --uid, -Q, -c, -s).
    `listen`, `sock_type` and `grace` are the proxy engine's (`udskit dump --listen`,
    `--type`, `--grace`)."""

    def __init__(
        self,
        address: str | None = None,
        *,
        engine: str = "auto",
        inode: int | None = None,
        pid: int | None = None,
        selection: Selection | None = None,
        write: str | None = None,
        decode_as: str | None = None,
        listen: str | None = None,
        sock_type: SocketType | None = None,
        grace: float = 2.0,
        max_queued: int = 100_000,
        ring_bytes: int | None = None,
    ) -> None:
        self._args = (address, engine, inode, pid, listen)
        from udskit.capture.engine import selection_for

        self._selection = selection_for(
            selection or Selection(pid=pid), address=address, inode=inode, pid=pid
        )
        self._write = write
        self._decode_as = decode_as
        self._sock_type = sock_type
        self._grace = grace
        self._ring_bytes = ring_bytes
        self._queue: queue.Queue[Any] = queue.Queue(max_queued)
        self.engine_name = ""
        #: Why auto did not take eBPF, if it did not.
        self.fallback: str | None = None
        self._dump: Any = None
        self._tap: DumpTap | None = None
        self._writer: PcapngWriter | None = None
        self._thread: threading.Thread | None = None
        self._notes: list[str] = []
        self._stopped = False
        self.error: BaseException | None = None
        self.overflowed = 0  # events not queued because nobody read them

    # -- life -----------------------------------------------------------------------------
    def start(self) -> Capture:
        from udskit.capture.pcapng import parse_decode_as
        from udskit.capture.proxy import ProxyDump

        address, engine, inode, pid, listen = self._args

        def fell_back(line: str) -> None:
            self.fallback = line

        from udskit.capture.bpf_loader import RING_BYTES

        dump: Any = choose_engine(
            engine,
            address=address,
            inode=inode,
            pid=pid,
            listen=listen,
            ring_bytes=self._ring_bytes or RING_BYTES,
            say=fell_back,
        )
        if dump is None:
            if address is None:
                raise ValueError("the proxy engine needs an address")
            dump = ProxyDump(address, listen=listen, sock_type=self._sock_type, grace=self._grace)
            self.engine_name = "proxy"
        else:
            self.engine_name = "ebpf"
        port = parse_decode_as(self._decode_as) if self._decode_as else None
        writer = PcapngWriter(self._write, port) if self._write is not None else None
        if writer is not None and self.engine_name == "ebpf":
            from udskit.capture.engine import EBPF_BACKLOG_BYTES

            writer.backlog_limit = EBPF_BACKLOG_BYTES
        tap = DumpTap(dump.display_path, self._selection, writer, self._put, on_limit=dump.stop)
        dump.tap = tap
        try:
            dump.start()
        except BaseException:
            if writer is not None:
                writer.abandon()
            raise
        if writer is not None:
            writer.begin()
        self._dump, self._tap, self._writer = dump, tap, writer
        self._thread = start_worker(self._run, name="udskit-capture")
        return self

    def _run(self) -> None:
        try:
            self._dump.run()
        except BaseException as exc:  # reported by stop()
            self.error = exc
        finally:
            self._queue.put(_END)

    def _put(self, event: Event) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.overflowed += 1

    def describe(self) -> str:
        return str(self._dump.describe()) if self._dump is not None else "not started"

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Events as they happen, until the capture stops (stop(), -c reached) or
        `timeout` seconds pass with nothing new."""
        while True:
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                return
            if item is _END:
                self._queue.put(_END)  # for the next caller
                return
            yield item

    def stop(self) -> CaptureStats:
        """End the capture (idempotent): stop the engine, put back what it moved,
        finish the file. Raises what made the capture fail, if anything did."""
        if not self._stopped and self._dump is not None:
            self._stopped = True
            self._dump.stop()
            if self._thread is not None:
                self._thread.join()
            self._notes += self._dump.close()
            assert self._tap is not None
            self._tap.finish()
            loss = self._writer.loss() if self._writer is not None else None
            if loss is not None:
                self._notes.append(loss)
            if self.overflowed:
                self._notes.append(f"{self.overflowed} events were not read in time and dropped")
            if self._tap.error is not None and self.error is None:
                self.error = self._tap.error
        if self.error is not None and not isinstance(self.error, KeyboardInterrupt):
            raise self.error
        return self.stats

    @property
    def stats(self) -> CaptureStats:
        tap, dump = self._tap, self._dump
        return CaptureStats(
            self.engine_name,
            tap.data_events if tap is not None else 0,
            dump.connections if dump is not None else 0,
            tuple(self._notes),
        )

    def __enter__(self) -> Capture:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
