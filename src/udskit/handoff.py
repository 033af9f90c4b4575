"""I/O: hand listening sockets from a running server to its successor, refusing nobody.

The running server calls `offer_listeners` (or keeps a `HandoffOffer` in its event
loop); the successor calls `take_listeners` on the same control address. The listening
sockets themselves move (SCM_RIGHTS), so they are never closed: a client that connects
during the hand-over waits in the backlog and is accepted by one process or the other.

The protocol, over a SOCK_SEQPACKET connection to the control address (one record per
message, each a UTF-8 JSON object with "proto": "udskit-handoff/1"):

1. taker -> offerer  {"op": "take", "pid": P, "want": [LISTENER...]}
2. offerer -> taker  {"op": "offer", "pid": P, "listeners": [LISTENER...]}, with one
   descriptor per listener, in order, in the same record (SCM_RIGHTS)
3. taker -> offerer  {"op": "accept"} or {"op": "refuse", "reason": "..."}
4. offerer -> taker  {"op": "released"}: it has stopped accepting, closed its copies
   and its control socket (so the taker may bind the control address next). A taker
   that accepted keeps the sockets even if this never comes (the offerer died).

A LISTENER is {"family": "unix"|"tcp", "type": "stream"|"seqpacket"|"dgram",
"address": ADDR}, ADDR as `format_address` prints it (unix) or HOST:PORT (tcp). Both
sides say what they have and want, and the taker matches them exactly: same family,
address and type; a mismatch is refused and the offerer keeps serving. After step 4
the offerer drains its open connections and exits; the taker serves.

Only the offerer's own user (or root) may take: the control socket file is mode 0600
and the peer's uid (SO_PEERCRED) is checked, which also covers abstract names.
"""

from __future__ import annotations

import json
import os
import select
import socket
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Final, final

from udskit.address import UnixAddress, decode_sockaddr, format_address, parse_address
from udskit.ancillary import SCM_MAX_FD, close_fds, peer_credentials, recv_message, send_fds
from udskit.endpoints import Listener, open_listener
from udskit.errors import HandoffError, PassError, SocketError, UdskitError
from udskit.socktype import SocketType

__all__ = [
    "PROTOCOL",
    "HandoffOffer",
    "ListenerInfo",
    "Stopper",
    "adopt_listener",
    "describe_listener",
    "offer_listeners",
    "take_listeners",
]

PROTOCOL: Final = "udskit-handoff/1"
#: How long either side waits for the other's next message. Generous: the other side
#: may be a loaded machine's fresh Python process.
STEP_TIMEOUT: Final = 10.0
_RECORD: Final = 65536


@final
@dataclass(frozen=True, slots=True)
class ListenerInfo:
    """What a listening socket is, in the protocol's words."""

    family: str  # "unix" or "tcp"
    type: str  # SocketType value
    address: str

    def as_json(self) -> dict[str, str]:
        return {"family": self.family, "type": self.type, "address": self.address}

    def __str__(self) -> str:
        return f"{self.address} ({self.family} {self.type})"


def describe_listener(sock: socket.socket) -> ListenerInfo:
    """The ListenerInfo of a bound socket."""
    kind = SocketType.from_kernel(sock.type & 0xF)
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return ListenerInfo("unix", kind.value, format_address(decode_sockaddr(name)))
    host = name[0]
    shown = f"[{host}]" if ":" in host else host
    return ListenerInfo("tcp", kind.value, f"{shown}:{name[1]}")


def _info(obj: object) -> ListenerInfo:
    if not isinstance(obj, dict) or not all(
        isinstance(obj.get(k), str) for k in ("family", "type", "address")
    ):
        raise HandoffError(f"malformed listener description in a hand-off: {obj!r:.200}")
    return ListenerInfo(obj["family"], obj["type"], obj["address"])


def _send(sock: socket.socket, message: dict[str, object], fds: Sequence[int] = ()) -> None:
    data = json.dumps({"proto": PROTOCOL, **message}).encode()
    send_fds(sock, fds, data) if fds else sock.sendall(data)


def _recv(
    sock: socket.socket, where: str, maxfds: int = 0
) -> tuple[dict[str, object], tuple[int, ...]]:
    try:
        got = recv_message(sock, _RECORD, maxfds)
    except TimeoutError:
        raise HandoffError(
            f"hand-off on {where}: the other side did not answer within {STEP_TIMEOUT:g} s"
        ) from None
    try:
        if not got.data:
            raise HandoffError(f"hand-off on {where}: the other side closed the connection")
        try:
            message = json.loads(got.data)
        except ValueError:
            raise HandoffError(
                f"hand-off on {where}: not the {PROTOCOL} protocol (is something else "
                "listening there?)"
            ) from None
        if not isinstance(message, dict) or message.get("proto") != PROTOCOL:
            raise HandoffError(f"hand-off on {where}: not the {PROTOCOL} protocol")
    except BaseException:
        close_fds(got.fds)
        raise
    return message, got.fds


def _match(wanted: Sequence[ListenerInfo], offered: Sequence[ListenerInfo]) -> str | None:
    """Why `offered` does not fit `wanted` (None: it fits, in some order)."""
    by_address = {(o.family, o.address): o for o in offered}
    for want in wanted:
        have = by_address.get((want.family, want.address))
        if have is None:
            listed = ", ".join(str(o) for o in offered) or "nothing"
            return f"it offers {listed}, not {want.address}"
        if have.type != want.type:
            return (
                f"it offers {want.address} as a {have.type} socket, not {want.type}: "
                f"start this one with --type {have.type}"
            )
    extra = [
        o for o in offered if (o.family, o.address) not in {(w.family, w.address) for w in wanted}
    ]
    if extra:
        return f"it also offers {', '.join(map(str, extra))}, which this process would not serve"
    return None


# -- the successor ------------------------------------------------------------------------
def take_listeners(
    control: UnixAddress | str,
    want: Sequence[ListenerInfo],
    *,
    timeout: float = STEP_TIMEOUT,
) -> list[socket.socket]:
    """Take the listening sockets a running server offers on `control`, in the order
    of `want`. Raises HandoffError (nothing changed hands, the offerer keeps serving)
    when nobody offers there or the offer does not match `want` exactly."""
    address = control if isinstance(control, UnixAddress) else parse_address(control)
    where = str(address)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(address.to_sockaddr())
        except OSError as exc:
            raise HandoffError(_nobody(where, exc)) from None
        fds: tuple[int, ...] = ()
        try:
            _send(sock, {"op": "take", "pid": os.getpid(), "want": [w.as_json() for w in want]})
            message, fds = _recv(sock, where, maxfds=SCM_MAX_FD)
            if message.get("op") == "refuse":
                raise HandoffError(f"hand-off on {where}: refused: {message.get('reason')}")
            raw = message.get("listeners")
            if message.get("op") != "offer" or not isinstance(raw, list):
                raise HandoffError(
                    f"hand-off on {where}: expected an offer, got {message.get('op')!r}"
                )
            offered = [_info(o) for o in raw]
            if len(offered) != len(fds):
                raise HandoffError(
                    f"hand-off on {where}: {len(offered)} listeners described, {len(fds)} passed"
                )
            socks = [socket.socket(fileno=fd) for fd in fds]
            fds = ()
            try:
                real = [describe_listener(s) for s in socks]
                why = _match(want, real) if real == offered else "the descriptions lie"
                if why is not None:
                    with suppress(OSError):
                        _send(sock, {"op": "refuse", "reason": why})
                    raise HandoffError(
                        f"hand-off on {where}: refused the offer of pid {message.get('pid')}: "
                        f"{why}; it keeps serving"
                    )
                _send(sock, {"op": "accept"})
            except BaseException:
                for s in socks:
                    s.close()
                raise
            # From here on the sockets are ours whatever happens: an offerer that died
            # or hangs before saying "released" must not take the service down with
            # it. Sharing the listeners with a hung offerer for a moment is harmless.
            with suppress(HandoffError, PassError, OSError):
                _recv(sock, where)
        finally:
            close_fds(fds)
    except (PassError, SocketError, OSError) as exc:
        if isinstance(exc, HandoffError):
            raise
        raise HandoffError(f"hand-off on {where}: {exc}") from None
    finally:
        sock.close()
    order = {(r.family, r.address): s for r, s in zip(real, socks, strict=True)}
    return [order[(w.family, w.address)] for w in want]


def _nobody(where: str, exc: OSError) -> str:
    import errno

    if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
        return (
            f"nobody offers listeners on {where} (no running server with --handoff {where}); "
            "start without --handoff, or check the address"
        )
    if exc.errno == errno.EPROTOTYPE:
        return f"{where} is not a hand-off control socket (another socket type listens there)"
    return f"cannot reach the hand-off control socket {where}: {os.strerror(exc.errno or 0)}"


def adopt_listener(sock: socket.socket) -> Listener:
    """A Listener for a socket taken over: it removes the socket file on close only if
    the file at its path is this very socket's (checked with sock_diag), never one
    that belongs to somebody else."""
    address = decode_sockaddr(sock.getsockname()) if sock.family == socket.AF_UNIX else None
    if address is None:
        raise HandoffError("only unix listeners become Listener objects")
    kind = SocketType.from_kernel(sock.type & 0xF)
    created: tuple[int, int] | None = None
    directory = None
    if address.is_pathname:
        from udskit.fsguard import Directory

        with suppress(OSError, UdskitError, ValueError):
            from udskit.netlink import query_unix_socket
            from udskit.sockdiag import Show

            # Held open, so that close() removes the name relative to this directory,
            # and only while it is still this socket's file (Listener.close).
            directory = Directory(address.path)
            info = query_unix_socket(os.fstat(sock.fileno()).st_ino, Show.VFS)
            found = directory.inode(os.path.basename(address.path))
            vfs = info.vfs if info is not None else None
            if vfs is not None and found is not None and (vfs.dev, vfs.ino) == found:
                created = found
    return Listener(sock, address, kind, created, False, directory)


# -- the running server -------------------------------------------------------------------
@final
class HandoffOffer:
    """A control socket on which this process offers `socks` to a successor.

    Put `fileno()` in an event loop (or call `serve()` in a thread); on a connection,
    `handle()` runs the exchange. `before_release` runs once the successor accepted and
    before it is told to go on: that is where the caller stops accepting and forgets
    the socket files (they are the successor's now). Returns True when handed off.
    """

    def __init__(
        self,
        control: UnixAddress | str,
        socks: Sequence[socket.socket],
        *,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.socks = list(socks)
        self.infos = [describe_listener(s) for s in self.socks]
        self.log = log or (lambda _line: None)
        address = control if isinstance(control, UnixAddress) else parse_address(control)
        # A file only the owner may connect to; an abstract name has no permissions,
        # so the peer's uid is checked in any case.
        mode = 0o600 if address.is_pathname else None
        self.listener = open_listener(address, SocketType.SEQPACKET, mode=mode)
        self.listener.sock.setblocking(False)
        self.address = self.listener.address
        self.handed_off = False

    def fileno(self) -> int:
        return self.listener.fileno()

    def close(self) -> None:
        self.listener.close()

    def handle(self, before_release: Callable[[], None]) -> bool:
        """Accept one control connection and hand off if it asks properly."""
        try:
            conn, _ = self.listener.sock.accept()
        except (BlockingIOError, InterruptedError):
            return False
        with conn:
            conn.settimeout(STEP_TIMEOUT)
            try:
                return self._exchange(conn, before_release)
            except (UdskitError, OSError) as err:
                self.log(f"hand-off on {self.address} failed, still serving: {err}")
                return False

    def _exchange(self, conn: socket.socket, before_release: Callable[[], None]) -> bool:
        where = str(self.address)
        who = peer_credentials(conn, pidfd=False)
        message, _ = _recv(conn, where)
        if message.get("op") != "take":
            raise HandoffError(f"expected a take, got {message.get('op')!r}")
        if who.uid not in (os.geteuid(), 0):
            reason = f"uid {who.uid} may not take the listeners of uid {os.geteuid()}"
            _send(conn, {"op": "refuse", "reason": reason})
            raise HandoffError(f"pid {who.pid}: {reason}; refused")
        _send(
            conn,
            {"op": "offer", "pid": os.getpid(), "listeners": [i.as_json() for i in self.infos]},
            [s.fileno() for s in self.socks],
        )
        answer, _ = _recv(conn, where)
        if answer.get("op") != "accept":
            raise HandoffError(f"pid {who.pid} refused: {answer.get('reason')}")
        before_release()
        self.listener.close()  # the successor binds the control address next
        self.handed_off = True
        _send(conn, {"op": "released"})
        self.log(f"handed the listeners to pid {who.pid}; draining")
        return True

    def serve(self, before_release: Callable[[], None], stop: Callable[[], bool]) -> bool:
        """Handle control connections until one hands off (True) or `stop()` (False)."""
        poller = select.poll()
        poller.register(self.fileno(), select.POLLIN)
        while not stop():
            if poller.poll(200) and self.handle(before_release):
                return True
        return False


def offer_listeners(
    control: UnixAddress | str,
    socks: Sequence[socket.socket],
    *,
    before_release: Callable[[], None] = lambda: None,
) -> None:
    """Offer `socks` on `control` until a successor takes them (blocking). Afterwards
    this process must stop accepting on them (do it in `before_release`) and close them."""
    offer = HandoffOffer(control, socks)
    try:
        offer.serve(before_release, lambda: False)
    finally:
        offer.close()


@final
class Stopper:
    """A flag another thread can raise and a poll() can wait on (a pipe): it tells a
    server blocked waiting for clients to stop accepting."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._set = False

    def fileno(self) -> int:
        return self._r

    def set(self) -> None:
        self._set = True
        with suppress(OSError):
            os.write(self._w, b"x")

    def is_set(self) -> bool:
        return self._set

    def close(self) -> None:
        for fd in (self._r, self._w):
            with suppress(OSError):
                os.close(fd)
