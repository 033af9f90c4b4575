"""I/O: datagram relaying: a bound socket in front, one upstream socket per sender.

The front socket (`unix-recvfrom:`) receives from anyone. For each sender address the
relay opens its own datagram socket, autobound and connected to RIGHT, so the server
sees one distinct peer per client and its replies come back on that socket; the relay
sends them to the client's address with sendto. A sender that never bound a name
(unix(7): no autobind without SO_PASSCRED) cannot get replies: its datagrams are
forwarded through one shared socket and replies to it are dropped (and counted).

SO_PASSCRED on the front socket makes the kernel attach the sender's pid/uid/gid to
every datagram (SCM_CREDENTIALS), which gives --allow-uid and the tap the same facts
as SO_PEERCRED gives for connections. An association idle for `dgram_idle` seconds is
closed.
"""

from __future__ import annotations

import errno
import socket
import struct
import time
from collections import deque
from typing import TYPE_CHECKING, Final, final

from udskit.address import UnixAddress, decode_sockaddr
from udskit.errors import errno_name
from udskit.relay.events import CopyMode, EventKind, RelayEvent
from udskit.relay.loop import IN, OUT
from udskit.relay.sides import ListenSide, Target
from udskit.tap import ClientInfo, ConnectionInfo, Direction

if TYPE_CHECKING:
    from udskit.relay.engine import Relay

_UCRED: Final = struct.Struct("3i")
_ANC_SIZE: Final = socket.CMSG_SPACE(_UCRED.size)
_REPLY_RETRY: Final = 0.002


@final
class _Association:
    """One sender and its own upstream socket."""

    __slots__ = ("c2s", "conn", "fd", "key", "last", "peer", "replies", "s2c", "sock", "waiting")

    def __init__(
        self, key: object, peer: object, sock: socket.socket, conn: ConnectionInfo
    ) -> None:
        self.key = key
        self.peer = peer  # what sendto takes; None for an unbound sender
        self.sock = sock
        self.fd = sock.fileno()
        self.conn = conn
        self.last = time.monotonic()
        self.c2s = 0
        self.s2c = 0
        self.waiting: deque[bytes] = deque()  # to upstream, when its queue was full
        self.replies: deque[bytes] = deque()  # to the client, likewise


@final
class DatagramRelay:
    def __init__(self, relay: Relay, front: ListenSide, target: Target) -> None:
        self.relay = relay
        self.front = front
        self.target = target
        self.fd = front.sock.fileno()
        self.assocs: dict[object, _Association] = {}
        self.blocked = 0  # associations with datagrams waiting for upstream
        self.dropped_replies = 0
        front.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        relay.loop.register(self.fd, IN, self._on_front)
        self._sweep_timer = relay.loop.call_later(relay.dgram_idle / 2, self._sweep)

    # -- client -> upstream -----------------------------------------------------------------
    def _on_front(self, _events: int) -> None:
        relay = self.relay
        view = relay.view
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
                relay.emit(EventKind.ERROR, None, f"recv on {self.front.spec}: {exc.strerror}")
                return
            if flags & socket.MSG_TRUNC:
                relay.emit(EventKind.ERROR, None, "a datagram larger than 4 MiB was cut; dropped")
                continue
            cred = _credentials(anc)
            key = raw if raw not in (None, "", b"") else None
            assoc = self.assocs.get(key)
            if assoc is None:
                assoc = self._associate(key, raw, cred)
                if assoc is None:
                    continue
            chunk = view[:n]
            if relay.tap is not None:
                relay.tap.data(assoc.conn, Direction.C2S, chunk, time.time_ns())
            assoc.last = time.monotonic()
            assoc.c2s += n
            if assoc.waiting:
                assoc.waiting.append(bytes(chunk))
                continue
            try:
                assoc.sock.send(chunk)
            except BlockingIOError:
                self._wait_upstream(assoc, bytes(chunk))
            except OSError as exc:
                self._lost(assoc, exc)

    def _associate(
        self, key: object, raw: object, cred: tuple[int, int, int] | None
    ) -> _Association | None:
        relay = self.relay
        client = ClientInfo()
        if cred is not None:
            from udskit.inspect.owners import process_command

            pid, uid, gid = cred
            # pid 0: the datagram was queued before SO_PASSCRED was on, and the kernel
            # filled in the overflow uid/gid (65534); those are not the sender's.
            if pid > 0:
                command = process_command(pid) if relay._want_client_info else None
                client = ClientInfo(pid, uid, gid, command)
        sender = decode_sockaddr(raw) if key is not None else UnixAddress.unnamed()  # type: ignore[arg-type]
        conn = ConnectionInfo(
            relay.new_id(),
            self.front.spec.sock_type,
            str(self.front.spec),
            str(relay.right),
            client,
        )
        if not relay.allowed(client.uid, client.gid):
            relay.stats.refused += 1
            relay.emit(
                EventKind.REFUSED, conn, f"datagram from {sender} (uid {client.uid}) dropped"
            )
            return None
        if relay.max_clients is not None and len(self.assocs) >= relay.max_clients:
            relay.stats.refused += 1
            relay.emit(EventKind.REFUSED, conn, f"datagram from {sender}: --max-clients reached")
            return None
        sock = self.target.new_socket()
        try:
            sock.bind(UnixAddress.autobind().to_sockaddr())
            sock.connect(self.target.sockaddr)  # type: ignore[arg-type]
        except OSError as exc:
            sock.close()
            relay.stats.failed += 1
            relay.emit(
                EventKind.FAILED, conn, str(self.target.error("connect", exc.errno or errno.EIO))
            )
            return None
        assoc = _Association(key, raw if key is not None else None, sock, conn)
        self.assocs[key] = assoc
        relay.loop.register(assoc.fd, IN, lambda events: self._on_upstream(assoc, events))
        relay.stats.accepted += 1
        relay.stats.active += 1
        relay.stats.modes["datagram"] = relay.stats.modes.get("datagram", 0) + 1
        if relay.tap is not None:
            relay.tap.opened(conn, time.time_ns())
        if relay.on_event is not None:
            relay.on_event(
                RelayEvent(
                    EventKind.CONNECTED,
                    time.time_ns(),
                    conn,
                    CopyMode.DATAGRAM,
                    detail=f"from {sender}",
                )
            )
        return assoc

    def _wait_upstream(self, assoc: _Association, data: bytes) -> None:
        """Upstream's queue is full (net.unix.max_dgram_qlen): hold this datagram and
        stop reading the front socket until it drains; nothing is dropped."""
        assoc.waiting.append(data)
        self.blocked += 1
        self.relay.loop.modify(self.fd, 0)
        self._update(assoc)

    def _update(self, assoc: _Association) -> None:
        mask = (OUT if assoc.waiting else 0) | (0 if assoc.replies else IN)
        self.relay.loop.modify(assoc.fd, mask)

    # -- upstream -> client ------------------------------------------------------------------
    def _on_upstream(self, assoc: _Association, events: int) -> None:
        if events & OUT and assoc.waiting:
            self._flush_waiting(assoc)
        if assoc.sock.fileno() < 0 or assoc.replies or not events & IN:
            return
        relay = self.relay
        view = relay.view
        try:
            n = assoc.sock.recv_into(view, 0, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError as exc:
            self._lost(assoc, exc)
            return
        chunk = view[:n]
        if relay.tap is not None:
            relay.tap.data(assoc.conn, Direction.S2C, chunk, time.time_ns())
        assoc.last = time.monotonic()
        assoc.s2c += n
        if assoc.peer is None:
            self.dropped_replies += 1
            return
        self._reply(assoc, chunk)

    def _reply(self, assoc: _Association, chunk: bytes | memoryview) -> None:
        try:
            self.front.sock.sendto(chunk, assoc.peer)  # type: ignore[call-overload]
        except BlockingIOError:
            # The client's queue is full. An unconnected socket cannot wait for one
            # receiver with EPOLLOUT, so retry shortly, holding further replies back.
            assoc.replies.append(bytes(chunk))
            self._update(assoc)
            self.relay.loop.call_later(_REPLY_RETRY, lambda: self._retry_replies(assoc))
        except OSError as exc:  # the client is gone (ECONNREFUSED, ENOENT)
            self._end(assoc, EventKind.CLOSED, f"client went away ({errno_name(exc.errno or 0)})")

    def _retry_replies(self, assoc: _Association) -> None:
        if assoc.key not in self.assocs or self.assocs[assoc.key] is not assoc:
            return
        while assoc.replies:
            data = assoc.replies.popleft()
            try:
                self.front.sock.sendto(data, assoc.peer)  # type: ignore[call-overload]
            except BlockingIOError:
                assoc.replies.appendleft(data)
                self.relay.loop.call_later(_REPLY_RETRY, lambda: self._retry_replies(assoc))
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
                assoc.sock.send(assoc.waiting[0])
            except BlockingIOError:
                return
            except OSError as exc:
                self._lost(assoc, exc)
                return
            assoc.waiting.popleft()
        self.blocked -= 1
        self._update(assoc)
        if not self.blocked:
            self.relay.loop.modify(self.fd, IN)

    # -- endings -----------------------------------------------------------------------------
    def _lost(self, assoc: _Association, exc: OSError) -> None:
        err = exc.errno or errno.EIO
        self._end(assoc, EventKind.RESET, str(self.target.error("send", err)))

    def _end(self, assoc: _Association, kind: EventKind, detail: str) -> None:
        if self.assocs.get(assoc.key) is not assoc:
            return
        del self.assocs[assoc.key]
        relay = self.relay
        if assoc.waiting:
            self.blocked -= 1
            if not self.blocked and not relay._closed:
                relay.loop.modify(self.fd, IN)
        relay.loop.unregister(assoc.fd)
        assoc.sock.close()
        stats = relay.stats
        stats.active -= 1
        stats.c2s_bytes += assoc.c2s
        stats.s2c_bytes += assoc.s2c
        if kind is EventKind.RESET:
            stats.resets += 1
        else:
            stats.closed += 1
        now = time.time_ns()
        if relay.tap is not None:
            relay.tap.closed(assoc.conn, None, now)
        if relay.on_event is not None:
            relay.on_event(
                RelayEvent(
                    kind, now, assoc.conn, CopyMode.DATAGRAM, assoc.c2s, assoc.s2c, None, detail
                )
            )

    def _sweep(self) -> None:
        idle = self.relay.dgram_idle
        now = time.monotonic()
        for assoc in list(self.assocs.values()):
            if now - assoc.last > idle and not assoc.waiting and not assoc.replies:
                self._end(assoc, EventKind.CLOSED, f"idle for {idle:g} s")
        self._sweep_timer = self.relay.loop.call_later(idle / 2, self._sweep)

    def close(self) -> None:
        self._sweep_timer.cancel()
        for assoc in list(self.assocs.values()):
            self._end(assoc, EventKind.CLOSED, "relay stopped")
        self.relay.loop.unregister(self.fd)


def _credentials(ancillary: list[tuple[int, int, bytes]]) -> tuple[int, int, int] | None:
    for level, kind, data in ancillary:
        if (
            level == socket.SOL_SOCKET
            and kind == socket.SCM_CREDENTIALS
            and len(data) >= _UCRED.size
        ):
            pid, uid, gid = _UCRED.unpack_from(data)
            return pid, uid, gid
    return None
