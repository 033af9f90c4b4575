"""I/O: the proxy's side of a pcapng capture: the -w file opened safely, and the
records sent to a writer process without ever blocking the traffic.

Why the pcapng file is written by a second process: the proxy is a single Python
thread, and every microsecond it spends per chunk is a microsecond every client waits.
Encoding a chunk as an EPB with IPv4 and TCP headers costs about as much as forwarding
it (benchmarks/dump.py), so the proxy only appends a 22-byte record header and the
bytes to a buffer (udskit.capture.writerwire) and writes the buffer to a pipe every
FLUSH_BYTES; the writer process (udskit.capture.writerproc) does the rest.

The proxy never blocks on that pipe (it is non-blocking): a stalled or starved writer
must not slow the traffic down, and a blocked write(2) would also keep Ctrl-C waiting
(PEP 475 retries it after the handler). What the pipe cannot take waits in memory, up
to BACKLOG_BYTES; beyond that, chunks are recorded as their lengths only (the file
shows them as cut to 0 bytes), and beyond twice that not at all, and the loss is
counted and reported at the end. Nothing is ever lost silently.

The -w file is opened (to check it can be written) before anything is moved, but only
truncated once the takeover succeeded (`begin()`); a dump that fails to start leaves an
existing file as it was and removes one it created. The writer gets the file as an
open fd, inherits no socket, lives in its own process group (Ctrl-C in the terminal is
for the proxy, which then closes the pipe) and, when the pipe ends (a normal exit, or
the proxy was killed with -9), writes everything it was sent and exits. If it cannot
write (a full disk) it says so in one line on its stderr, which the proxy reads and
reports, and exits 1. `PcapngSink` writes a file in this process instead (`dump -r
FILE -w OUT`, where nothing is forwarded).
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import stat
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from typing import BinaryIO, Final, final

from udskit.capture.pcapng import PcapngEncoder
from udskit.capture.writerwire import (
    DATA,
    FLUSH_BYTES,
    KIND_DATA,
    cannot_write,
    close_record,
    fds_record,
    open_record,
    shed_records,
)
from udskit.errors import UdskitError, UsageError
from udskit.socktype import SocketType
from udskit.tap import ClientInfo, Direction

__all__ = ["BACKLOG_BYTES", "PIPE_BYTES", "PcapngSink", "PcapngWriter"]

#: How much the proxy keeps in memory while the pipe to the writer is full; beyond it
#: chunks are recorded as lengths only, beyond twice it not at all (see the docstring).
BACKLOG_BYTES: Final = 64 * 1024 * 1024
#: The pipe to the writer: 1 MiB (the default pipe-max-size) absorbs short stalls.
PIPE_BYTES: Final = 1 << 20


def open_for_writing(path: str) -> tuple[int, bool]:
    """An fd to write `path` without truncating it yet, and whether we created it.

    A capture holds whatever the socket carried, so a new file is created 0600 (as
    dumpcap does), with O_EXCL|O_NOFOLLOW: never through a symlink another user
    planted (fs.protected_symlinks does not cover every directory). An existing name
    is opened with O_NOFOLLOW too and used only if it is this user's own regular file,
    or not a regular file at all (a FIFO, /dev/null, /dev/full, a tty). The one
    symlink followed on purpose is /dev/stdout and its kin, which belong to the system.
    "-" is standard output (`udskit dump -w - | tshark -r -`), as tcpdump has it.
    """
    if path == "-":
        try:
            return os.dup(1), False  # ours to close; never truncated (see truncate)
        except OSError as exc:
            raise UsageError(
                f"cannot write -: standard output is not open ({exc.strerror})"
            ) from None
    flags = os.O_WRONLY | os.O_CLOEXEC
    try:
        try:
            return os.open(path, flags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600), True
        except FileExistsError:
            pass
        follow = os.path.realpath(os.path.dirname(os.path.abspath(path))) in ("/dev", "/dev/fd")
        fd = os.open(path, flags | (0 if follow else os.O_NOFOLLOW))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UsageError(
                f"cannot write {path}: it is a symlink, which udskit does not follow for "
                "-w (it could lead anywhere); give the real path"
            ) from None
        raise UsageError(
            f"cannot write {path}: {os.strerror(exc.errno or 0).lower()}; "
            "pick a writable path for -w"
        ) from None
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode) and st.st_uid != os.geteuid():
        os.close(fd)
        from udskit.procfs import user_name

        raise UsageError(
            f"cannot write {path}: it belongs to {user_name(st.st_uid)} (uid {st.st_uid}), "
            "not to you; udskit writes captures only into files it creates or that are "
            "your own: remove it or pick another path"
        )
    return fd, False


def truncate(fd: int) -> None:
    """Empty the capture file, if it is a file."""
    if stat.S_ISREG(os.fstat(fd).st_mode):  # not /dev/stdout, a FIFO, /dev/full...
        os.ftruncate(fd, 0)


@final
class PcapngSink:
    """A pcapng file written in this process (for `-r ... -w`, where nothing is
    forwarded). `flush()` writes what is gathered; `close()` ends it."""

    def __init__(self, target: str | BinaryIO, server_port: int | None = None) -> None:
        self.encoder = PcapngEncoder(server_port)
        self._own = isinstance(target, str)
        self.path = target if isinstance(target, str) else getattr(target, "name", "output")
        if isinstance(target, str):
            fd, _created = open_for_writing(target)
            if target != "-":
                truncate(fd)
            self._file: BinaryIO = os.fdopen(fd, "wb")
        else:
            self._file = target
        self.encoder.header()
        self.flush()

    def flush(self) -> None:
        out = self.encoder.out
        if out:
            try:
                self._file.write(out)
                self._file.flush()
            except OSError as exc:
                raise cannot_write(str(self.path), exc) from None
            out.clear()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._own:
                with suppress(OSError):
                    self._file.close()


@final
class PcapngWriter:
    """A pcapng file written by a writer process fed through a pipe (see the module
    docstring). `out` is the record buffer the tap appends to; `flush()` passes it on.

    The file is opened here (so a bad path fails before anything is moved); `begin()`
    truncates it and starts the writer; `abandon()` undoes the opening instead."""

    def __init__(self, path: str, server_port: int | None = None) -> None:
        self.path = path
        self.server_port = server_port
        self._fd, self._created = open_for_writing(path)
        self.proc: subprocess.Popen[bytes] | None = None
        self._pipe = -1
        self.out = bytearray()
        self._queue: deque[bytes | bytearray] = deque()
        self._queued = 0
        #: Chunks recorded as lengths only, their bytes, and chunks not recorded at all.
        self.cut_chunks = 0
        self.cut_bytes = 0
        self.dropped_chunks = 0
        self.cut_short = False  # stopped by a signal before the writer was done
        #: How much may wait in memory for the writer (the eBPF engine, which slows
        #: nobody down by waiting, allows more: see udskit.capture.engine).
        self.backlog_limit = BACKLOG_BYTES
        self._closed = False

    def begin(self) -> None:
        """The takeover succeeded: empty the file and start the writer process."""
        fd, self._fd = self._fd, -1
        try:
            if self.path != "-":  # stdout: whatever it is, it is the caller's
                truncate(fd)
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from udskit.capture.writerproc import writer_main; writer_main()",
                    str(fd),
                    str(self.server_port or 0),
                    self.path,
                ],
                stdin=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(fd,),
                process_group=0,  # not our terminal's: Ctrl-C is for the proxy
            )
        finally:
            os.close(fd)
        assert self.proc.stdin is not None
        self._pipe = self.proc.stdin.fileno()
        with suppress(OSError):
            fcntl.fcntl(self._pipe, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        os.set_blocking(self._pipe, False)

    def abandon(self) -> None:
        """The dump did not start: leave an existing file as it was, remove ours."""
        self._closed = True
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            if self._created:
                with suppress(OSError):
                    os.unlink(self.path)

    def opened(
        self,
        conn: int,
        path: str,
        sock_type: SocketType,
        client: ClientInfo,
        time_ns: int,
        midstream: bool = False,
    ) -> None:
        self.out += open_record(conn, path, sock_type, client, time_ns, midstream)

    def data(
        self, conn: int, direction: Direction, payload: bytes | memoryview, length: int, t: int
    ) -> None:
        out = self.out
        out += DATA.pack(KIND_DATA, direction is Direction.C2S, conn, length, len(payload), t)
        out += payload
        if len(out) >= FLUSH_BYTES:
            self.flush()

    def closed(self, conn: int, first: Direction | None, time_ns: int) -> None:
        self.out += close_record(conn, first, time_ns)
        self.flush()

    def fds(self, conn: int, direction: Direction, kinds: tuple[str, ...], time_ns: int) -> None:
        """Descriptors passed with the next chunk of `conn` in `direction`."""
        self.out += fds_record(conn, direction, kinds, time_ns)

    @property
    def backlog(self) -> int:
        """Bytes of records waiting in memory for room in the pipe."""
        return self._queued

    def flush(self) -> bool:
        """Pass the gathered records on without ever blocking; what the pipe cannot
        take now waits in memory (see the module docstring). Returns whether some
        still waits, so the caller can try again soon."""
        if self.proc is None:
            return False
        out = self.out
        if out:
            if not self._queue:
                sent = self._write(out)
                if sent < len(out):
                    self._enqueue(out[sent:])
            else:
                self._enqueue(bytes(out))
            out.clear()
        while self._queue:
            head = self._queue[0]
            sent = self._write(head)
            self._queued -= sent
            if sent < len(head):
                self._queue[0] = head[sent:]
                break
            self._queue.popleft()
        return bool(self._queue)

    def _write(self, data: bytes | bytearray | memoryview) -> int:
        try:
            return os.write(self._pipe, data)
        except BlockingIOError:
            return 0
        except BrokenPipeError:
            raise self._failure() from None

    def _enqueue(self, records: bytes | bytearray) -> None:
        limit = self.backlog_limit
        if self._queued + len(records) > limit:
            records, cut = shed_records(records, keep_lengths=self._queued <= limit)
            self.cut_chunks += cut.cut_chunks
            self.cut_bytes += cut.cut_bytes
            self.dropped_chunks += cut.dropped_chunks
        self._queue.append(records)
        self._queued += len(records)

    def loss(self) -> str | None:
        """What the writer could not keep up with, as a sentence, or None."""
        if self.cut_short:
            return f"WARNING: stopped before the writer was done: {self.path} ends early"
        if not self.cut_chunks and not self.dropped_chunks:
            return None
        parts = []
        if self.cut_chunks:
            parts.append(
                f"{self.cut_chunks} chunks ({self.cut_bytes} bytes) are in {self.path} as "
                "lengths only"
            )
        if self.dropped_chunks:
            parts.append(f"{self.dropped_chunks} chunks are not in it at all")
        return (
            "WARNING: the pcapng writer fell behind the traffic: "
            + " and ".join(parts)
            + "; write to a faster disk or capture less (-s, --pid)"
        )

    def check(self) -> None:
        """Raise if the writer process has ended before its time (a full disk)."""
        if self.proc is not None and not self._closed and self.proc.poll() is not None:
            raise self._failure()

    def _failure(self) -> UdskitError:
        assert self.proc is not None
        try:
            status = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            status = self.proc.wait()
        said = b""
        if self.proc.stderr is not None:
            with suppress(OSError, ValueError):
                said = _read_for(self.proc.stderr.fileno(), 5.0)
                self.proc.stderr.close()
        lines = said.decode(errors="replace").strip().splitlines()
        if status == 1 and lines:
            return UdskitError(lines[-1])
        return UdskitError(f"the pcapng writer for {self.path} failed (exit status {status})")

    def close(self, on_slow: Callable[[], None] | None = None) -> None:
        """Send what waits, end the pipe and wait for the writer to finish the file.

        This may wait for a writer that is behind (its encoder only gets idle CPU time
        while traffic flows); `on_slow` is called once if it takes more than half a
        second. A signal stops the waiting and the writer (the file then ends early,
        and `loss()` says so)."""
        if self._closed:
            return
        if self.proc is None:
            self.abandon()
            return
        self._closed = True
        assert self.proc.stdin is not None
        interrupted = True
        try:
            os.set_blocking(self._pipe, True)
            if self.out:
                self._queue.append(bytes(self.out))
                self.out.clear()
            while self._queue:
                view = memoryview(self._queue.popleft())
                while view:
                    view = view[self._write(view) :]
            with suppress(OSError):
                self.proc.stdin.close()
            try:
                self.proc.wait(0.5)
            except subprocess.TimeoutExpired:
                if on_slow is not None:
                    on_slow()
                self.proc.wait()
            interrupted = False
        finally:
            if interrupted:  # a second Ctrl-C: the user wants out, not the rest
                with suppress(OSError):
                    self.proc.stdin.close()
                # The writer leads its own process group, with its encoder in it.
                with suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.cut_short = True
                self.proc.wait()
                if self.proc.stderr is not None:
                    self.proc.stderr.close()
        if self.proc.returncode != 0:
            raise self._failure()
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def _read_for(fd: int, seconds: float) -> bytes:
    """What `fd` says until its end, or for at most `seconds` (whoever else holds the
    pipe open must not keep the proxy waiting)."""
    import select

    said = bytearray()
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        said += chunk
    return bytes(said)
