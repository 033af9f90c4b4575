"""I/O: the nc-like servers and clients behind `udskit listen`, `connect` and `send`.

Servers take a `Listener` and an `Action` (print, echo, upper, exec); clients take a
connected socket. Output and log lines go through callables so the command line,
tests and other programs can route them where they like.
"""

from __future__ import annotations

import enum
import errno
import os
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Final, Protocol, final

from udskit.address import AddressKind, UnixAddress
from udskit.ancillary import peer_groups, peer_ucred
from udskit.endpoints import Listener, recv_message, send_message
from udskit.errors import PeerClosed, SocketError, UdskitError, UsageError, socket_error
from udskit.probe import explain, os_errors
from udskit.procfs import process_command
from udskit.safetext import escape_text
from udskit.signals import Terminated, signals_held, start_worker, unblock_stop_signals
from udskit.socktype import SocketType
from udskit.talkevents import Accepted, Closed, Received, Refused, ServerEvent, Stopped

__all__ = [
    "Action",
    "OutputClosed",
    "PeerFilter",
    "ServeOptions",
    "pump_messages",
    "pump_stream",
    "send_messages",
    "serve",
]

#: Bytes moved per read: large enough that a bulk copy costs few syscalls.
CHUNK: Final = 256 * 1024
#: Seconds a stopping server gives its client threads, all together, to finish.
STOP_GRACE: Final = 0.5
#: Default receive buffer for one datagram or seqpacket record (the largest a unix
#: datagram can be with default sysctls is about 212 KiB; 64 KiB covers most protocols).
DEFAULT_MESSAGE_BUFFER: Final = 65536

Out = Callable[[bytes], None]
Log = Callable[[str], None]
#: Told of each thing a server does (`udskit.talkevents`); `listen --json` prints them.
Observer = Callable[[ServerEvent], None]


class Action(enum.Enum):
    """What a server does with what it receives."""

    PRINT = "print"  # write it to stdout
    ECHO = "echo"  # send it back
    UPPER = "upper"  # send it back in upper case (the classic datagram example)
    EXEC = "exec"  # hand the connection to a command (its stdin/stdout)


@final
@dataclass(frozen=True, slots=True)
class PeerFilter:
    """Accept only peers whose SO_PEERCRED uid or gid is listed (empty: everybody).
    A gid matches the peer's primary group or, given the connection, any of its
    supplementary groups (SO_PEERGROUPS), as file permissions would."""

    uids: frozenset[int] = frozenset()
    gids: frozenset[int] = frozenset()

    @property
    def active(self) -> bool:
        return bool(self.uids or self.gids)

    def allows(self, uid: int, gid: int, conn: socket.socket | None = None) -> bool:
        if not self.uids and not self.gids:
            return True
        if uid in self.uids or gid in self.gids:
            return True
        if self.gids and conn is not None:
            from udskit.ancillary import peer_groups

            return not self.gids.isdisjoint(peer_groups(conn))
        return False


@final
@dataclass(frozen=True, slots=True)
class ServeOptions:
    action: Action = Action.PRINT
    command: str | None = None  # for Action.EXEC, run by /bin/sh -c
    count: int | None = None  # stop after this many connections or datagrams
    concurrent: bool = False  # serve connections at once rather than one by one
    buffer: int = DEFAULT_MESSAGE_BUFFER  # receive buffer for one message
    peers: PeerFilter = field(default_factory=PeerFilter)
    verbose: bool = False


class OutputClosed(Exception):
    """Our own output went away (`udskit listen | head`): nobody is left to print to.

    Not a client's failure, and not an error to report: the server just stops."""


class StopFlag(Protocol):
    """What tells a server to stop accepting (e.g. `udskit.handoff.Stopper`)."""

    def fileno(self) -> int: ...
    def is_set(self) -> bool: ...


def serve(
    listener: Listener,
    options: ServeOptions,
    out: Out,
    log: Log,
    *,
    stop: StopFlag | None = None,
    events: Observer | None = None,
) -> int:
    """Serve until `options.count` is reached (or forever). Returns how many were served.

    With `events`, each client accepted or refused, each read, each close and the stop
    (with its reason and totals) is told to it as a `udskit.talkevents` value, one at a
    time even with concurrent clients; what is received then goes there and not to
    `out` (`listen --json`: the data is in the events).

    With `stop`, serving ends once it is set: no more clients are accepted, and the
    ones being served are finished first (a hand-off drains this way). The listener
    may then be shared with another process, so accepting waits in poll() and takes
    EAGAIN (the other process was quicker) in its stride.

    Raises OutputClosed when writing to `out` (or telling `events`) fails."""
    closed = threading.Event()

    def output_closed() -> None:
        closed.set()
        # Wake the accept() of the main thread when a connection thread hit it
        # (not a listener that may be shared with a successor: that one polls).
        if stop is None:
            with suppress(OSError):
                listener.sock.shutdown(socket.SHUT_RDWR)

    def guarded(data: bytes) -> None:
        try:
            out(data)
        except OSError as exc:
            output_closed()
            raise OutputClosed from exc

    report = _Report(events, output_closed)
    if listener.type is SocketType.DGRAM and stop is not None:
        raise UsageError("a datagram server has no connections to drain; no hand-off")
    try:
        if listener.type is SocketType.DGRAM:
            served = _serve_datagrams(listener, options, guarded, log, report)
        else:
            served = _serve_connections(listener, options, guarded, log, closed, report, stop)
    except OutputClosed:
        raise  # nobody is left to tell
    except KeyboardInterrupt:
        report.stopped("interrupted")
        raise
    except Terminated:
        report.stopped("terminated")
        raise
    except BaseException:
        report.stopped("error")
        raise
    report.stopped("handoff" if stop is not None and stop.is_set() else "count")
    return served


@final
class _Report:
    """The events of one server for its observer: told one at a time (client threads
    share it), and tallied for the last one, `Stopped`. Without an observer it does
    nothing, and `active` is false."""

    def __init__(self, observer: Observer | None, output_closed: Callable[[], None]) -> None:
        self._observer = observer
        self._output_closed = output_closed
        self._lock = threading.Lock()
        self._connections = self._messages = self._bytes = self._refused = self._failed = 0
        self._per_connection: dict[int, tuple[int, int]] = {}
        self._stopped = False

    @property
    def active(self) -> bool:
        return self._observer is not None

    def __call__(self, event: ServerEvent) -> None:
        if self._observer is None:
            return
        with self._lock:
            if isinstance(event, Accepted):
                self._connections += 1
                self._per_connection[event.connection] = (0, 0)
            elif isinstance(event, Received):
                self._messages += 1
                self._bytes += event.length
                if event.connection is not None:
                    messages, count = self._per_connection.get(event.connection, (0, 0))
                    self._per_connection[event.connection] = (messages + 1, count + event.length)
            elif isinstance(event, Refused):
                self._refused += 1
            elif isinstance(event, Closed) and event.error is not None:
                self._failed += 1
            try:
                self._observer(event)
            except OSError as exc:
                self._output_closed()
                raise OutputClosed from exc

    def closed(self, connection: int, error: str | None) -> None:
        if self._observer is None:
            return
        with self._lock:
            messages, count = self._per_connection.pop(connection, (0, 0))
        self(Closed(connection, messages, count, error))

    def stopped(self, reason: str) -> None:
        """The last event (once): on the way out of a signal or an error too, unless
        the output itself is what failed."""
        if self._observer is None or self._stopped:
            return
        self._stopped = True
        with self._lock:
            totals = (self._connections, self._messages, self._bytes)
            refused, failed = self._refused, self._failed
        with suppress(OutputClosed):
            self(Stopped(reason, *totals, refused, failed))


# -- connection servers (stream, seqpacket) ------------------------------------------------
def _serve_connections(
    listener: Listener,
    options: ServeOptions,
    out: Out,
    log: Log,
    closed: threading.Event,
    report: _Report,
    stop: StopFlag | None = None,
) -> int:
    served = 0
    threads: list[threading.Thread] = []
    lock = threading.Lock()  # keeps concurrent clients' printed chunks whole
    live = _Live()
    failures = _FailureLog(log)
    poller = None
    if stop is not None:
        listener.sock.setblocking(False)
        poller = select.poll()
        poller.register(listener.fileno(), select.POLLIN)
        poller.register(stop.fileno(), select.POLLIN)
    try:
        while options.count is None or served < options.count:
            if stop is not None and poller is not None:
                if stop.is_set():
                    break
                poller.poll(500)  # also looks at `closed` now and then
                if closed.is_set():
                    raise OutputClosed
                if stop.is_set():
                    break
            try:
                conn, _addr = listener.accept()
            except SocketError as err:
                if closed.is_set():
                    raise OutputClosed from None
                if stop is not None and err.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    continue  # another process sharing the listener took that client
                raise
            if stop is not None:
                conn.setblocking(True)
            cred = peer_ucred(conn)
            pid, uid, gid = cred.pid, cred.uid, cred.gid
            groups = peer_groups(conn) if report.active else ()
            if not options.peers.allows(uid, gid, conn):
                # On record before the close: the client sees its end of file after.
                try:
                    log(f"refused a client: pid {pid} uid {uid} gid {gid} is not allowed")
                    report(Refused(pid, uid, gid, groups))
                finally:
                    conn.close()
                continue
            served += 1
            if report.active:
                report(Accepted(served, pid, uid, gid, groups, _command_or_none(pid)))
            if options.verbose:
                log(
                    f"connection {served} from pid {pid} "
                    f"({escape_text(process_command(pid))}) uid {uid}"
                )
            env = {
                "UDSKIT_PEER_PID": str(pid),
                "UDSKIT_PEER_UID": str(uid),
                "UDSKIT_PEER_GID": str(gid),
            }
            args = (conn, listener, options, out, log, lock, env, live, failures, report, served)
            if options.concurrent:
                threads.append(start_worker(_handle_in_thread, *args))
                threads = [t for t in threads if t.is_alive()]
            else:
                _handle_connection(*args)
    except BaseException:
        failures.summary()
        # A signal or a failure: idle clients and exec children would keep the joins
        # below waiting for ever, so end them first.
        live.end_all()
        # One short budget for all of them, not one per thread: a stop must not wait
        # on a crowd of clients (the threads are daemons and end with the process).
        deadline = time.monotonic() + STOP_GRACE
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        raise
    for thread in threads:
        thread.join()
    failures.summary()
    return served


def _command_or_none(pid: int) -> str | None:
    """The peer's /proc/PID/comm, or None once it has exited (a quick client may)."""
    command = process_command(pid)
    return None if command == "?" and not os.path.exists(f"/proc/{pid}") else command


@final
class _Live:
    """The client connections and exec children in flight, so that a stop ends them.

    Once `end_all` has run, whatever is added is ended at once: a --concurrent
    connection thread that started its command while the main thread was ending the
    others would otherwise leave it running after the server."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: set[socket.socket | subprocess.Popen[bytes]] = set()
        self._ended = False

    def add(self, item: socket.socket | subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._items.add(item)
            ended = self._ended
        if ended:
            self._end(item)

    def discard(self, item: socket.socket | subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._items.discard(item)

    def end_all(self) -> None:
        with self._lock:
            items = list(self._items)
            self._ended = True
        for item in items:
            self._end(item)

    @staticmethod
    def _end(item: socket.socket | subprocess.Popen[bytes]) -> None:
        if isinstance(item, socket.socket):
            with suppress(OSError):
                item.shutdown(socket.SHUT_RDWR)
        else:
            _end_group(item)


def _handle_in_thread(*args: Any) -> None:
    with suppress(OutputClosed):  # the main thread learns of it from its accept()
        _handle_connection(*args)


def _handle_connection(
    conn: socket.socket,
    listener: Listener,
    options: ServeOptions,
    out: Out,
    log: Log,
    lock: threading.Lock,
    env: dict[str, str],
    live: _Live,
    failures: _FailureLog,
    report: _Report,
    connection: int,
) -> None:
    live.add(conn)
    error: str | None = None
    try:
        with conn:
            if options.action is Action.EXEC:
                _exec_on(conn, options.command or "cat", env, live)
            elif listener.type is SocketType.SEQPACKET:
                _serve_records(conn, listener, options, out, log, lock, report, connection)
            else:
                _serve_stream(conn, options, out, lock, report, connection)
    except OSError as err:  # a reset mid-stream ends that client, not the server
        error = failures.failed(err)
    finally:
        live.discard(conn)
    report.closed(connection, error)


@final
class _FailureLog:
    """Client failures without the noise: the first of each kind is logged in full,
    repeats are counted, with a line at 10, 100, 1000... and a total when the server
    stops (1,000 reset clients used to make 1,000 identical lines)."""

    def __init__(self, log: Log) -> None:
        self._log = log
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    @staticmethod
    def _kind(err: OSError) -> str:
        if isinstance(err, PeerClosed):
            return str(err)
        if err.errno:
            name = errno.errorcode.get(err.errno, str(err.errno))
            return f"{os.strerror(err.errno).lower()} ({name})"
        return str(err)

    def failed(self, err: OSError) -> str:
        """Count (and maybe log) one client's failure; returns its kind."""
        kind = self._kind(err)
        with self._lock:
            count = self._counts[kind] = self._counts.get(kind, 0) + 1
        if count == 1:
            self._log(f"a client failed: {kind}")
        elif count in (10, 100, 1000, 10_000, 100_000):
            self._log(f"{count} clients have failed so far: {kind}")
        return kind

    def summary(self) -> None:
        with self._lock:
            repeated = {kind: n for kind, n in self._counts.items() if n > 1}
        for kind, count in repeated.items():
            self._log(f"{count} clients failed in all: {kind}")


def _serve_stream(
    conn: socket.socket,
    options: ServeOptions,
    out: Out,
    lock: threading.Lock,
    report: _Report,
    connection: int,
) -> None:
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    while True:
        n = conn.recv_into(buf)
        if n == 0:
            break
        if report.active:
            report(Received(bytes(view[:n]), n, connection=connection))
        if options.action is Action.PRINT:
            if report.active:
                continue  # the data is in the event
            with lock:
                out(bytes(view[:n]))
        elif options.action is Action.UPPER:
            conn.sendall(bytes(view[:n]).upper())
        else:
            conn.sendall(view[:n])
    if options.action is not Action.PRINT:
        conn.shutdown(socket.SHUT_WR)


def _serve_records(
    conn: socket.socket,
    listener: Listener,
    options: ServeOptions,
    out: Out,
    log: Log,
    lock: threading.Lock,
    report: _Report,
    connection: int,
) -> None:
    while True:
        message = recv_message(conn, options.buffer, listener.address)
        if message.length == 0 and not message.data:
            break  # EOF: a seqpacket peer that shut down or closed
        if message.truncated:
            log(f"message truncated: {message.length} bytes, buffer {options.buffer}")
        if report.active:
            report(Received(message.data, message.length, message.truncated, connection))
            if options.action is Action.PRINT:
                continue  # the data is in the event
        if options.action is Action.PRINT:
            with lock:
                out(_as_line(message.data))
        else:
            reply = message.data.upper() if options.action is Action.UPPER else message.data
            send_message(conn, reply, listener.address)


def _exec_on(conn: socket.socket, command: str, extra_env: dict[str, str], live: _Live) -> None:
    """Run `command` with the connection as its stdin and stdout, as inetd does.

    In a process group of its own, so that stopping the server reaches the command and
    not just the /bin/sh that started it. The stop signals are held from before the
    fork until the child is in `live`: the command is running before Popen returns, and
    a SIGTERM raised in that gap (or before `live.add`) left it running after the server
    had exited (seen in a soak). The child starts with them unblocked again."""
    env = dict(os.environ, **extra_env)
    proc: subprocess.Popen[bytes] | None = None
    try:
        with signals_held():
            proc = subprocess.Popen(
                command,
                shell=True,
                stdin=conn.fileno(),
                stdout=conn.fileno(),
                env=env,
                process_group=0,
                preexec_fn=unblock_stop_signals,  # noqa: PLW1509 (one C call, no lock)
            )
            live.add(proc)
        proc.wait()
    except BaseException:
        if proc is not None:
            _end_group(proc)
        raise
    finally:
        if proc is not None:
            live.discard(proc)


def _end_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the command's process group; SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(2.0)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _as_line(data: bytes) -> bytes:
    return data if data.endswith(b"\n") else data + b"\n"


# -- datagram server ------------------------------------------------------------------------------
def _serve_datagrams(
    listener: Listener, options: ServeOptions, out: Out, log: Log, report: _Report
) -> int:
    served = 0
    warned_unnamed = False
    checking = options.peers.active
    # Events carry each sender's credentials: datagrams have no connection to ask.
    wanted = checking or report.active
    if wanted:
        # Datagrams have no connection to check once: each one carries its sender's
        # credentials (SCM_CREDENTIALS) only while SO_PASSCRED is on. open_listener
        # (passcred=True) turns it on before bind; this covers a listener made without.
        listener.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    while options.count is None or served < options.count:
        message = recv_message(listener.sock, options.buffer, listener.address, credentials=wanted)
        creds = message.credentials
        if checking and (creds is None or not options.peers.allows(creds[1], creds[2])):
            who = f"pid {creds[0]} uid {creds[1]} gid {creds[2]}" if creds else "unknown"
            log(
                f"dropped a datagram from {message.sender}: sender {who} is not "
                "allowed (--allow-uid/--allow-gid); no reply"
            )
            pid, uid, gid = creds if creds is not None else (None, None, None)
            report(Refused(pid, uid, gid, sender=message.sender))
            continue
        served += 1
        sender = message.sender
        report(
            Received(
                message.data, message.length, message.truncated, sender=sender, credentials=creds
            )
        )
        if options.verbose:
            log(f"datagram {served} from {sender}: {message.length} bytes")
        if message.truncated:
            log(
                f"datagram from {sender} truncated: {message.length} bytes, "
                f"buffer {options.buffer} (raise --buffer)"
            )
        if options.action is Action.PRINT:
            if not report.active:  # else the data is in the event
                out(_as_line(message.data))
            continue
        if options.action is Action.EXEC:
            reply = subprocess.run(
                options.command or "cat",
                shell=True,
                input=message.data,
                capture_output=True,
                check=False,
            ).stdout
        elif options.action is Action.UPPER:
            reply = message.data.upper()
        else:
            reply = message.data
        if sender.kind is AddressKind.UNNAMED:
            if not warned_unnamed:
                log(
                    "cannot reply to an unnamed sender: it must bind an address "
                    "(udskit send autobinds; socat needs UNIX-SENDTO with bind=)"
                )
                warned_unnamed = True
            continue
        try:
            send_message(listener.sock, reply, listener.address, to=sender)
        except SocketError as err:  # one sender gone must not stop the server
            log(f"reply to {sender} failed: {err}")
    return served


# -- clients --------------------------------------------------------------------------------------
def _read_chunk(stream: BinaryIO) -> bytes:
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        read1 = getattr(stream, "read1", None)
        return bytes(read1(CHUNK) if read1 is not None else stream.read(CHUNK))
    return os.read(fd, CHUNK)


def pump_stream(sock: socket.socket, address: UnixAddress, stdin: BinaryIO, out: Out) -> None:
    """Copy stdin to the socket and the socket to `out`, like nc.

    EOF on stdin becomes shutdown(SHUT_WR), so the server sees the end of the request
    and can still answer; we return when the server closes its side.
    """
    failure: list[BaseException] = []
    uploaded = threading.Event()
    sending = threading.Event()  # a byte of stdin was in hand for the server

    def upload() -> None:
        try:
            while chunk := _read_chunk(stdin):
                sending.set()
                with os_errors("send", address):
                    sock.sendall(chunk)
            uploaded.set()  # before the shutdown: the server's end may follow at once
            sock.shutdown(socket.SHUT_WR)
        except OSError as err:  # SocketError and PeerClosed included
            failure.append(err)

    start_worker(upload)
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    received = 0
    while True:
        with os_errors("recv", address):
            n = sock.recv_into(buf)
        if n == 0:
            break
        received += n
        out(bytes(view[:n]))
    if failure:
        # The server closed before taking all of stdin: say so rather than drop data.
        raise failure[0]
    if sending.is_set() and not uploaded.is_set() and _closed_both_ways(sock):
        # The same, seen here first: the server is gone (not just done sending) while
        # the request was under way, and the send that fails with EPIPE may not have
        # run yet. Say it as that send would, whichever thread saw the end first (the
        # message used to depend on the scheduler: seen in a soak with the CPU busy).
        with os_errors("send", address):
            raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))
    if received == 0 and not uploaded.is_set():
        # An end before our request ended, and not a byte: what a server that turns this
        # client away does (udskit listen --allow-uid, a full server), not an answer.
        raise UdskitError(
            f"{address} closed the connection before the request ended, without sending "
            "anything: the server may refuse this client (its --allow-uid/--allow-gid, "
            "or a limit on clients); `udskit doctor` and the server's log say more"
        )


def _closed_both_ways(sock: socket.socket) -> bool:
    """Has the peer closed its socket, not just shut down its sending side? The kernel
    then marks ours shut down both ways, which poll(2) reports as POLLHUP."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return any(events & select.POLLHUP for _fd, events in poller.poll(0))


def pump_messages(
    sock: socket.socket,
    address: UnixAddress,
    sock_type: SocketType,
    stdin: BinaryIO,
    out: Out,
    log: Log,
    buffer: int = DEFAULT_MESSAGE_BUFFER,
    linger: float = 0.5,
) -> None:
    """One message per line of stdin; every message received is printed on a line.

    For seqpacket, stdin EOF becomes shutdown(SHUT_WR) and we wait for the server to
    close. Datagrams have no end: we wait `linger` seconds for late replies.
    """
    done = threading.Event()

    def receive() -> None:
        try:
            while True:
                message = recv_message(sock, buffer, address)
                if sock_type is SocketType.SEQPACKET and message.length == 0:
                    break
                if message.truncated:
                    log(f"reply truncated: {message.length} bytes, buffer {buffer}")
                out(_as_line(message.data))
        except (OSError, SocketError):
            pass
        finally:
            done.set()

    start_worker(receive)
    for line in _lines(stdin):
        send_message(sock, line, address)
    if sock_type is SocketType.SEQPACKET:
        sock.shutdown(socket.SHUT_WR)
        done.wait()
    else:
        done.wait(linger)


def _lines(stream: BinaryIO) -> Iterable[bytes]:
    pending = b""
    while chunk := _read_chunk(stream):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield from complete
    if pending:
        yield pending


@final
@dataclass(frozen=True, slots=True)
class Reply:
    data: bytes
    length: int
    truncated: bool


def send_messages(
    sock: socket.socket,
    address: UnixAddress,
    sock_type: SocketType,
    messages: Iterable[bytes],
    *,
    reply_size: int = DEFAULT_MESSAGE_BUFFER,
    wait_reply: bool = True,
    timeout: float = 2.0,
) -> Iterable[Reply | None]:
    """Send each message and yield its reply (None when none came within `timeout`).

    For a stream socket the messages are sent, the write side is shut, and everything
    the server sends back until it closes is yielded as one reply (None when it has not
    closed within `timeout`).
    """
    sock.settimeout(timeout)
    if sock_type is SocketType.STREAM:
        for message in messages:
            with os_errors("send", address):
                sock.sendall(message)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while True:
                with os_errors("recv", address):
                    chunk = sock.recv(CHUNK)
                if not chunk:
                    break
                chunks.append(chunk)
        except TimeoutError:
            # The server did not close within `timeout`: what came is not all there is.
            yield None
            return
        data = b"".join(chunks)
        yield Reply(data, len(data), False)
        return
    for message in messages:
        try:
            send_message(sock, message, address)
        except TimeoutError:
            # A full receiver queue blocks the sender; after `timeout` say so plainly.
            detail = explain("send", address, errno.EAGAIN)
            raise socket_error(
                "send", str(address), errno.EAGAIN, f"{detail} (waited {timeout} s)"
            ) from None
        if not wait_reply:
            continue
        try:
            got = recv_message(sock, reply_size, address)
        except TimeoutError:
            yield None
            continue
        yield Reply(got.data, got.length, got.truncated)
