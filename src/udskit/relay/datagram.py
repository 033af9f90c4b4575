"""I/O: datagram relaying: a bound socket in front, one upstream socket per sender.

The front socket (`unix-recvfrom:`) receives from anyone. For each sender address the
relay opens its own datagram socket, autobound and connected to RIGHT, so the server
sees one distinct peer per client and its replies come back on that socket; the relay
sends them to the client's address with sendto. A sender that never bound a name
(unix(7): no autobind without SO_PASSCRED) cannot get replies: such senders are told
apart by their credentials instead, each gets its own upstream socket too, and replies
to them are dropped (and counted).

SO_PASSCRED on the front socket makes the kernel attach the sender's pid/uid/gid to
every datagram (SCM_CREDENTIALS), which gives --allow-uid and the tap the same facts
as SO_PEERCRED gives for connections. With --allow-uid/--allow-gid every datagram is
checked, not only a sender's first: a socket address says nothing about who sends.
An association idle for `dgram_idle` seconds is closed; replies a client leaves
unread for that long are dropped (and counted) from then on, until it reads again.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Final, final

from udskit.access import Admission
from udskit.address import UnixAddress, decode_sockaddr
from udskit.cmsg import SCM_MAX_FD, decode_ancillary, encode_rights, receive_space
from udskit.credswitch import connect_as, process_groups
from udskit.errors import errno_name
from udskit.identity import Identity
from udskit.relay.core import SCARCE_PAUSE, RelayCore
from udskit.relay.events import CopyMode, EventKind, RelayEvent
from udskit.relay.loop import IN, OUT, Timer
from udskit.relay.passing import Credentials, close_all, describe_fds
from udskit.relay.sides import ListenSide, Target
from udskit.tap import ClientInfo, ConnectionInfo, Direction

_UCRED: Final = struct.Struct("3i")
#: Credentials and up to SCM_MAX_FD descriptors (a sender's SCM_RIGHTS go on).
_ANC_SIZE: Final = receive_space(SCM_MAX_FD, credentials=True)
#: Retrying replies to a client whose queue is full: first delay and the most.
_REPLY_RETRY: Final = 0.002
_REPLY_RETRY_MAX: Final = 0.5
#: A sender that never bound a name: (pid, uid, gid) from SCM_CREDENTIALS tells it apart.
Key = bytes | str | tuple[int | None, int | None, int | None]


@final
class _Association:
    """One sender and its own upstream socket."""

    __slots__ = (
        "c2s",
        "conn",
        "creds",
        "deaf",
        "dropped",
        "fd",
        "key",
        "last",
        "peer",
        "replies",
        "retry",
        "s2c",
        "send",
        "sock",
        "stuck_since",
        "waiting",
    )

    def __init__(self, key: Key, peer: object, sock: socket.socket, conn: ConnectionInfo) -> None:
        self.key = key
        self.peer = peer  # what sendto takes; None for an unbound sender
        self.sock = sock
        #: With identities carried: the SCM_CREDENTIALS each datagram goes on with.
        self.creds: Credentials | None = None
        self.send: Callable[[bytes | memoryview], int] = sock.send
        self.fd = sock.fileno()
        self.conn = conn
        self.last = time.monotonic()
        self.c2s = 0
        self.s2c = 0
        self.waiting: deque[bytes] = deque()  # to upstream, when its queue was full
        self.replies: deque[bytes] = deque()  # to the client, likewise
        self.retry = _REPLY_RETRY  # next delay before trying the replies again
        self.stuck_since = 0.0  # when the client's queue was first found full
        self.deaf = False  # gave up on it: drop replies while its queue stays full
        self.dropped = 0  # replies that never reached the client


@final
class DatagramRelay:
    """The datagram front of a relay: reads `front`, one association per sender.

    Shares the relay's loop, buffer, tap, totals and events through `core`; the
    options that only datagrams need come as arguments: `right` (RIGHT as text, for
    the records), `admission` (checked on every datagram when it filters),
    `max_clients` (senders at once), `carry_identity`, and `idle` (seconds before a
    quiet association is closed).
    """

    def __init__(
        self,
        core: RelayCore,
        front: ListenSide,
        target: Target,
        *,
        right: str,
        admission: Admission,
        max_clients: int | None = None,
        carry_identity: bool = False,
        idle: float = 60.0,
    ) -> None:
        self.core = core
        self.front = front
        self.target = target
        self.right = right
        self.admission = admission
        self.max_clients = max_clients
        self.carry_identity = carry_identity
        self.idle = idle
        self.fd = front.sock.fileno()
        self.assocs: dict[Key, _Association] = {}
        self.blocked = 0  # associations with datagrams waiting for upstream
        self.scarce: Timer | None = None  # out of fds: reading paused until this fires
        self._check_each = admission.filters
        front.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        core.loop.register(self.fd, IN, self._on_front)
        self._sweep_timer = core.loop.call_later(idle / 2, self._sweep)

    # -- client -> upstream -----------------------------------------------------------------
    def _on_front(self, _events: int) -> None:
        core = self.core
        view = core.view
        for _ in range(64):
            if self.blocked:
                return
            try:
                n, anc, flags, raw = self.front.sock.recvmsg_into(
                    [view], _ANC_SIZE, socket.MSG_DONTWAIT
                )
            except BlockingIOError:
                return
            except OSError as exc:
                core.emit(EventKind.ERROR, None, f"recv on {self.front.spec}: {exc.strerror}")
                return
            # Descriptors first: installed in this process, they are ours to close on
            # every path that does not pass them on.
            fds = decode_ancillary(anc, flags).fds if len(anc) > 1 else ()
            if flags & socket.MSG_TRUNC:
                close_all(fds)
                core.emit(EventKind.ERROR, None, "a datagram larger than 4 MiB was cut; dropped")
                continue
            pid, uid, gid = _credentials(anc)
            bound = raw not in (None, "", b"")
            key: Key = raw if bound else (pid, uid, gid)
            if self._check_each and not self.admission.admits(uid, gid, ()):
                close_all(fds)
                self._refuse(ClientInfo(pid, uid, gid), raw if bound else None)
                continue
            assoc = self.assocs.get(key)
            if assoc is None:
                assoc = self._associate(key, raw if bound else None, ClientInfo(pid, uid, gid))
                if assoc is None:
                    close_all(fds)
                    if self.scarce is not None:
                        return
                    continue
            chunk = view[:n]
            if core.tap is not None:
                report = getattr(core.tap, "fds", None)
                if fds and callable(report):  # first: the descriptors go with this chunk
                    report(assoc.conn, Direction.C2S, describe_fds(fds), time.time_ns())
                core.tap.data(assoc.conn, Direction.C2S, chunk, time.time_ns())
            assoc.last = time.monotonic()
            assoc.c2s += n
            creds = assoc.creds
            if (
                creds is not None
                and (creds.pid, creds.uid, creds.gid) != (pid, uid, gid)
                and pid is not None
                and uid is not None
                and gid is not None
            ):
                assoc.creds = Credentials(pid, uid, gid)  # this datagram's own sender
                assoc.send = assoc.creds.sender(assoc.sock)
            if fds:
                self._pass_fds(assoc, chunk, fds)
                continue
            # (No datagram waits for upstream here: self.blocked stops this loop first.)
            try:
                assoc.send(chunk)
            except BlockingIOError:
                self._wait_upstream(assoc, bytes(chunk))
            except OSError as exc:
                self._lost(assoc, exc)

    def _pass_fds(self, assoc: _Association, chunk: memoryview, fds: tuple[int, ...]) -> None:
        """A datagram with descriptors: passed on with them (and the sender's
        credentials when identities are carried), then closed here. If upstream's queue
        is full the bytes wait as usual, but the descriptors cannot: they are dropped
        and an error event says so."""
        core = self.core
        rights = encode_rights(fds)
        ancillary = [rights] if assoc.creds is None else assoc.creds.with_rights(rights)
        try:
            assoc.sock.sendmsg((chunk,), ancillary)
        except BlockingIOError:
            core.emit(EventKind.ERROR, assoc.conn, f"{len(fds)} descriptors dropped: upstream full")
            self._wait_upstream(assoc, bytes(chunk))
        except OSError as exc:
            self._lost(assoc, exc)
        finally:
            close_all(fds)

    def _connection(self, client: ClientInfo) -> ConnectionInfo:
        core = self.core
        if client.pid is not None and core.want_client_info:
            from udskit.procfs import process_command

            client = ClientInfo(client.pid, client.uid, client.gid, process_command(client.pid))
        return ConnectionInfo(
            core.new_id(),
            self.front.spec.sock_type,
            str(self.front.spec),
            self.right,
            client,
        )

    def _refuse(self, client: ClientInfo, raw: object) -> None:
        core = self.core
        core.stats.refused += 1
        if core.on_event is not None:
            sender = decode_sockaddr(raw) if raw is not None else UnixAddress.unnamed()  # type: ignore[arg-type]
            core.emit(
                EventKind.REFUSED,
                self._connection(client),
                f"datagram from {sender} (uid {client.uid}) dropped",
            )

    def _associate(self, key: Key, raw: object, client: ClientInfo) -> _Association | None:
        """A new sender: its own upstream socket, or None (refused or failed)."""
        core = self.core  # (--allow-uid/--allow-gid were checked per datagram)
        conn = self._connection(client)
        sender = decode_sockaddr(raw) if raw is not None else UnixAddress.unnamed()  # type: ignore[arg-type]
        if self.max_clients is not None and len(self.assocs) >= self.max_clients:
            core.stats.refused += 1
            core.emit(EventKind.REFUSED, conn, f"datagram from {sender}: --max-clients reached")
            return None
        try:
            sock = self.target.new_socket()
        except OSError as exc:  # EMFILE and friends: drop this one, read again shortly
            core.stats.failed += 1
            core.emit(
                EventKind.FAILED, conn, str(self.target.error("connect", exc.errno or errno.EIO))
            )
            self._pause_reading()
            return None
        creds: Credentials | None = None
        try:
            sock.bind(UnixAddress.autobind().to_sockaddr())
            if self.carry_identity:
                if client.pid is None or client.uid is None or client.gid is None:
                    raise OSError(errno.EPERM, "the sender's credentials are unknown")
                identity = Identity(client.uid, client.gid, process_groups(client.pid))
                err = connect_as(identity, sock, self.target.sockaddr)  # type: ignore[arg-type]
                if err:
                    raise OSError(err, os.strerror(err))
                creds = Credentials(client.pid, client.uid, client.gid)
            else:
                sock.connect(self.target.sockaddr)  # type: ignore[arg-type]
        except OSError as exc:
            sock.close()
            core.stats.failed += 1
            core.emit(
                EventKind.FAILED, conn, str(self.target.error("connect", exc.errno or errno.EIO))
            )
            return None
        assoc = _Association(key, raw, sock, conn)
        if creds is not None:
            assoc.creds = creds
            assoc.send = creds.sender(sock)
        self.assocs[key] = assoc
        core.loop.register(assoc.fd, IN, lambda events: self._on_upstream(assoc, events))
        core.stats.accepted += 1
        core.stats.active += 1
        core.stats.modes["datagram"] = core.stats.modes.get("datagram", 0) + 1
        if core.tap is not None:
            core.tap.opened(conn, time.time_ns())
        if core.on_event is not None:
            core.on_event(
                RelayEvent(
                    EventKind.CONNECTED,
                    time.time_ns(),
                    conn,
                    CopyMode.DATAGRAM,
                    detail=f"from {sender}",
                )
            )
        return assoc

    def _pause_reading(self) -> None:
        """No fds left: stop reading the front socket for a moment (as accept does)."""
        if self.scarce is None:
            self.core.loop.modify(self.fd, 0)
            self.scarce = self.core.loop.call_later(SCARCE_PAUSE, self._resume_reading)

    def _resume_reading(self) -> None:
        self.scarce = None
        if not self.blocked and not self.core.closed:
            self.core.loop.modify(self.fd, IN)

    def _wait_upstream(self, assoc: _Association, data: bytes) -> None:
        """Upstream's queue is full (net.unix.max_dgram_qlen): hold this datagram and
        stop reading the front socket until it drains; nothing is dropped."""
        assoc.waiting.append(data)
        self.blocked += 1
        self.core.loop.modify(self.fd, 0)
        self._update(assoc)

    def _update(self, assoc: _Association) -> None:
        mask = (OUT if assoc.waiting else 0) | (0 if assoc.replies else IN)
        self.core.loop.modify(assoc.fd, mask)

    # -- upstream -> client ------------------------------------------------------------------
    def _on_upstream(self, assoc: _Association, events: int) -> None:
        if events & OUT and assoc.waiting:
            self._flush_waiting(assoc)
        if assoc.sock.fileno() < 0 or assoc.replies or not events & IN:
            return
        core = self.core
        view = core.view
        try:
            n, anc, flags, _raw = assoc.sock.recvmsg_into([view], _ANC_SIZE, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError as exc:
            self._lost(assoc, exc)
            return
        fds = decode_ancillary(anc, flags).fds if anc else ()
        chunk = view[:n]
        if core.tap is not None:
            report = getattr(core.tap, "fds", None)
            if fds and callable(report):  # first: the descriptors go with this chunk
                report(assoc.conn, Direction.S2C, describe_fds(fds), time.time_ns())
            core.tap.data(assoc.conn, Direction.S2C, chunk, time.time_ns())
        assoc.last = time.monotonic()
        assoc.s2c += n
        if assoc.peer is None:  # an unbound sender has no address to reply to
            close_all(fds)
            self._drop(assoc, 1)
            return
        if fds:
            self._reply_fds(assoc, chunk, fds)
            return
        self._reply(assoc, chunk)

    def _reply_fds(self, assoc: _Association, chunk: memoryview, fds: tuple[int, ...]) -> None:
        """A reply with descriptors: to the client with them, then closed here. If the
        client's queue is full the bytes wait like any reply; the descriptors are
        dropped, and an error event says so."""
        try:
            self.front.sock.sendmsg((chunk,), [encode_rights(fds)], 0, assoc.peer)  # type: ignore[arg-type]
        except BlockingIOError:
            dropped = f"{len(fds)} descriptors dropped: the client's queue is full"
            self.core.emit(EventKind.ERROR, assoc.conn, dropped)
            self._reply(assoc, chunk)
        except OSError:
            self._reply(assoc, chunk)  # the plain path reports the client's trouble
        finally:
            close_all(fds)

    def _drop(self, assoc: _Association, count: int) -> None:
        assoc.dropped += count
        self.core.stats.dropped += count

    def _reply(self, assoc: _Association, chunk: bytes | memoryview) -> None:
        try:
            self.front.sock.sendto(chunk, assoc.peer)  # type: ignore[call-overload]
        except BlockingIOError:
            if assoc.deaf:  # it left replies unread for dgram_idle: no more waiting
                self._drop(assoc, 1)
                return
            # The client's queue is full. An unconnected socket cannot wait for one
            # receiver with EPOLLOUT, so retry (backing off), holding further replies
            # back (the server's own sends then block: back-pressure).
            assoc.replies.append(bytes(chunk))
            assoc.stuck_since = time.monotonic()
            assoc.retry = _REPLY_RETRY
            self._update(assoc)
            self.core.loop.call_later(assoc.retry, lambda: self._retry_replies(assoc))
        except OSError as exc:  # the client is gone (ECONNREFUSED, ENOENT)
            self._end(assoc, EventKind.CLOSED, f"client went away ({errno_name(exc.errno or 0)})")
        else:
            assoc.deaf = False

    def _retry_replies(self, assoc: _Association) -> None:
        if self.assocs.get(assoc.key) is not assoc:
            return
        while assoc.replies:
            data = assoc.replies.popleft()
            try:
                self.front.sock.sendto(data, assoc.peer)  # type: ignore[call-overload]
            except BlockingIOError:
                assoc.replies.appendleft(data)
                if time.monotonic() - assoc.stuck_since >= self.idle:
                    # It does not read: drop what waits, and further replies while its
                    # queue stays full, rather than hold the server back for ever.
                    self._drop(assoc, len(assoc.replies))
                    assoc.replies.clear()
                    assoc.deaf = True
                    break
                assoc.retry = min(assoc.retry * 2, _REPLY_RETRY_MAX)
                self.core.loop.call_later(assoc.retry, lambda: self._retry_replies(assoc))
                return
            except OSError as exc:
                self._end(
                    assoc, EventKind.CLOSED, f"client went away ({errno_name(exc.errno or 0)})"
                )
                return
        self._update(assoc)

    def _flush_waiting(self, assoc: _Association) -> None:
        while assoc.waiting:
            try:
                assoc.send(assoc.waiting[0])
            except BlockingIOError:
                return
            except OSError as exc:
                self._lost(assoc, exc)
                return
            assoc.waiting.popleft()
        self.blocked -= 1
        self._update(assoc)
        if not self.blocked and self.scarce is None:
            self.core.loop.modify(self.fd, IN)

    # -- endings -----------------------------------------------------------------------------
    def _lost(self, assoc: _Association, exc: OSError) -> None:
        err = exc.errno or errno.EIO
        self._end(assoc, EventKind.RESET, str(self.target.error("send", err)))

    def _end(self, assoc: _Association, kind: EventKind, detail: str) -> None:
        if self.assocs.get(assoc.key) is not assoc:
            return
        del self.assocs[assoc.key]
        core = self.core
        if assoc.waiting:
            self.blocked -= 1
            if not self.blocked and not core.closed and self.scarce is None:
                core.loop.modify(self.fd, IN)
        if assoc.dropped:
            detail += f"; {assoc.dropped} replies dropped"
        core.loop.unregister(assoc.fd)
        assoc.sock.close()
        stats = core.stats
        stats.active -= 1
        stats.c2s_bytes += assoc.c2s
        stats.s2c_bytes += assoc.s2c
        if kind is EventKind.RESET:
            stats.resets += 1
        else:
            stats.closed += 1
        now = time.time_ns()
        if core.tap is not None:
            core.tap.closed(assoc.conn, None, now)
        if core.on_event is not None:
            core.on_event(
                RelayEvent(
                    kind, now, assoc.conn, CopyMode.DATAGRAM, assoc.c2s, assoc.s2c, None, detail
                )
            )

    def _sweep(self) -> None:
        idle = self.idle
        now = time.monotonic()
        for assoc in list(self.assocs.values()):
            if now - assoc.last > idle and not assoc.waiting and not assoc.replies:
                self._end(assoc, EventKind.CLOSED, f"idle for {idle:g} s")
        self._sweep_timer = self.core.loop.call_later(idle / 2, self._sweep)

    def close(self) -> None:
        self._sweep_timer.cancel()
        if self.scarce is not None:
            self.scarce.cancel()
        for assoc in list(self.assocs.values()):
            self._end(assoc, EventKind.CLOSED, "relay stopped")
        self.core.loop.unregister(self.fd)


def _credentials(
    ancillary: list[tuple[int, int, bytes]],
) -> tuple[int | None, int | None, int | None]:
    """(pid, uid, gid) of the sender, or Nones when unknown."""
    for level, kind, data in ancillary:
        if (
            level == socket.SOL_SOCKET
            and kind == socket.SCM_CREDENTIALS
            and len(data) >= _UCRED.size
        ):
            pid, uid, gid = _UCRED.unpack_from(data)
            # pid 0: the datagram was queued before SO_PASSCRED was on, and the kernel
            # filled in the overflow uid/gid (65534); those are not the sender's.
            if pid > 0:
                return pid, uid, gid
    return None, None, None
