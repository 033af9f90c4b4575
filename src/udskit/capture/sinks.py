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
writer process (`writer_main`) spools the records to disk at normal priority (so a
busy machine cannot starve it into dropping them), and its child encodes pcapng from
the spool at SCHED_IDLE and nice 10, so under load the CPU goes to the traffic first.

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
reports, and exits 1.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import stat
import struct
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from typing import TYPE_CHECKING, BinaryIO, Final, final

from udskit.capture.events import Event, Selection
from udskit.capture.pcapng import PcapngEncoder
from udskit.capture.printers import Format, render
from udskit.errors import UdskitError, UsageError
from udskit.safetext import safe_line
from udskit.signals import die_with_parent
from udskit.socktype import SocketType
from udskit.tap import ClientInfo, ConnectionInfo, Direction

if TYPE_CHECKING:
    import socket

__all__ = ["DumpTap", "LineSink", "PcapngSink", "PcapngWriter", "writer_main"]

#: Bytes gathered before one write(2): 256 KiB is a guess that keeps syscalls rare at
#: redis-benchmark rates while a killed dump loses little; see benchmarks/dump.py.
FLUSH_BYTES: Final = 256 * 1024
#: The encoder's niceness (see writer_main). The writer itself keeps the normal
#: priority: it only appends to spool files, but at nice 10, next to a busy loop on the
#: same CPU, it got a tenth of that CPU and fell more than BACKLOG_BYTES behind, and a
#: hundred clients' megabytes were recorded as lengths only (tests/io/test_dump.py).
#: Not SCHED_IDLE for the writer either: an idle-class process next to a busy one gets
#: almost no CPU at all, and the capture would only be lost instead of late.
ENCODER_NICE: Final = 10
#: How much the proxy keeps in memory while the pipe to the writer is full; beyond it
#: chunks are recorded as lengths only, beyond twice it not at all (see the docstring).
BACKLOG_BYTES: Final = 64 * 1024 * 1024
#: The pipe to the writer: 1 MiB (the default pipe-max-size) absorbs short stalls.
PIPE_BYTES: Final = 1 << 20

# Records on the pipe to the writer process: a kind byte, then
#   DATA  : c2s (1 byte), conn id, real length, recorded length, time_ns; the bytes
#   OPEN  : conn id, time_ns, JSON length; JSON {path, type, pid, uid, gid, command}
#   CLOSE : first (0 unknown, 1 c2s, 2 s2c), conn id, time_ns
#   FDS   : as OPEN; JSON {direction, fds}: descriptors passed with the next chunk
_DATA: Final = struct.Struct("<BBIIIQ")
_OPEN: Final = struct.Struct("<BIQI")
_CLOSE: Final = struct.Struct("<BBIQ")
_KIND_DATA: Final = 1
_KIND_OPEN: Final = 2
_KIND_CLOSE: Final = 3
_KIND_FDS: Final = 4
_FIRST_CODE: Final = {None: 0, Direction.C2S: 1, Direction.S2C: 2}
_FIRST: Final = (None, Direction.C2S, Direction.S2C)


def _cannot_write(path: str, exc: OSError) -> UdskitError:
    return UdskitError(f"cannot write {path}: {os.strerror(exc.errno or errno.EIO).lower()}")


def _open_for_writing(path: str) -> tuple[int, bool]:
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
            return os.dup(1), False  # ours to close; never truncated (see _truncate)
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
        from udskit.inspect.fdscan import user_name

        raise UsageError(
            f"cannot write {path}: it belongs to {user_name(st.st_uid)} (uid {st.st_uid}), "
            "not to you; udskit writes captures only into files it creates or that are "
            "your own: remove it or pick another path"
        )
    return fd, False


def _truncate(fd: int) -> None:
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
            fd, _created = _open_for_writing(target)
            if target != "-":
                _truncate(fd)
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
                raise _cannot_write(str(self.path), exc) from None
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
        self._fd, self._created = _open_for_writing(path)
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
                _truncate(fd)
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from udskit.capture.sinks import writer_main; writer_main()",
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
        meta = json.dumps(
            {
                "midstream": midstream,
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

    def fds(self, conn: int, direction: Direction, kinds: tuple[str, ...], time_ns: int) -> None:
        """Descriptors passed with the next chunk of `conn` in `direction`."""
        meta = json.dumps({"direction": direction.value, "fds": list(kinds)}).encode()
        self.out += _OPEN.pack(_KIND_FDS, conn, time_ns, len(meta))
        self.out += meta

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
            records = self._shed(records, keep_lengths=self._queued <= limit)
        self._queue.append(records)
        self._queued += len(records)

    def _shed(self, records: bytes | bytearray, keep_lengths: bool) -> bytearray:
        """The records with the bytes of every chunk left out (keep_lengths: each chunk
        stays as its header, with recorded length 0) or with the chunks left out."""
        kept = bytearray()
        view = memoryview(records)
        pos, size = 0, len(records)
        while pos < size:
            kind = records[pos]
            if kind == _KIND_DATA:
                k, c2s, conn, length, caplen, t = _DATA.unpack_from(records, pos)
                if keep_lengths:
                    kept += _DATA.pack(k, c2s, conn, length, 0, t)
                    self.cut_chunks += 1
                    self.cut_bytes += caplen
                else:
                    self.dropped_chunks += 1
                pos += _DATA.size + caplen
            elif kind in (_KIND_OPEN, _KIND_FDS):
                meta_len = _OPEN.unpack_from(records, pos)[3]
                end = pos + _OPEN.size + meta_len
                kept += view[pos:end]
                pos = end
            else:
                kept += view[pos : pos + _CLOSE.size]
                pos += _CLOSE.size
        view.release()
        return kept

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


def writer_main() -> None:
    """The writer: records on stdin -> pcapng on the fd in argv[1], in two processes.

    This process (normal priority) only moves records from the pipe into spool files
    (`_spool_records`), which costs little CPU; its child, the encoder
    (`_encode_spool`), turns them into pcapng at SCHED_IDLE: while traffic flows it
    takes only CPU time nobody else wants. Encoding a chunk costs about what
    forwarding it costs, and at nice 10 on a 2-CPU machine the encoder still took a
    fifth of redis-benchmark's request rate through the proxy (benchmarks/dump.py).
    Nothing is dropped for it: records the encoder has not reached wait in unlinked
    spool files next to the capture (in TMPDIR for a FIFO or device), each handed over
    at SPOOL_FILE_BYTES and freed once encoded. When the pipe ends, this process puts
    the encoder back in the normal class so that the rest is written promptly; where
    that would not be allowed (no root, no CAP_SYS_NICE, RLIMIT_NICE too low), the
    encoder is never made SCHED_IDLE and just runs at nice ENCODER_NICE. A write
    error ends it with one line on stderr (shared with this process) and status 1."""
    import socket

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    fd, port, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    new_spool = _spool_opener(fd)
    try:
        spool = new_spool()
    except OSError as exc:
        print(_cannot_write(path, exc), file=sys.stderr, flush=True)
        sys.exit(1)
    idle = _can_leave_idle_class()
    # Spooler -> encoder: an eventfd to say "appended, look again" (it never fills),
    # and a socketpair for handing over a finished spool file (its final size, and the
    # next file's fd by SCM_RIGHTS); the socketpair's end is the end of the records.
    wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            ours.close()
            _detach_encoder()
            status = _encode_spool(fd, port, path, spool, wake, theirs, idle)
        finally:
            os._exit(status)
    os.close(fd)  # the encoder holds the capture file
    theirs.close()
    failed = _spool_records(spool, wake, ours, new_spool, path)
    if idle:  # no more traffic to make way for: finish at this process's priority
        with suppress(OSError):
            os.sched_setscheduler(pid, os.SCHED_OTHER, os.sched_param(0))
    ours.close()  # no more records: the encoder finishes and exits
    _pid, status = os.waitpid(pid, 0)
    sys.exit(1 if failed or status != 0 else 0)


def _can_leave_idle_class(nice: int = ENCODER_NICE) -> bool:
    """May this process move a SCHED_IDLE child at `nice` back to SCHED_OTHER?
    CAP_SYS_NICE may (root has it, except in containers that drop it, as Docker does);
    others need RLIMIT_NICE >= 20 - nice (sched(7))."""
    import resource

    with suppress(OSError, ValueError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:") and int(line.split()[1], 16) >> 23 & 1:
                return True  # CAP_SYS_NICE
    soft, _hard = resource.getrlimit(resource.RLIMIT_NICE)
    return soft == resource.RLIM_INFINITY or soft >= 20 - nice


def _detach_encoder() -> None:
    """The encoder must not keep the proxy's pipe open (the proxy would never see the
    writer go), and dies with the writer: a writer killed by a signal or the OOM killer
    leaves no encoder holding the stderr pipe the proxy reads the reason from."""
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    die_with_parent()


#: A spool file is handed to the encoder and a new one started past this size, so a
#: file is freed as soon as the encoder is done with it.
SPOOL_FILE_BYTES: Final = 64 * 1024 * 1024
_SIZE: Final = struct.Struct("<Q")


def _spool_opener(out_fd: int) -> Callable[[], int]:
    """Makes unlinked spool files on the capture's own filesystem (the user chose it
    for the capture's size), or in TMPDIR when the capture is not a regular file."""
    import tempfile

    directory = None
    if stat.S_ISREG(os.fstat(out_fd).st_mode):
        target = os.readlink(f"/proc/self/fd/{out_fd}")
        if target.startswith("/"):
            directory = os.path.dirname(target)

    def new_spool() -> int:
        if directory is not None:
            with suppress(OSError):  # no O_TMPFILE there: TMPDIR
                return os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        with tempfile.TemporaryFile() as spool:
            return os.dup(spool.fileno())

    return new_spool


def _spool_records(
    spool: int, wake: int, encoder: socket.socket, new_spool: Callable[[], int], path: str
) -> bool:
    """Append what arrives on stdin to the spool until the pipe ends; True if it failed
    (the message is on stderr: ours, or the encoder's if it died first)."""
    import select
    import socket

    encoder.setblocking(False)
    poller = select.poll()
    poller.register(0, select.POLLIN)
    poller.register(encoder, select.POLLIN)  # readable only when it is gone
    size = 0
    while True:
        if any(fd != 0 for fd, _events in poller.poll()):
            return True  # the encoder died (a full disk): it said why on stderr
        chunk = os.read(0, 1 << 20)
        if not chunk:
            os.close(spool)
            return False
        try:
            view = memoryview(chunk)
            while view:
                view = view[os.pwrite(spool, view, size + len(chunk) - len(view)) :]
            size += len(chunk)
            if size >= SPOOL_FILE_BYTES:
                following = new_spool()
                try:
                    socket.send_fds(encoder, [b"n" + _SIZE.pack(size)], [following])
                except BlockingIOError:  # many handovers queued: keep this file a while
                    os.close(following)
                else:
                    os.close(spool)
                    spool, size = following, 0
            os.eventfd_write(wake, 1)
        except BrokenPipeError:
            return True
        except OSError as exc:
            print(_cannot_write(path, exc), file=sys.stderr, flush=True)
            return True


def _encode_spool(
    fd: int, port: int, path: str, spool: int, wake: int, spooler: socket.socket, idle: bool
) -> int:
    """The encoder: spool files -> pcapng, at SCHED_IDLE (if `idle`) while records come."""
    import select
    import socket

    with suppress(OSError):
        os.nice(ENCODER_NICE)
    if idle:
        with suppress(OSError, AttributeError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    encoder = PcapngEncoder(port or None)
    encoder.header()
    decoder = _RecordDecoder(encoder)
    offset = 0
    ended = False
    spooler.setblocking(False)
    poller = select.poll()
    poller.register(spooler, select.POLLIN)
    poller.register(wake, select.POLLIN)

    def encode_to(end: int) -> None:
        nonlocal offset
        while offset < end:
            chunk = os.pread(spool, min(1 << 20, end - offset), offset)
            if not chunk:
                raise OSError(errno.EIO, "spool file cut short")
            offset += len(chunk)
            decoder.feed(chunk)
            if len(encoder.out) >= FLUSH_BYTES:
                _write_all(f, encoder.out)

    try:
        with os.fdopen(fd, "wb", buffering=0) as f:
            # The header at once: a reader of an idle capture sees a valid, empty file.
            _write_all(f, encoder.out)
            while True:
                with suppress(BlockingIOError):
                    os.eventfd_read(wake)
                # Handovers first: a finished file is encoded to its final size.
                while not ended:
                    try:
                        message, fds, flags, _addr = socket.recv_fds(spooler, 16, 1)
                    except BlockingIOError:
                        break
                    if not message:
                        ended = True
                    elif flags & socket.MSG_CTRUNC or not fds:
                        raise OSError(errno.EMFILE, "a spool file could not be received")
                    else:
                        encode_to(_SIZE.unpack_from(message, 1)[0])
                        os.close(spool)  # encoded: its space is free now
                        spool, offset = fds[0], 0
                encode_to(os.fstat(spool).st_size)
                if encoder.out:  # caught up: let readers of the file see it all
                    _write_all(f, encoder.out)
                if ended:
                    return 0
                poller.poll()
    except OSError as exc:
        # One line for the proxy to report (it reads our stderr); not a traceback.
        print(_cannot_write(path, exc), file=sys.stderr, flush=True)
        return 1


def _write_all(f: BinaryIO, out: bytearray) -> None:
    """Write and empty `out` (an unbuffered file may take less than all of it)."""
    view = memoryview(out)
    try:
        while view:
            view = view[f.write(view) or 0 :]
    finally:
        view.release()
    out.clear()


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
                encoder.opened(
                    conn,
                    meta["path"],
                    SocketType(meta["type"]),
                    client,
                    t,
                    bool(meta.get("midstream")),
                )
                pos = end
            elif kind == _KIND_CLOSE:
                if pos + close_size > size:
                    break
                _k, first, conn, t = _CLOSE.unpack_from(buf, pos)
                encoder.closed(conn, _FIRST[first], t)
                pos += close_size
            elif kind == _KIND_FDS:
                if pos + open_size > size:
                    break
                _k, conn, t, meta_len = _OPEN.unpack_from(buf, pos)
                end = pos + open_size + meta_len
                if end > size:
                    break
                meta = json.loads(bytes(view[pos + open_size : end]))
                encoder.fds(conn, Direction(meta["direction"]), tuple(meta["fds"]), t)
                pos = end
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
        pack = _DATA.pack
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
            out += pack(_KIND_DATA, direction is c2s, conn.id, real, n, time_ns)
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
