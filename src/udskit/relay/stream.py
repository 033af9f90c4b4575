"""I/O: one forwarded connection (stream or seqpacket): two pumps and their states.

Each direction is a pump from a source socket to a destination socket. A pump reads
only while it has nothing waiting to be written, so a slow reader slows its writer
(back-pressure) instead of filling our memory. EOF from a source becomes
shutdown(SHUT_WR) on its destination, and the other pump keeps going (half-close);
the connection ends when both pumps have ended. An error on either side (ECONNRESET,
EPIPE) ends both at once and is reported once, as a reset. Those rules are tables in
`udskit.relay.pumpstate` (pure); this module does the I/O they name and reports what it
found. A session knows the relay only as its `RelayCore`.

Two kinds of pump:

* `SplicePump` moves bytes socket -> pipe -> socket with splice(2), so they are never
  copied into this process; used when both sides are stream sockets and no tap
  watches. The pipe is enlarged to 1 MiB (F_SETPIPE_SZ, capped by
  /proc/sys/fs/pipe-max-size for unprivileged users) so one splice moves a lot.
* `CopyPump` does recv_into a buffer shared by the whole relay, hands the chunk to the
  tap, and sends it; only an unsent remainder is copied out of the shared buffer.
  With a seqpacket source it reads whole records (MSG_TRUNC reveals a record larger
  than the buffer rather than cutting it silently). An empty record reads as 0 bytes,
  like EOF; SO_TIMESTAMP tells them apart, as the kernel attaches a timestamp to every
  record it hands over and to nothing when it reports EOF (unix_dgram_recvmsg).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from collections.abc import Callable
from contextlib import suppress
from typing import TYPE_CHECKING, Final, final

from udskit.cmsg import SCM_MAX_FD, decode_ancillary, encode_rights, receive_space
from udskit.errors import errno_name
from udskit.relay.core import RelayCore, SessionEnd
from udskit.relay.events import CopyMode, EventKind
from udskit.relay.loop import IN
from udskit.relay.passing import Credentials, close_all, describe_fds
from udskit.relay.pumpstate import (
    JUST_READABLE,
    Outcome,
    PumpAction,
    PumpState,
    SessionAction,
    SideAction,
    after_pump_done,
    flush_first,
    interest,
    side_action,
)
from udskit.relay.pumpstate import step as next_step
from udskit.relay.sides import socket_type
from udskit.socktype import SocketType
from udskit.tap import ConnectionInfo, Direction

if TYPE_CHECKING:
    import subprocess

__all__ = ["CopyPump", "Credentials", "Session", "SplicePump", "describe_fds"]

READING: Final = PumpState.READING
BLOCKED: Final = PumpState.BLOCKED
DONE: Final = PumpState.DONE
WATCH: Final = PumpAction.WATCH
SHUTDOWN_WRITE: Final = PumpAction.SHUTDOWN_WRITE

SPLICE_FLAGS: Final = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
#: Bytes per splice: the pipe's capacity. 1 MiB is the default pipe-max-size; a bigger
#: pipe did not move bulk data faster here (benchmarks/relay.py).
PIPE_SIZE: Final = 1 << 20
#: SO_TIMESTAMP (asm-generic/socket.h), which the socket module does not export.
SO_TIMESTAMP: Final = 29
_TIMESTAMP_SPACE: Final = socket.CMSG_SPACE(16)  # struct timeval (64-bit)
#: Control buffer of a unix source: SCM_MAX_FD descriptors and credentials. With no
#: room for descriptors the kernel closes them (MSG_CTRUNC) and they are lost.
_FD_SPACE: Final = receive_space(SCM_MAX_FD, credentials=True)
#: SO_SNDBUF for spliced connections; 1 MiB is a guess between the 208 KiB default and
#: net.core.wmem_max (bulk runs of benchmarks/relay.py were faster, but noisy).
SPLICE_SNDBUF: Final = 1 << 20
#: struct linger {l_onoff=1, l_linger=0}: close() sends RST (socket(7), SO_LINGER).
_LINGER_RESET: Final = b"\x01\x00\x00\x00\x00\x00\x00\x00"


class _Pump:
    """One direction of a session. Its `state` (READING, BLOCKED, DONE) changes only as
    `pumpstate.TRANSITIONS` says, through `_after`; the subclasses do the I/O."""

    __slots__ = ("count", "direction", "dst", "session", "src", "state")

    def __init__(
        self, session: Session, src: socket.socket, dst: socket.socket, direction: Direction
    ) -> None:
        self.session = session
        self.src = src
        self.dst = dst
        self.direction = direction
        self.state = READING
        self.count = 0

    def on_readable(self) -> None:
        raise NotImplementedError

    def on_writable(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def _after(self, outcome: Outcome) -> None:
        """Carry out what the table says follows `outcome` (never FAILED: see _fail)."""
        step = next_step(self.state, outcome)
        self.state = step.state
        action = step.action
        if action is WATCH:
            self.session.update()
        elif action is SHUTDOWN_WRITE:
            # The source ended and everything was delivered: pass the EOF on (half-close).
            with suppress(OSError):
                self.dst.shutdown(socket.SHUT_WR)
            self.session.pump_done(self)

    def _fail(self, reading: bool, exc: OSError | None, detail: str = "") -> None:
        """A read (`reading`) or write failed: the table ends the pump with a reset."""
        step = next_step(self.state, Outcome.FAILED)
        self.state = step.state
        self.session.reset(self.direction, reading, exc, detail)


@final
class SplicePump(_Pump):
    __slots__ = ("dst_fd", "inpipe", "pipe_r", "pipe_size", "pipe_w", "src_fd")

    def __init__(
        self, session: Session, src: socket.socket, dst: socket.socket, direction: Direction
    ) -> None:
        super().__init__(session, src, dst, direction)
        self.src_fd = src.fileno()
        self.dst_fd = dst.fileno()
        self.pipe_r, self.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            self.pipe_size = fcntl.fcntl(self.pipe_w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:  # EPERM past the user's pipe quota: keep the default 64 KiB
            self.pipe_size = fcntl.fcntl(self.pipe_w, fcntl.F_GETPIPE_SZ)
        self.inpipe = 0

    def on_readable(self) -> None:
        try:
            n = os.splice(self.src_fd, self.pipe_w, self.pipe_size, flags=SPLICE_FLAGS)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(True, exc)
            return
        if n == 0:
            self._after(Outcome.EOF)
            return
        self.inpipe = n
        self.on_writable()

    def on_writable(self) -> None:
        """Move what the pipe holds to the destination. From READING (just read) this
        is DELIVERED or HELD; from BLOCKED, DRAINED or still HELD."""
        while self.inpipe:
            try:
                m = os.splice(self.pipe_r, self.dst_fd, self.inpipe, flags=SPLICE_FLAGS)
            except BlockingIOError:
                if self.state is READING:
                    self._after(Outcome.HELD)
                return
            except OSError as exc:
                self._fail(False, exc)
                return
            self.count += m
            self.inpipe -= m
        if self.state is BLOCKED:
            self._after(Outcome.DRAINED)

    def close(self) -> None:
        for fd in (self.pipe_r, self.pipe_w):
            with suppress(OSError):
                os.close(fd)


@final
class CopyPump(_Pump):
    __slots__ = (
        "credentials",
        "flags",
        "general",
        "limit",
        "pending",
        "pending_fds",
        "read_stream",
        "record",
        "send",
        "unix",
    )

    def __init__(
        self,
        session: Session,
        src: socket.socket,
        dst: socket.socket,
        direction: Direction,
        *,
        record: bool,
        limit: int,
        credentials: Credentials | None = None,
    ) -> None:
        super().__init__(session, src, dst, direction)
        #: How a chunk goes out: plain send, or sendmsg with SCM_CREDENTIALS.
        self.send = dst.send if credentials is None else credentials.sender(dst)
        self.credentials = credentials
        #: Unix to unix: descriptors (SCM_RIGHTS) are read with the bytes and passed on.
        self.unix = src.family == socket.AF_UNIX and dst.family == socket.AF_UNIX
        #: Descriptors received with `pending`'s bytes, not yet passed on (ours to close).
        self.pending_fds: tuple[int, ...] = ()
        self.record = record
        self.flags = socket.MSG_TRUNC if record else 0
        self.limit = limit
        self.pending: memoryview | None = None
        if record:
            src.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 1)
        #: The read-tap-send step of a byte stream, as a closure over everything it
        #: touches. Session registers it as the source socket's handler: it does the
        #: step itself when the only event is "readable" and the pump reads (the
        #: per-chunk path of `udskit dump`), and passes any other event to `general`.
        self.general: Callable[[int], None] | None = None
        self.read_stream = self._stream_reader()

    def _stream_reader(self) -> Callable[[int], None]:
        session = self.session
        core = session.core
        view = core.view
        limit = self.limit
        recv_into = self.src.recv_into
        send = self.send
        direction = self.direction
        time_ns = time.time_ns
        if self.unix:
            return self._unix_stream_reader()

        def read_stream(events: int = IN) -> None:
            if events != IN or self.state is not READING:
                if self.general is not None:
                    self.general(events)
                return
            try:
                n = recv_into(view, limit)
            except BlockingIOError:
                return
            except OSError as exc:
                self._fail(True, exc)
                return
            if not n:
                self._after(Outcome.EOF)
                return
            chunk = view[:n]
            tap = core.tap
            if tap is not None:
                tap.data(session.conn, direction, chunk, time_ns())
            self.count += n
            try:
                sent = send(chunk)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self._fail(False, exc)
                return
            if sent < n:
                self.pending = memoryview(bytes(chunk[sent:]))  # the buffer is reused
                self._after(Outcome.HELD)

        return read_stream

    def _unix_stream_reader(self) -> Callable[[int], None]:
        """The same step for a unix source: recvmsg with room for descriptors, which
        go on with the chunk they came with (a separate closure, so the plain reader
        above stays as it was)."""
        session = self.session
        core = session.core
        buffers = (core.view[: self.limit],)
        view = core.view
        recvmsg_into = self.src.recvmsg_into
        send = self.send
        direction = self.direction
        time_ns = time.time_ns

        def read_stream(events: int = IN) -> None:
            if events != IN or self.state is not READING:
                if self.general is not None:
                    self.general(events)
                return
            try:
                n, ancillary, flags, _addr = recvmsg_into(buffers, _FD_SPACE)
            except BlockingIOError:
                return
            except OSError as exc:
                self._fail(True, exc)
                return
            fds = self._take_fds(ancillary, flags) if ancillary else ()
            if not n:
                close_all(fds)  # (a stream carries no descriptors without a byte)
                self._after(Outcome.EOF)
                return
            chunk = view[:n]
            tap = core.tap
            if tap is not None:
                if fds:  # first: the descriptors go with this chunk
                    self._report_fds(fds)
                tap.data(session.conn, direction, chunk, time_ns())
            self.count += n
            try:
                sent = send(chunk) if not fds else self._send_fds(chunk, fds)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                close_all(fds)
                self._fail(False, exc)
                return
            if sent < n:
                self.pending = memoryview(bytes(chunk[sent:]))  # the buffer is reused
                if sent == 0 and fds:
                    self.pending_fds = fds  # they go with the first byte
                self._after(Outcome.HELD)

        return read_stream

    def _take_fds(self, ancillary: list[tuple[int, int, bytes]], flags: int) -> tuple[int, ...]:
        """The descriptors a message brought (now open here). SCM_CREDENTIALS a client
        sent explicitly are not passed on: the proxy's own, or the carried ones, go."""
        got = decode_ancillary(ancillary, flags)
        if got.pidfd is not None:
            close_all((got.pidfd,))
        return got.fds

    def _send_fds(self, chunk: bytes | memoryview, fds: tuple[int, ...]) -> int:
        """Send `chunk` with `fds` (and the carried credentials), then close our copies.
        A stream read returns the descriptors of one message at most (the kernel stops
        a read after them, unix_stream_read_generic), so they fit in one sendmsg; they
        go with the first byte sent. BlockingIOError: nothing went, the caller keeps
        both."""
        sent = self.dst.sendmsg((chunk,), self._ancillary(fds[:SCM_MAX_FD]))
        close_all(fds)
        return sent

    def _ancillary(self, fds: tuple[int, ...]) -> list[tuple[int, int, bytes]]:
        rights = encode_rights(fds)
        if self.credentials is None:
            return [rights]
        return self.credentials.with_rights(rights)

    def _report_fds(self, fds: tuple[int, ...]) -> None:
        report = getattr(self.session.core.tap, "fds", None)
        if callable(report):
            report(self.session.conn, self.direction, describe_fds(fds), time.time_ns())

    def close(self) -> None:
        fds, self.pending_fds = self.pending_fds, ()
        close_all(fds)

    def on_readable(self) -> None:
        if not self.record:
            self.read_stream(IN)
            return
        session = self.session
        core = session.core
        view = core.view
        try:
            n, ancillary, flags, _addr = self.src.recvmsg_into(
                [view[: self.limit]], _TIMESTAMP_SPACE + _FD_SPACE, self.flags
            )
            eof = n == 0 and not ancillary  # no record came: the peer shut down
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(True, exc)
            return
        if eof:
            self._after(Outcome.EOF)
            return
        fds = self._take_fds(ancillary, flags) if len(ancillary) > 1 else ()
        if n > self.limit:  # MSG_TRUNC: the record was bigger than our buffer
            close_all(fds)
            too_big = f"a {n}-byte record exceeds the relay's {self.limit}-byte buffer"
            self._fail(True, None, too_big)
            return
        chunk = view[:n]
        tap = core.tap
        if tap is not None:
            if fds:  # first: the descriptors go with this chunk
                self._report_fds(fds)
            tap.data(session.conn, self.direction, chunk, time.time_ns())
        self.count += n
        try:
            sent = self.send(chunk) if not fds else self._send_fds(chunk, fds)
        except BlockingIOError:
            sent = 0
            self.pending_fds = fds
        except OSError as exc:
            close_all(fds)
            self._fail(False, exc)
            return
        if sent < n or (n == 0 and self.pending_fds):
            self.pending = memoryview(bytes(chunk[sent:]))  # the buffer is reused
            self._after(Outcome.HELD)

    def on_writable(self) -> None:
        pending = self.pending
        if pending is None:
            return
        try:
            if self.pending_fds:
                fds, self.pending_fds = self.pending_fds, ()
                try:
                    sent = self._send_fds(pending, fds)
                except BlockingIOError:
                    self.pending_fds = fds
                    raise
            else:
                sent = self.send(pending)
        except BlockingIOError:
            return  # WOULD_BLOCK: still BLOCKED, nothing to do
        except OSError as exc:
            self._fail(False, exc)
            return
        if sent < len(pending):
            self.pending = pending[sent:]
            return  # HELD: still BLOCKED, nothing to do
        self.pending = None
        self._after(Outcome.DRAINED)


@final
class Session:
    """One client connection and its upstream, forwarded both ways."""

    __slots__ = (
        "c2s",
        "child",
        "client",
        "client_fd",
        "closed",
        "conn",
        "core",
        "first",
        "mode",
        "s2c",
        "upstream",
        "upstream_fd",
    )

    def __init__(
        self,
        core: RelayCore,
        conn: ConnectionInfo,
        client: socket.socket,
        upstream: socket.socket,
        mode: CopyMode,
        child: subprocess.Popen[bytes] | None = None,
        credentials: tuple[Credentials | None, Credentials | None] | None = None,
    ) -> None:
        self.core = core
        self.conn = conn
        self.client = client
        self.upstream = upstream
        self.client_fd = client.fileno()
        self.upstream_fd = upstream.fileno()
        self.mode = mode
        self.child = child
        self.closed = False
        self.first: Direction | None = None
        if mode is CopyMode.SPLICE:
            for sock in (client, upstream):
                # A unix stream socket queues at most SO_SNDBUF bytes (of the sender):
                # more per wake-up, fewer of them. A limit, not an allocation.
                with suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SPLICE_SNDBUF)
            self.c2s: _Pump = SplicePump(self, client, upstream, Direction.C2S)
            try:
                self.s2c: _Pump = SplicePump(self, upstream, client, Direction.S2C)
            except BaseException:
                self.c2s.close()
                raise
        else:
            c2s_creds, s2c_creds = credentials or (None, None)
            size = core.view_size
            self.c2s = _copy_pump(self, client, upstream, Direction.C2S, size, c2s_creds)
            self.s2c = _copy_pump(self, upstream, client, Direction.S2C, size, s2c_creds)

    def start(self) -> None:
        loop = self.core.loop
        c2s, s2c = self.c2s, self.s2c
        if isinstance(c2s, CopyPump) and not c2s.record:
            c2s.general = self._on_client
            loop.register(self.client_fd, IN, c2s.read_stream)
        else:
            loop.register(self.client_fd, IN, self._on_client)
        if isinstance(s2c, CopyPump) and not s2c.record:
            s2c.general = self._on_upstream
            loop.register(self.upstream_fd, IN, s2c.read_stream)
        else:
            loop.register(self.upstream_fd, IN, self._on_upstream)

    # -- events -----------------------------------------------------------------------------
    # What an event leads to is decided in pumpstate (flush_first, side_action,
    # after_pump_done, interest); these methods carry it out.
    def _on_client(self, events: int) -> None:
        c2s = self.c2s
        if events == JUST_READABLE and c2s.state is READING:
            c2s.on_readable()  # = flush_first False, side_action READ (pumpstate)
            return
        s2c = self.s2c
        if flush_first(events, s2c.state):
            s2c.on_writable()
            if self.closed:
                return
        action = side_action(events, c2s.state, s2c.state)
        if action is SideAction.READ:
            c2s.on_readable()
        elif action is SideAction.PEER_GONE:
            self._peer_gone(Direction.C2S)
        elif action is SideAction.PARK:  # its bytes wait for upstream to drain
            self.core.loop.park(self.client_fd)

    def _on_upstream(self, events: int) -> None:
        s2c = self.s2c
        if events == JUST_READABLE and s2c.state is READING:
            s2c.on_readable()
            return
        c2s = self.c2s
        if flush_first(events, c2s.state):
            c2s.on_writable()
            if self.closed:
                return
        action = side_action(events, s2c.state, c2s.state)
        if action is SideAction.READ:
            s2c.on_readable()
        elif action is SideAction.PEER_GONE:
            self._peer_gone(Direction.S2C)
        elif action is SideAction.PARK:
            self.core.loop.park(self.upstream_fd)

    def update(self) -> None:
        """Ask epoll for what the pumps now want (only changes cost a syscall)."""
        if self.closed:
            return
        c2s, s2c = self.c2s.state, self.s2c.state
        modify = self.core.loop.modify
        modify(self.client_fd, interest(c2s, s2c))
        modify(self.upstream_fd, interest(s2c, c2s))

    def pump_done(self, pump: _Pump) -> None:
        if self.first is None:
            self.first = pump.direction
        if after_pump_done(self.c2s.state, self.s2c.state) is SessionAction.CLOSE:
            self._close(EventKind.CLOSED, self.first, "")
        else:
            self.update()

    def _peer_gone(self, direction: Direction) -> None:
        """The side whose EOF we already passed on has now closed completely (EPOLLHUP),
        so nothing more can reach it: the connection is over."""
        side = "client" if direction is Direction.C2S else "upstream"
        self._close(EventKind.CLOSED, self.first, f"{side} closed completely")

    def reset(
        self, direction: Direction, reading: bool, exc: OSError | None, detail: str = ""
    ) -> None:
        """An error on one side: close both at once, report once."""
        if self.closed:
            return
        client_side = (direction is Direction.C2S) == reading
        side = "client" if client_side else "upstream"
        if exc is not None:
            err = exc.errno or errno.EIO
            detail = f"{side} {'reset the connection' if err == errno.ECONNRESET else 'failed'}"
            detail += f" ({errno_name(err)})"
        else:
            detail = f"{side}: {detail}"
        for sock in (self.client, self.upstream):
            if sock.family != socket.AF_UNIX:  # pass the reset on: RST, not FIN
                with suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        self._close(EventKind.RESET, None, detail)

    def stop(self) -> None:
        """The relay is shutting down."""
        self._close(EventKind.CLOSED, self.first, "relay stopped")

    def _close(self, kind: EventKind, first: Direction | None, detail: str) -> None:
        if self.closed:
            return
        self.closed = True
        core = self.core
        core.loop.unregister(self.client_fd)
        core.loop.unregister(self.upstream_fd)
        self.c2s.close()
        self.s2c.close()
        self.client.close()
        self.upstream.close()
        now = time.time_ns()
        if core.tap is not None:
            core.tap.closed(self.conn, first, now)
        end = SessionEnd(
            kind,
            now,
            self.conn,
            self.mode,
            self.c2s.count,
            self.s2c.count,
            self.first,  # (the event keeps it even after a reset; the tap gets `first`)
            detail,
            self.child,
        )
        core.session_ended(self, end)


def _copy_pump(
    session: Session,
    src: socket.socket,
    dst: socket.socket,
    direction: Direction,
    size: int,
    credentials: Credentials | None = None,
) -> CopyPump:
    record = socket_type(src) is SocketType.SEQPACKET
    limit = size if record else STREAM_CHUNK
    if socket_type(dst) is SocketType.SEQPACKET and not record:
        # Each chunk of a byte stream becomes one record; keep it well below the
        # record size limit (SO_SNDBUF) so send never fails with EMSGSIZE.
        limit = min(limit, 64 * 1024)
    return CopyPump(
        session, src, dst, direction, record=record, limit=limit, credentials=credentials
    )


#: Bytes read per recv from a stream source (asyncio reads 256 KiB too).
STREAM_CHUNK: Final = 256 * 1024
