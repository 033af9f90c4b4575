"""I/O: the pcapng writer's two processes: `writer_main` (spooler) and its encoder.

`udskit.capture.pcapwriter.PcapngWriter` starts `writer_main` with the capture file as
an open fd and the records (udskit.capture.writerwire) on its stdin. The spooler, at
normal priority, only moves records from the pipe into spool files, which costs little
CPU, so a busy machine cannot starve it into losing them. Its child, the encoder,
turns them into pcapng at nice ENCODER_NICE, and at SCHED_IDLE while traffic flows
where that class can be left again (tried, see `can_leave_idle_class`): under load the
CPU goes to the traffic first, and the file is finished promptly at the end.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import struct
import sys
import threading
from collections.abc import Callable
from contextlib import suppress
from typing import TYPE_CHECKING, BinaryIO, Final

from udskit.capture.pcapng import PcapngEncoder
from udskit.capture.writerwire import FLUSH_BYTES, RecordDecoder, cannot_write
from udskit.signals import die_with_parent

if TYPE_CHECKING:
    import socket

__all__ = ["ENCODER_NICE", "SPOOL_FILE_BYTES", "can_leave_idle_class", "writer_main"]

#: The encoder's niceness (see writer_main). The writer itself keeps the normal
#: priority: it only appends to spool files, but at nice 10, next to a busy loop on the
#: same CPU, it got a tenth of that CPU and fell more than the proxy's BACKLOG_BYTES
#: (udskit.capture.pcapwriter) behind, and a hundred clients' megabytes were recorded
#: as lengths only (tests/io/test_dump.py).
#: Not SCHED_IDLE for the writer either: an idle-class process next to a busy one gets
#: almost no CPU at all, and the capture would only be lost instead of late.
ENCODER_NICE: Final = 10


def writer_main() -> None:
    """The writer: records on stdin -> pcapng on the fd in argv[1], in two processes.

    This process (normal priority) only moves records from the pipe into spool files
    (`_spool_records`), which costs little CPU; its child, the encoder
    (`_encode_spool`), turns them into pcapng at nice ENCODER_NICE and SCHED_IDLE:
    while traffic flows it takes only CPU time nobody else wants. Encoding a chunk
    costs about what forwarding it costs, and at nice 10 alone, on a 2-CPU machine, the
    encoder took a fifth of redis-benchmark's request rate through the proxy
    (benchmarks/dump.py); hence the idle class.

    Nothing is dropped for it: records the encoder has not reached wait in unlinked
    spool files next to the capture (in TMPDIR for a FIFO or device), each handed over
    at SPOOL_FILE_BYTES and freed once encoded. When the pipe ends, this process puts
    the encoder back in the normal class so that the rest is written promptly; where
    that would not be allowed (`can_leave_idle_class` says no), the encoder is never
    made SCHED_IDLE and just runs at nice ENCODER_NICE. A write error ends it with one
    line on stderr (shared with this process) and status 1."""
    import socket

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    fd, port, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    new_spool = _spool_opener(fd)
    try:
        spool = new_spool()
    except OSError as exc:
        print(cannot_write(path, exc), file=sys.stderr, flush=True)
        sys.exit(1)
    idle = can_leave_idle_class()
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


def can_leave_idle_class(nice: int = ENCODER_NICE) -> bool:
    """May this process move a SCHED_IDLE child at `nice` back to SCHED_OTHER?

    Tried, not deduced: a throwaway thread (the scheduling class and the nice value are
    per thread on Linux) takes `nice`, enters SCHED_IDLE and tries to leave it. The
    kernel allows that with CAP_SYS_NICE in the initial user namespace, or with
    RLIMIT_NICE >= 20 - nice (sched(7), __sched_setscheduler); reading CapEff instead
    said yes in a rootless container, whose root has every capability in its own user
    namespace only, and the encoder was then stuck in SCHED_IDLE. The child has this
    process's credentials and limits, so the thread's answer is the child's.
    """
    answer: list[bool] = []

    def attempt() -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except (OSError, AttributeError):
            answer.append(False)  # cannot even enter it: the encoder stays out too
            return
        try:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        except OSError:
            answer.append(False)
        else:
            answer.append(True)

    trial = threading.Thread(target=attempt, name="udskit-sched-trial", daemon=True)
    trial.start()
    trial.join()
    return answer == [True]


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
            print(cannot_write(path, exc), file=sys.stderr, flush=True)
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
    decoder = RecordDecoder(encoder)
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
        print(cannot_write(path, exc), file=sys.stderr, flush=True)
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
