"""I/O: a non-blocking connect to RIGHT in progress, for one accepted client.

Used by the engine for each client; reports back through the `RelayCore` it was given
(`start_session` once connected, `failed` when it gives up), and is listed in the
core's `pending` set meanwhile, so a closing relay can stop it.
"""

from __future__ import annotations

import errno
import socket
import time
from typing import Final, final

from udskit.credswitch import connect_as
from udskit.identity import Identity
from udskit.relay.core import RelayCore
from udskit.relay.loop import OUT, Timer
from udskit.relay.sides import Target
from udskit.tap import ConnectionInfo

#: Connect retries while the upstream's backlog is full (EAGAIN on unix sockets).
RETRY_FIRST: Final = 0.002
RETRY_MAX: Final = 0.1


@final
class Connecting:
    """A non-blocking connect in progress: EINPROGRESS (TCP) waits for EPOLLOUT, EAGAIN
    (a unix listener's backlog is full, see unix_stream_connect) retries with backoff
    until `connect_timeout`."""

    def __init__(
        self,
        core: RelayCore,
        conn: ConnectionInfo,
        client: socket.socket,
        target: Target,
        timeout: float,
        identity: Identity | None = None,
    ) -> None:
        self.identity = identity
        self.core = core
        self.conn = conn
        self.client = client
        self.target = target
        self.sock: socket.socket | None = None
        self.timer: Timer | None = None
        self.delay = RETRY_FIRST
        self.deadline = time.monotonic() + timeout
        self.registered = False

    def attempt(self) -> None:
        self.timer = None
        try:
            sock = self.target.new_socket()
        except OSError as exc:  # EMFILE, ENFILE, ENOBUFS: fail this client, not the relay
            self._fail(exc.errno or errno.EIO)
            return
        if self.identity is not None:
            # As the client: the server sees its uid, gid and groups, and the socket
            # file's permissions are checked against them, not against ours.
            err = connect_as(self.identity, sock, self.target.sockaddr)  # type: ignore[arg-type]
        else:
            err = sock.connect_ex(self.target.sockaddr)  # type: ignore[arg-type]
        if err == 0:
            self._done(sock)
        elif err == errno.EINPROGRESS:
            self.sock = sock
            self.core.pending.add(self)
            self.core.loop.register(sock.fileno(), OUT, self._on_writable)
            self.registered = True
        elif err == errno.EAGAIN and time.monotonic() < self.deadline:
            sock.close()
            self.core.pending.add(self)
            self.timer = self.core.loop.call_later(self.delay, self.attempt)
            self.delay = min(self.delay * 2, RETRY_MAX)
        else:
            sock.close()
            self._fail(err)

    def _on_writable(self, _events: int) -> None:
        sock = self.sock
        assert sock is not None
        self.core.loop.unregister(sock.fileno())
        self.registered = False
        self.sock = None
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            sock.close()
            self._fail(err)
        else:
            self._done(sock)

    def _done(self, sock: socket.socket) -> None:
        self.core.pending.discard(self)
        self.core.start_session(self.conn, self.client, sock, None)

    def _fail(self, err: int) -> None:
        self.core.pending.discard(self)
        message = str(self.target.error("connect", err))
        self.core.failed(self.conn, self.client, message, err)

    def stop(self) -> None:
        """The relay is closing: give up, closing the client and any half-made socket."""
        if self.timer is not None:
            self.timer.cancel()
        if self.sock is not None:
            if self.registered:
                self.core.loop.unregister(self.sock.fileno())
            self.sock.close()
        self.client.close()
        self.core.pending.discard(self)
