"""I/O: the relay itself: accept clients, connect each upstream, run the sessions.

See `udskit.relay` for the public API; this module holds the `Relay` class. It imports
the modules that do the work (stream, datagram, connecting) and hands each the
`RelayCore` (core.py) it shares with them; none of them imports this module back.
"""

from __future__ import annotations

import errno
import math
import os
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Collection
from contextlib import suppress
from typing import BinaryIO, Final, final

from udskit.access import Admission, FileFacts, PathFacts, may_connect, who_may_connect
from udskit.address import UnixAddress
from udskit.ancillary import peer_ucred
from udskit.credswitch import peer_identity
from udskit.endpoint_spec import EndpointKind, EndpointSpec, parse_endpoint
from udskit.endpoints import DEFAULT_BACKLOG, Listener
from udskit.errors import SocketError, UsageError
from udskit.fsguard import path_facts
from udskit.identity import Identity
from udskit.peercred import PeerIdentity, identify_peer
from udskit.procfs import user_name
from udskit.relay.connecting import Connecting
from udskit.relay.core import SCARCE_PAUSE, RelayCore, SessionEnd, Stoppable
from udskit.relay.datagram import DatagramRelay
from udskit.relay.events import CopyMode, EventKind, RelayEvent, RelayStats, Throttle
from udskit.relay.loop import IN, Loop
from udskit.relay.passing import Credentials
from udskit.relay.sides import (
    ListenSide,
    Target,
    adopt_listen_side,
    connect_blocking,
    open_listen_side,
    resolve_target,
    socket_type,
    spawn_exec,
    stdio_bridge,
)
from udskit.relay.stream import Session
from udskit.signals import STOP_SIGNALS, signals_held, start_worker
from udskit.socktype import SocketType
from udskit.tap import ClientInfo, ConnectionInfo, Tap

EndpointLike = EndpointSpec | str | UnixAddress
ListenLike = EndpointLike | Listener | socket.socket
EventCallback = Callable[[RelayEvent], None]

#: One buffer for the whole relay: stream reads take STREAM_CHUNK of it, a seqpacket
#: record or a datagram may use all of it (net.core.wmem_max is 4 MiB on many hosts,
#: which bounds a record's size).
BUFFER_SIZE: Final = 4 << 20
#: How often drain() looks whether the last connection has ended.
_DRAIN_TICK: Final = 0.02
#: errnos that mean "no file descriptors or memory left": pause accepting a moment
#: rather than take clients we cannot serve.
SCARCE: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# SCARCE_PAUSE (how long accepting pauses then) lives in core.py: datagram.py uses it too.
#: At most one line about it per this many seconds (see Throttle).
SCARCE_REPORT_INTERVAL: Final = 5.0
#: How long exec: commands get to exit after SIGTERM when the relay closes.
_CHILD_GRACE: Final = 2.0


def as_endpoint(value: EndpointLike, default_type: SocketType = SocketType.STREAM) -> EndpointSpec:
    if isinstance(value, EndpointSpec):
        return value
    if isinstance(value, UnixAddress):
        return EndpointSpec(EndpointKind.UNIX, address=value, sock_type=default_type)
    return parse_endpoint(value, default_type)


@final
class Relay:
    """Forward every client of `left` to its own connection to `right`, both ways.

    `left` is an endpoint (text or `EndpointSpec`) or a listener the caller already
    bound (`udskit.endpoints.Listener` or a listening socket), which the relay uses but
    never closes. What the relay opened itself it closes in `close()`, removing its
    socket file. See the `udskit.relay` docstring for the options.
    """

    def __init__(
        self,
        left: ListenLike,
        right: EndpointLike,
        *,
        tap: Tap | None = None,
        on_event: EventCallback | None = None,
        max_clients: int | None = None,
        allow_uids: Collection[int] = (),
        allow_gids: Collection[int] = (),
        backlog: int = DEFAULT_BACKLOG,
        mode: int | None = None,
        owner: str | int | None = None,
        group: str | int | None = None,
        splice: bool = True,
        connect_timeout: float = 10.0,
        dgram_idle: float = 60.0,
        default_type: SocketType = SocketType.STREAM,
        stdio: tuple[BinaryIO, BinaryIO] | None = None,
        carry_identity: bool = False,
        guard: bool = True,
    ) -> None:
        self._adopted: Listener | socket.socket | None = None
        if isinstance(left, (Listener, socket.socket)):
            self._adopted = left
            self.left = adopt_listen_side(left).spec
        else:
            self.left = as_endpoint(left, default_type)
        self.right = as_endpoint(right, default_type)
        self.max_clients = max_clients if max_clients and max_clients > 0 else None
        self.allow_uids = frozenset(allow_uids)
        self.allow_gids = frozenset(allow_gids)
        #: Who LEFT lets in: the allow lists, or (`guard`, RIGHT a socket file) whoever
        #: could have connected to RIGHT's file itself; settled by open().
        self.guard = guard
        self.admission = Admission(self.allow_uids, self.allow_gids)
        self.backlog = backlog
        self.mode, self.owner, self.group = mode, owner, group
        self.splice = splice
        if not (isinstance(connect_timeout, (int, float)) and 0 < connect_timeout < math.inf):
            raise UsageError(
                f"connect_timeout must be a positive number of seconds, not {connect_timeout!r}"
            )
        self.connect_timeout = float(connect_timeout)
        self.dgram_idle = dgram_idle
        self.stdio = stdio
        #: Connect upstream as each client (uid, gid, groups) and pass its credentials
        #: on with each chunk (SCM_CREDENTIALS): see udskit.credswitch. Needs root or
        #: CAP_SETUID+CAP_SETGID, a unix LEFT and a unix RIGHT.
        self.carry_identity = carry_identity
        self._check()
        #: What the sessions, connects and the datagram front share with the relay
        #: (they see nothing else of it): see udskit.relay.core.
        self.core = RelayCore(
            buffer_size=BUFFER_SIZE,
            tap=tap,
            on_event=on_event,
            stats=RelayStats(),
            loop=Loop(),
            start_session=self._start_session,
            failed=self._failed,
            session_ended=self.session_ended,
        )
        self.stats = self.core.stats
        self.loop = self.core.loop
        self.sessions: set[Session] = set()
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._pidfds: dict[int, int] = {}  # pid -> pidfd of a command we wait for
        self._listen: ListenSide | None = None
        self._target: Target | None = None
        self._scarce_reports = Throttle(SCARCE_REPORT_INTERVAL)
        self._accept_paused = False
        self._single = not self.left.listening
        self._opened = False
        self._thread: threading.Thread | None = None
        self._serving: threading.Thread | None = None  # the one in serve_forever()
        self._finished = threading.Event()
        self._datagram: DatagramRelay | None = None
        self.error: BaseException | None = None
        self._stdout_writer: threading.Thread | None = None

    @property
    def tap(self) -> Tap | None:
        return self.core.tap

    @property
    def on_event(self) -> EventCallback | None:
        return self.core.on_event

    # -- checks --------------------------------------------------------------------------
    def _check(self) -> None:
        left, right = self.left, self.right
        if right.listening:
            raise UsageError(
                f"RIGHT ({right}) must be something to connect to; only LEFT listens "
                "(e.g. udskit relay unix-listen:/tmp/front.sock tcp:127.0.0.1:8080)"
            )
        if right.kind is EndpointKind.STDIO and left.listening:
            raise UsageError(
                "stdio (-) can serve only one connection; with a listening LEFT use "
                "exec:CMD or a socket as RIGHT"
            )
        if left.kind is EndpointKind.STDIO and right.kind is EndpointKind.STDIO:
            raise UsageError("both sides are stdio; one side must be a socket or exec:CMD")
        unix_listen = left.kind is EndpointKind.UNIX_LISTEN
        if (self.allow_uids or self.allow_gids) and not unix_listen:
            raise UsageError(
                "--allow-uid/--allow-gid need a unix listen side (LEFT unix-listen: or "
                "abstract-listen:); TCP clients carry no credentials"
            )
        if (self.mode is not None or self.owner is not None or self.group is not None) and not (
            unix_listen and left.address is not None and left.address.is_pathname
        ):
            raise UsageError(
                "--mode/--owner/--group apply to a socket file LEFT (unix-listen:PATH); "
                "abstract names and TCP have no file permissions"
            )
        if self.carry_identity and not (
            left.kind is EndpointKind.UNIX_LISTEN and right.kind is EndpointKind.UNIX
        ):
            raise UsageError(
                "carrying client identities needs a unix listen side and a unix socket to "
                "connect to (TCP carries no credentials)"
            )
        dgram_left = left.sock_type is SocketType.DGRAM
        dgram_right = right.sock_type is SocketType.DGRAM
        if (dgram_left or dgram_right) and not (
            dgram_left and dgram_right and left.listening and right.is_unix
        ):
            raise UsageError(
                "datagram relaying goes from a datagram listen side to a datagram "
                "socket: e.g. unix-recvfrom:/tmp/front.sock unix-sendto:/tmp/back.sock"
            )

    # -- lifecycle --------------------------------------------------------------------------
    @property
    def listen_endpoint(self) -> EndpointSpec:
        """LEFT as bound: tcp-listen:...:0 shows the port the kernel chose."""
        return self._listen.spec if self._listen is not None else self.left

    def open(self) -> Relay:
        """Bind the listener and resolve RIGHT now, so errors come before serving."""
        if self._opened:
            return self
        self._opened = True
        try:
            self._target = resolve_target(self.right)
            self.admission = self._admission()
            if self._adopted is not None:
                self._listen = adopt_listen_side(self._adopted)
            elif self.left.listening:
                self._listen = open_listen_side(
                    self.left,
                    backlog=self.backlog,
                    mode=self.mode,
                    owner=self.owner,
                    group=self.group,
                )
            if self._listen is not None:
                if self.left.sock_type is SocketType.DGRAM:
                    self._datagram = DatagramRelay(
                        self.core,
                        self._listen,
                        self._target,
                        right=str(self.right),
                        admission=self.admission,
                        max_clients=self.max_clients,
                        carry_identity=self.carry_identity,
                        idle=self.dgram_idle,
                    )
                else:
                    self.loop.register(self._listen.sock.fileno(), IN, self._on_accept)
                # Said when the loop starts serving, not here: what the caller does between
                # open() and serving (the CLI looks up user names for its admission note,
                # with /etc/passwd open meanwhile) is then over, so "listening" means ready.
                # A test that took the relay's descriptors as its baseline on this event
                # caught /etc/passwd still open, and waited in vain for it to come back.
                spec = str(self._listen.spec)
                self.loop.call_later(
                    0.0,
                    lambda: self.core.event(
                        RelayEvent(EventKind.LISTENING, time.time_ns(), detail=spec)
                    ),
                )
        except BaseException:
            self.close()
            raise
        return self

    def serve_forever(self) -> None:
        """Run until stop() (from another thread), Ctrl-C or, with a LEFT that does not
        listen, the end of its one connection. Closes everything on the way out."""
        self._serving = threading.current_thread()
        try:
            self.open()
            if self._single:
                self._open_single()
                if not self.sessions:
                    return
            self.loop.run()
        finally:
            # close() whole: cut by a Ctrl-C, it left a command running (the stop-anywhere
            # test). The first call blocks the stop signals; one that comes meanwhile is
            # raised once close() is done.
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
            try:
                self.close()
                self._finished.set()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def start(self) -> Relay:
        """Open now (errors raise here), then serve in a background thread."""
        self.open()

        def run() -> None:
            try:
                self.serve_forever()
            except BaseException as exc:  # kept for the caller of stop()
                self.error = exc

        self._thread = start_worker(run, name="udskit-relay")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and clean up; safe from any thread. Waits for the loop to end
        when it runs in another thread; from the loop's own thread (an `on_event` or tap
        callback) it only asks, and the loop ends when the callback returns."""
        self.loop.stop()
        current = threading.current_thread()
        if current in (self.loop.thread, self._serving):
            return  # we are the relay (a callback): waiting here would wait for ourselves
        if self._thread is not None:
            self._thread.join(timeout)
        elif self._opened and current is not threading.main_thread():
            self._finished.wait(timeout)

    @property
    def pending_connects(self) -> int:
        """Clients accepted whose upstream connection is still being made."""
        return len(self.core.pending)

    def drain(self, *, linger: float, grace: float) -> None:
        """After stop(): keep forwarding until the open connections end, at most `grace`
        seconds, and keep accepting for at least `linger` seconds (clients already on
        their way in, e.g. while a socket file is being put back). Runs in this thread."""
        start = time.monotonic()
        loop = self.loop

        def done() -> bool:
            # The linger holds even with no grace (--grace 0, a second Ctrl-C): a client
            # still in the accept queue when the listener closes is reset by the kernel
            # (unix_release_sock), which is worse than being served a little longer.
            elapsed = time.monotonic() - start
            if elapsed < linger:
                return False
            return elapsed >= grace or (not self.sessions and not self.core.pending)

        def tick() -> None:
            if done():
                loop.stop()
            else:
                loop.call_later(_DRAIN_TICK, tick)

        if done():
            return
        loop.stopping = False
        loop.call_later(_DRAIN_TICK, tick)
        loop.run()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a started relay to finish (a one-connection relay ends by itself)."""
        return self._finished.wait(timeout)

    def close(self) -> None:
        core = self.core
        if core.closed:
            return
        core.closed = True
        for session in list(self.sessions):
            session.stop()
        for pending in list(core.pending):
            pending.stop()
        if self._datagram is not None:
            self._datagram.close()
        if self._listen is not None:
            self.loop.unregister(self._listen.sock.fileno())
            self._listen.close()
        self._stop_children()
        self.loop.close()
        if self._stdout_writer is not None:
            # Our end is closed, so the writer sees EOF once it has written everything.
            self._stdout_writer.join(10)

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self.stop()
        self.close()

    # -- events ---------------------------------------------------------------------------
    def emit(self, kind: EventKind, conn: ConnectionInfo | None, detail: str = "") -> None:
        self.core.emit(kind, conn, detail)

    # -- accepting ------------------------------------------------------------------------
    def _on_accept(self, _events: int) -> None:
        assert self._listen is not None
        accept = self._listen.sock.accept
        for _ in range(64):
            if self.max_clients is not None and (
                self.stats.active + len(self.core.pending) >= self.max_clients
            ):
                self._pause_accept()
                return
            try:
                sock, _raw = accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in SCARCE:
                    due, held = self._scarce_reports.due(time.monotonic())
                    if due:
                        again = f" ({held} more pauses since the last line)" if held else ""
                        self.emit(
                            EventKind.ERROR,
                            None,
                            f"accept: {os.strerror(exc.errno or 0)}; pausing "
                            f"{SCARCE_PAUSE:g} s at a time (raise `ulimit -n`?){again}",
                        )
                    self._pause_accept(SCARCE_PAUSE)
                    return
                continue  # ECONNABORTED and friends: that client is gone already
            self._admit(sock)

    def _pause_accept(self, delay: float | None = None) -> None:
        assert self._listen is not None
        self._accept_paused = True
        self.loop.modify(self._listen.sock.fileno(), 0)
        if delay is not None:
            self.loop.call_later(delay, self._resume_accept)

    def _resume_accept(self) -> None:
        if self._accept_paused and self._listen is not None and not self.core.closed:
            self._accept_paused = False
            self.loop.modify(self._listen.sock.fileno(), IN)

    def new_id(self) -> int:
        return self.core.new_id()

    def client_info(self, sock: socket.socket) -> ClientInfo:
        """SO_PEERCRED of a unix client, and its command from /proc/PID/comm (and its
        groups, SO_PEERGROUPS, when identities are carried)."""
        from udskit.procfs import process_command

        groups: tuple[int, ...] | None = None
        if self.carry_identity:
            pid, identity = peer_identity(sock)
            uid, gid, groups = identity.uid, identity.gid, identity.groups
        else:
            cred = peer_ucred(sock)
            pid, uid, gid = cred.pid, cred.uid, cred.gid
        command = process_command(pid) if pid > 0 else None
        return ClientInfo(pid if pid > 0 else None, uid, gid, command, groups)

    def _admission(self) -> Admission:
        """The allow lists if given; else, in front of a socket file (RIGHT unix:PATH)
        and with `guard`, the file's own permissions: an abstract name or a TCP port has
        none, and a front must not let in anyone the file would have refused."""
        if self.admission.explicit or not self.guard or not self.left.listening:
            return self.admission
        address = self.right.address
        if self.right.kind is not EndpointKind.UNIX or address is None or not address.is_pathname:
            return self.admission
        try:
            facts = path_facts(address.path)
        except OSError:
            # Not there (yet): admit as a root-only file would, rather than everyone.
            facts = PathFacts(address.path, FileFacts(0, 0, 0))
        return Admission(target=facts)

    def admission_text(self) -> str:
        """Who may connect to LEFT, for the start line and --help."""
        admission = self.admission
        if admission.explicit:
            listed = [f"user {user_name(u)}" for u in sorted(admission.uids)]
            listed += [f"group {group_name(g)}" for g in sorted(admission.gids)]
            return "only " + ", ".join(listed) + " (--allow-uid/--allow-gid)"
        if admission.target is None:
            return "anyone who can reach it"
        file = admission.target.file
        names = who_may_connect(
            admission.target, {file.uid: user_name(file.uid)}, {file.gid: group_name(file.gid)}
        )
        return (
            f"{names}, as {admission.target.path}'s "
            "permissions allow (widen with --allow-uid/--allow-gid)"
        )

    def allowed(self, uid: int | None, gid: int | None, groups: Collection[int] = ()) -> bool:
        return self.admission.admits(uid, gid, groups)

    def _admit(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        client = ClientInfo()
        identity: PeerIdentity | None = None
        if sock.family == socket.AF_UNIX:
            if self.core.want_client_info or self.admission.filters or self.carry_identity:
                client = self.client_info(sock)
        else:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.admission.filters:
            identity = identify_peer(sock)
        conn = ConnectionInfo(
            self.new_id(), self.left.sock_type, str(self.listen_endpoint), str(self.right), client
        )
        if identity is not None and not self.allowed(identity.uid, identity.gid, identity.groups):
            # Refused before anything reaches RIGHT: no upstream connection is made.
            # Said before the close: once the client sees its end of file, the refusal
            # is on record (a stop right after the close otherwise lost the line; seen
            # in a soak as a test that SIGTERMed the relay once nobody's client ended).
            self.stats.refused += 1
            try:
                self.emit(
                    EventKind.REFUSED, conn, self.admission.why_refused(identity.uid, identity.gid)
                )
            finally:
                sock.close()
            return
        self.stats.accepted += 1
        self.emit(EventKind.ACCEPTED, conn)
        self._connect_upstream(conn, sock)

    # -- upstream -------------------------------------------------------------------------
    def _connect_upstream(self, conn: ConnectionInfo, client: socket.socket) -> None:
        assert self._target is not None
        if self.right.kind is EndpointKind.EXEC:
            assert self.right.command is not None
            try:
                upstream, child = self._spawn(self.right.command)
            except SocketError as err:
                self._failed(conn, client, str(err), err.errno)
                return
            self._start_session(conn, client, upstream, child)
            return
        identity = None
        if self.carry_identity:
            c = conn.client
            if c.uid is None or c.gid is None:
                self._failed(conn, client, "the client's credentials are unknown: not forwarded")
                return
            identity = Identity(c.uid, c.gid, c.groups or ())
            if self.admission.explicit and not self._could_reach_right(identity):
                # Let in on purpose by --allow-uid/--allow-gid although the file would
                # refuse it: as itself it would be refused upstream, so the proxy connects
                # as its own user (the dump says so at start).
                identity = None
        Connecting(self.core, conn, client, self._target, self.connect_timeout, identity).attempt()

    def _could_reach_right(self, identity: Identity) -> bool:
        """Would the kernel let this user connect to RIGHT's socket file itself?"""
        address = self.right.address
        if self.right.kind is not EndpointKind.UNIX or address is None or not address.is_pathname:
            return True  # an abstract name has no permissions
        try:
            facts = path_facts(address.path)
        except OSError:
            return True  # the connect will say what is wrong
        return may_connect(facts, identity.uid, identity.gid, identity.groups)

    def _failed(
        self, conn: ConnectionInfo, client: socket.socket, message: str, err: int | None = None
    ) -> None:
        """The upstream side of one client could not be made: close that client only."""
        client.close()
        self.stats.failed += 1
        self.emit(EventKind.FAILED, conn, message)
        if self.core.closed or self._listen is None:
            return
        if err in SCARCE:
            # No fds (or memory) for an upstream: more clients would fail the same way.
            if not self._accept_paused:
                self._pause_accept(SCARCE_PAUSE)
        elif self._accept_paused:
            # A slot (--max-clients) is free again; _on_accept pauses again if need be.
            self._resume_accept()

    def _start_session(
        self,
        conn: ConnectionInfo,
        client: socket.socket,
        upstream: socket.socket,
        child: subprocess.Popen[bytes] | None = None,
    ) -> None:
        """An upstream is connected (or a command started): forward `client` to it."""
        if upstream.family != socket.AF_UNIX:
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        creds = self._credentials_for(conn, upstream)
        mode = self._mode_for(client, upstream)
        if creds is not None and mode is CopyMode.SPLICE:
            mode = CopyMode.COPY  # splice(2) cannot attach SCM_CREDENTIALS
        try:
            session = Session(self.core, conn, client, upstream, mode, child, creds)
        except OSError:  # no fds left for the splice pipes (only SPLICE makes any): copy
            mode = CopyMode.COPY
            session = Session(self.core, conn, client, upstream, mode, child, creds)
        self.sessions.add(session)
        stats = self.stats
        stats.active += 1
        stats.modes[mode.value] = stats.modes.get(mode.value, 0) + 1
        if self.tap is not None:
            self.tap.opened(conn, time.time_ns())
        session.start()
        if self.on_event is not None:
            self.on_event(RelayEvent(EventKind.CONNECTED, time.time_ns(), conn, mode))

    def _credentials_for(
        self, conn: ConnectionInfo, upstream: socket.socket
    ) -> tuple[Credentials | None, Credentials | None] | None:
        """What each direction's chunks carry as SCM_CREDENTIALS when identities are
        carried: the client's pid, uid and gid towards the server (a server without
        SO_PASSCRED never sees them; one with it sees the original sender). Replies go
        as they are: a sendmsg with credentials costs about a microsecond a chunk
        (benchmarks/dump_identity.py), and no client we know of checks its server so."""
        if not self.carry_identity or upstream.family != socket.AF_UNIX:
            return None
        client = conn.client
        if client.pid is None or client.uid is None or client.gid is None:
            return None
        return (Credentials(client.pid, client.uid, client.gid), None)

    def _mode_for(self, client: socket.socket, upstream: socket.socket) -> CopyMode:
        kinds = {socket_type(client), socket_type(upstream)}
        if SocketType.SEQPACKET in kinds:
            return CopyMode.RECORD
        if self.splice and self.tap is None:
            return CopyMode.SPLICE
        return CopyMode.COPY

    def session_ended(self, session: Stoppable, end: SessionEnd) -> None:
        """A stream session has closed both sides: count it, reap its command, report."""
        if isinstance(session, Session):
            self.sessions.discard(session)
        stats = self.stats
        stats.active -= 1
        stats.c2s_bytes += end.c2s_bytes
        stats.s2c_bytes += end.s2c_bytes
        if end.kind is EventKind.RESET:
            stats.resets += 1
        else:
            stats.closed += 1
        if end.child is not None:
            self._reap(end.child)
        if self.on_event is not None:
            self.on_event(
                RelayEvent(
                    end.kind,
                    end.time_ns,
                    end.conn,
                    end.mode,
                    end.c2s_bytes,
                    end.s2c_bytes,
                    end.first,
                    end.detail,
                )
            )
        self._resume_accept()
        if self._single and not self.sessions:
            self.loop.stop()

    # -- one connection, no listener -------------------------------------------------------
    def _open_single(self) -> None:
        """LEFT connects (or is stdio / a command): one session, then the relay ends."""
        # A command is among self._children from its start (see _spawn), so a stop at
        # any line here ends it with the relay.
        left_sock, _left_child = self._open_side(self.left)
        try:
            right_sock, right_child = self._open_side(self.right)
        except BaseException:
            left_sock.close()
            raise
        conn = ConnectionInfo(
            self.new_id(), self.left.sock_type, str(self.left), str(self.right), ClientInfo()
        )
        self._start_session(conn, left_sock, right_sock, right_child)

    def _open_side(
        self, spec: EndpointSpec
    ) -> tuple[socket.socket, subprocess.Popen[bytes] | None]:
        if spec.kind is EndpointKind.STDIO:
            import sys

            stdin, stdout = self.stdio or (sys.stdin.buffer, sys.stdout.buffer)
            sock, writer = stdio_bridge(stdin, stdout)
            self._stdout_writer = writer
            return sock, None
        if spec.kind is EndpointKind.EXEC:
            assert spec.command is not None
            return self._spawn(spec.command)
        return connect_blocking(resolve_target(spec), self.connect_timeout), None

    def _spawn(self, command: str) -> tuple[socket.socket, subprocess.Popen[bytes]]:
        """Start an exec: command, known to the relay before any stop signal can strike.
        The command runs before Popen returns: a stop signal raised before the relay knew
        it left it running after the relay (seen in a soak, with the other CPU busy)."""
        with signals_held():
            sock, child = spawn_exec(command)
            self._children[child.pid] = child
        return sock, child

    # -- children (exec:) -----------------------------------------------------------------
    def _reap(self, child: subprocess.Popen[bytes]) -> None:
        """Wait for a command without blocking the loop: a pidfd says when it exits."""
        if child.poll() is not None:
            self._children.pop(child.pid, None)  # (known since its start: see _spawn)
            return
        pid = child.pid
        self._children[pid] = child
        if pid in self._pidfds or self.core.closed:
            return
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return  # reaped in _stop_children
        self._pidfds[pid] = pidfd

        def exited(_events: int) -> None:
            self.loop.unregister(pidfd)
            os.close(self._pidfds.pop(pid))
            child.poll()
            self._children.pop(pid, None)

        self.loop.register(pidfd, IN, exited)

    def _stop_children(self) -> None:
        """End every command still running, and what it started: each command leads its
        own process group (spawn_exec), since /bin/sh -c may fork the real command.
        All groups get SIGTERM first and share one grace period; then whatever is left
        of a group gets SIGKILL while its leader, exited or not, is not yet reaped (so
        its pid, the group's id, cannot have been reused)."""
        pidfds, self._pidfds = self._pidfds, {}
        children = [c for c in self._children.values() if c.returncode is None]
        self._children.clear()
        for child in children:
            _kill_group(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + _CHILD_GRACE
        for child in children:
            pidfd = pidfds.pop(child.pid, None)
            if pidfd is None:
                with suppress(OSError):
                    pidfd = os.pidfd_open(child.pid)
            if pidfd is None:  # no pidfd: wait the plain way (may reap the leader)
                try:
                    child.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    _kill_group(child.pid, signal.SIGKILL)
                    child.wait()
                continue
            try:
                poller = select.poll()
                poller.register(pidfd, select.POLLIN)  # readable once the leader exited
                poller.poll(max(0, int((deadline - time.monotonic()) * 1000)))
                _kill_group(child.pid, signal.SIGKILL)
                child.wait()
            finally:
                os.close(pidfd)
        for pidfd in pidfds.values():  # commands reaped meanwhile
            with suppress(OSError):
                os.close(pidfd)


def _kill_group(pgid: int, signum: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def group_name(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
