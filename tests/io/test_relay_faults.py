"""The relay engine under faults found in review: peers that half-vanish, upstreams
that fail, no file descriptors left, senders that are not allowed, empty records,
commands that outlive us, odd stdio. Real sockets and real processes throughout."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Peer, Peers, pids_whose_argv, wait_until
from tests.io.test_relay import front_connect, recv_all, unix_server
from udskit.errors import UsageError
from udskit.relay import EventKind, Relay, RelayEvent
from udskit.relay.pumpstate import PumpState


class Events:
    """on_event that records events and lets a test wait for one (thread-safe)."""

    def __init__(self) -> None:
        self.items: list[RelayEvent] = []
        self.cond = threading.Condition()

    def __call__(self, event: RelayEvent) -> None:
        with self.cond:
            self.items.append(event)
            self.cond.notify_all()

    def of(self, kind: EventKind, conn_id: int | None = None) -> list[RelayEvent]:
        with self.cond:
            return [
                e
                for e in self.items
                if e.kind is kind and (conn_id is None or (e.conn and e.conn.id == conn_id))
            ]

    def wait_for(self, *kinds: EventKind, conn_id: int | None = None) -> RelayEvent:
        with self.cond:
            found: list[RelayEvent] = []

            def seen() -> bool:
                found[:] = [e for k in kinds for e in self.of(k, conn_id)]
                return bool(found)

            assert self.cond.wait_for(seen, 10), f"no {kinds} event; got {self.items}"
            return found[0]


def _blast(sock: socket.socket) -> None:
    """Send until the connection breaks."""
    chunk = b"z" * 65536
    try:
        while True:
            sock.sendall(chunk)
    except OSError:
        pass


# -- 1: a peer shut down both ways while bytes wait for it ------------------------------------
@pytest.mark.parametrize("splice", [True, False], ids=["splice", "copy"])
@pytest.mark.parametrize("gone", ["client", "upstream"])
def test_peer_shut_down_both_ways_with_bytes_pending_ends_as_reset(
    sockdir: Path, splice: bool, gone: str
) -> None:
    """shutdown(SHUT_RDWR) without close, while the relay holds bytes for that peer:
    EPOLLHUP must end the connection (a reset: the bytes cannot be delivered), not
    wake the loop for ever."""
    back = sockdir / "back.sock"
    events = Events()
    server_sock: list[socket.socket] = []
    release = threading.Event()

    def server(conn: socket.socket) -> None:
        server_sock.append(conn)
        if gone == "client":
            _blast(conn)  # more than the client, which never reads, can take
        release.wait(20)  # the upstream: never reads, until the test is over

    with (
        unix_server(back, server),
        Relay(
            f"unix-listen:{sockdir}/f.sock", f"unix:{back}", splice=splice, on_event=events
        ).start() as relay,
        front_connect(relay) as client,
    ):
        sender = None
        if gone == "upstream":
            sender = threading.Thread(target=_blast, args=(client,), daemon=True)
            sender.start()

        def blocked() -> bool:
            # The upstream's bytes can fill its socket before our server thread has
            # accept()ed it (the kernel queues them on the not yet accepted socket): it
            # must also hold its end before the test shuts that down.
            if gone == "upstream" and not server_sock:
                return False
            pumps = [s.s2c if gone == "client" else s.c2s for s in list(relay.sessions)]
            return any(p.state is PumpState.BLOCKED for p in pumps)

        wait_until(blocked, what="the relay holding bytes it cannot send")
        (client if gone == "client" else server_sock[0]).shutdown(socket.SHUT_RDWR)
        end = events.wait_for(EventKind.RESET, EventKind.CLOSED)
        release.set()
        if sender is not None:
            sender.join(10)
    assert end.kind is EventKind.RESET
    assert end.detail.startswith(gone), end.detail


# -- 2: a failed upstream connect under --max-clients ---------------------------------------------
def test_failed_connect_does_not_stop_accepting_under_max_clients(sockdir: Path) -> None:
    """Client 1 waits for an upstream whose backlog is full; client 2 waits in our
    backlog (max_clients=1). When client 1's connect fails, client 2 must be taken."""
    back = sockdir / "back.sock"
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    upstream.bind(str(back))
    upstream.listen(0)  # takes one pending connection (unix_recvq_full: len > backlog)
    filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    filler.connect(str(back))
    events = Events()
    try:
        with Relay(
            f"unix-listen:{sockdir}/f.sock",
            f"unix:{back}",
            max_clients=1,
            connect_timeout=60,
            on_event=events,
        ).start() as relay:
            first = front_connect(relay)
            # Retrying: EAGAIN from the full backlog.
            wait_until(lambda: relay.pending_connects == 1, what="client 1 connecting")
            second = front_connect(relay)
            wait_until(lambda: relay._accept_paused, what="accepting paused by max_clients")
            upstream.close()  # now the retry fails for good (ECONNREFUSED)
            filler.close()
            events.wait_for(EventKind.FAILED, conn_id=1)
            events.wait_for(EventKind.ACCEPTED, conn_id=2)
            second.settimeout(10)
            first.settimeout(10)
            assert first.recv(1) == b""
            assert second.recv(1) == b""
            first.close()
            second.close()
            relay.stop()
    finally:
        upstream.close()
        filler.close()
    assert [e.conn.id for e in events.of(EventKind.FAILED) if e.conn] == [1, 2]


# -- 3: out of file descriptors ---------------------------------------------------------------
#: A relay whose RLIMIT_NOFILE leaves exactly argv[3] fds free, printing events as JSON.
_SCARCE_FDS = r"""
import fcntl, json, os, resource, sys
from udskit.relay import Relay

def on_event(e):
    print(json.dumps([e.kind.value, e.conn.id if e.conn else None, e.detail]), flush=True)

relay = Relay(sys.argv[1], sys.argv[2], on_event=on_event).open()
want = int(sys.argv[3])
def is_open(fd):
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
        return True
    except OSError:
        return False
used = {fd for fd in map(int, os.listdir("/proc/self/fd")) if is_open(fd)}
limit = 1
while limit - len([fd for fd in used if fd < limit]) != want or limit <= max(used):
    limit += 1
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
print(json.dumps(["ready", None, str(limit)]), flush=True)
relay.serve_forever()
"""


class _Lines:
    """JSON lines from a peer's stdout, read straight from the fd (select() cannot see
    what a buffered reader already holds)."""

    def __init__(self, peer: Peer) -> None:
        assert peer.proc.stdout is not None
        self.peer = peer
        self.fd = peer.proc.stdout.fileno()
        self.buffer = b""

    def next(self, timeout: float = 10.0) -> list[object]:
        while b"\n" not in self.buffer:
            ready, _, _ = select.select([self.fd], [], [], timeout)
            chunk = os.read(self.fd, 65536) if ready else b""
            if not chunk:
                _out, err = self.peer.stop()
                raise AssertionError(f"relay said nothing more; stderr: {err.decode()}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        event: list[object] = json.loads(line)
        return event


@pytest.mark.parametrize("right", ["unix", "exec", "dgram"])
def test_no_file_descriptors_left_fails_one_client_not_the_relay(
    peers: Peers, sockdir: Path, right: str
) -> None:
    back = sockdir / "back.sock"
    if right == "dgram":
        server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        left, right_spec, free = f"unix-recvfrom:{sockdir}/f.sock", f"unix-sendto:{back}", 0
    else:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        right_spec = "exec:cat" if right == "exec" else f"unix:{back}"
        left, free = f"unix-listen:{sockdir}/f.sock", 1  # the accepted client takes it
    with server:
        server.bind(str(back))
        if right != "dgram":
            server.listen(8)
        relay = peers.start(sys.executable, "-c", _SCARCE_FDS, left, right_spec, str(free))
        lines = _Lines(relay)
        assert lines.next()[0] == "ready"  # open() has bound; the script set its limit
        assert lines.next()[0] == "listening"  # serve_forever() serves
        for conn_id in (1, 2):  # the relay lives on and keeps serving
            if right == "dgram":
                with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
                    client.sendto(b"hi", f"{sockdir}/f.sock")
            else:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                    client.settimeout(10)
                    client.connect(f"{sockdir}/f.sock")
                    assert client.recv(1) == b""  # closed at once
            kinds: list[object] = []
            while not kinds or kinds[-1] != "failed":
                kind, got_id, detail = lines.next()
                assert got_id == conn_id
                kinds.append(kind)
            assert "file" in str(detail).lower(), detail  # "Too many open files"
        assert relay.proc.poll() is None
        _out, err = relay.stop(signal.SIGTERM)
    assert b"Traceback" not in err, err.decode()


# -- 4: --allow-uid for datagrams -----------------------------------------------------------------
_SEND_UNBOUND = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
    "s.sendto(sys.argv[2].encode(), '\\0' + sys.argv[1])\n"
)


def test_allow_uid_checks_every_datagram(peers: Peers, abstract_name: str) -> None:
    """Unbound senders all look alike by address; the credentials of each datagram
    decide, and one sender's pid is not credited to another's datagrams."""
    back = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    back_name = f"\0{abstract_name}-back"
    back.bind(back_name)
    back.settimeout(10)
    front_name = f"\0{abstract_name}-front"
    events = Events()
    with (
        back,
        Relay(
            f"abstract-recvfrom:{abstract_name}-front",
            f"abstract-sendto:{abstract_name}-back",
            allow_uids=[os.getuid()],
            on_event=events,
        ).start() as relay,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as mine,
    ):
        mine.sendto(b"mine", front_name)
        assert back.recv(100) == b"mine"
        result = peers.run(
            *Peers.as_nobody(sys.executable, "-c", _SEND_UNBOUND, front_name[1:], "theirs")
        )
        assert result.returncode == 0, result.stderr
        refused = events.wait_for(EventKind.REFUSED)
        mine.sendto(b"mine again", front_name)
        assert back.recv(100) == b"mine again"  # "theirs" never came through
        relay.stop()
    assert refused.conn is not None and refused.conn.client.uid == 65534
    connected = events.of(EventKind.CONNECTED)
    assert [e.conn.client.pid for e in connected if e.conn] == [os.getpid()]


# -- 5 (and 14): empty seqpacket records -------------------------------------------------------
def test_empty_seqpacket_records_are_forwarded_not_taken_for_eof(sockdir: Path) -> None:
    back = sockdir / "back.sock"
    records = [b"one", b"", b"three", b"", b""]
    received: list[bytes] = []
    done = threading.Event()

    def collect(conn: socket.socket) -> None:
        for _ in records:  # b"" is a record here; count them instead
            received.append(conn.recv(1 << 16))
        done.set()

    with (
        unix_server(back, collect, socket.SOCK_SEQPACKET),
        Relay(f"seqpacket:unix-listen:{sockdir}/f.sock", f"seqpacket:unix:{back}").start() as relay,
        front_connect(relay) as client,
    ):
        for record in records:
            client.send(record)
        client.shutdown(socket.SHUT_WR)
        assert done.wait(10)
    assert received == records


# -- 6 and 9: commands ----------------------------------------------------------------------
def _processes_with(arg: str) -> list[int]:
    word = arg.encode()
    return pids_whose_argv(lambda argv: word in argv)


@pytest.fixture
def sleeper() -> Iterator[str]:
    """A unique `sleep` argument; any such process left behind is killed by PID."""
    arg = f"{300 + int.from_bytes(os.urandom(2), 'big') / 1000:.3f}"
    yield arg
    for pid in _processes_with(arg):
        os.kill(pid, signal.SIGKILL)


def test_sigterm_ends_the_commands_too(peers: Peers, sockdir: Path, sleeper: str) -> None:
    """/bin/sh forks the real command (here because of the `; true`): it must not be
    left running, re-parented to init, after the relay exits."""
    front = sockdir / "f.sock"
    # The file appears at bind(), before listen(): wait for the listening state, or a
    # connect in between is refused (seen once in a full run on a busy machine).
    relay = peers.udskit(
        "relay",
        f"unix-listen:{front}",
        f"exec:sleep {sleeper}; true",
        wait_for=front,
        listening=True,
    )
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(front))
        wait_until(lambda: _processes_with(sleeper), what="the command running")
        relay.send_signal(signal.SIGTERM)
        # Only the relay's own exit: a leftover command would also hold its stderr.
        assert relay.wait(10) == 143
        # SIGKILL was sent to the command's group; kill(2) returns before it has died.
        wait_until(lambda: _processes_with(sleeper) == [], what="the killed command to end")


def _open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def test_no_pidfd_left_for_a_command_still_running(sockdir: Path, sleeper: str) -> None:
    before = _open_fds()
    events = Events()
    with Relay(
        f"unix-listen:{sockdir}/f.sock", f"exec:sleep {sleeper}; true", on_event=events
    ).start() as relay:
        with front_connect(relay):
            events.wait_for(EventKind.CONNECTED)
        events.wait_for(EventKind.CLOSED)  # the client left; the command still runs
        # The shell may not have started `sleep` yet on a busy machine.
        wait_until(lambda: _processes_with(sleeper), what="the command's sleep")
        relay.stop()
    assert _open_fds() - before == set()
    # SIGKILL was sent to the command's group; kill(2) returns before it has died.
    wait_until(lambda: _processes_with(sleeper) == [], what="the killed command to end")


def _read_quietly(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        recv_all(conn)


# -- 7: stop() from the relay's own thread ------------------------------------------------------
def test_stop_from_an_event_callback_returns_at_once(sockdir: Path) -> None:
    returned = threading.Event()
    relay_box: list[Relay] = []

    def on_event(event: RelayEvent) -> None:
        if event.kind is EventKind.ACCEPTED:
            relay_box[0].stop(timeout=60)  # the old code waited the whole timeout here
            returned.set()

    back = sockdir / "back.sock"
    with (
        unix_server(back, _read_quietly),
        Relay(f"unix-listen:{sockdir}/f.sock", f"unix:{back}", on_event=on_event) as relay,
    ):
        relay_box.append(relay)
        relay.start()
        with front_connect(relay):
            assert returned.wait(10)
            assert relay.wait(10)


# -- 8: --connect-timeout ---------------------------------------------------------------------
@pytest.mark.parametrize("value", ["-1", "0", "nan", "soon"])
def test_bad_connect_timeout_gets_one_line(peers: Peers, value: str) -> None:
    result = peers.udskit_run(
        "relay", f"--connect-timeout={value}", "unix-listen:/tmp/x", "unix:/tmp/y"
    )
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert "connect-timeout" in lines[-1] and "Traceback" not in result.stderr.decode(), lines


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_connect_timeout_is_a_usage_error(value: float) -> None:
    with pytest.raises(UsageError, match="connect_timeout"):
        Relay("unix-listen:/tmp/x", "unix:/tmp/y", connect_timeout=value)


# -- 10: non-blocking stdio ---------------------------------------------------------------------
def test_non_blocking_stdin_and_stdout_lose_nothing(sockdir: Path) -> None:
    """A shell may hand us non-blocking pipes: EAGAIN is not EOF, and a full stdout
    pipe is waited for."""
    back = sockdir / "back.sock"
    request = os.urandom(200_000)
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    os.set_blocking(in_r, False)
    os.set_blocking(out_w, False)
    connected = threading.Event()

    def echo(conn: socket.socket) -> None:
        connected.set()
        while data := conn.recv(65536):
            conn.sendall(data)

    def feed() -> None:
        with open(in_w, "wb") as stdin_feed:
            stdin_feed.write(request)

    answer = bytearray()
    feeder = threading.Thread(target=feed, daemon=True)
    with (
        unix_server(back, echo),
        open(in_r, "rb", buffering=0) as stdin,
        open(out_w, "wb", buffering=0) as stdout,
        open(out_r, "rb", buffering=0) as drain,
    ):
        relay = Relay("-", f"unix:{back}", stdio=(stdin, stdout)).start()
        try:
            assert connected.wait(10)  # stdin is empty and non-blocking by now
            feeder.start()
            # Read only once stdout's pipe is full (the relay then meets EAGAIN).
            wait_until(lambda: _pipe_full(drain.fileno()), what="stdout's pipe filling up")
            while len(answer) < len(request) and select.select([drain], [], [], 10)[0]:
                answer += drain.read(65536) or b""
            feeder.join(10)
        finally:
            relay.stop()
    assert bytes(answer) == request


def _pipe_full(fd: int) -> bool:
    import fcntl
    import termios

    queued = int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"), "little")
    return queued >= fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)


# -- 11: a datagram client that never reads its replies --------------------------------------------
def test_replies_to_a_client_that_never_reads_are_dropped_and_counted(sockdir: Path) -> None:
    back = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    back.bind(str(sockdir / "back.dgram"))
    stop = threading.Event()

    def flood() -> None:
        """Answer the first datagram with far more replies than a queue holds."""
        try:
            _data, sender = back.recvfrom(100)
            for _ in range(200):
                back.sendto(b"r" * 100, sender)
        except OSError:
            pass
        stop.wait(20)

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    events = Events()
    front = str(sockdir / "front.dgram")
    try:
        with (
            Relay(
                f"unix-recvfrom:{front}",
                f"unix-sendto:{sockdir}/back.dgram",
                dgram_idle=0.5,
                on_event=events,
            ).start() as relay,
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client,
        ):
            client.bind(str(sockdir / "client.dgram"))
            client.sendto(b"go", front)
            wait_until(lambda: relay.stats.dropped > 0, what="replies given up")
            end = events.wait_for(EventKind.CLOSED)
            relay.stop()
    finally:
        stop.set()
        back.close()
        thread.join(5)
    assert "dropped" in end.detail, end.detail


def test_exec_command_gone_is_a_clean_end(sockdir: Path) -> None:
    """Sanity for the process-group change: a command that exits by itself still
    gives its output and a CLOSED event."""
    events = Events()
    with Relay(
        f"unix-listen:{sockdir}/f.sock", "exec:echo hello", on_event=events
    ).start() as relay:
        with front_connect(relay) as client:
            client.settimeout(10)
            assert recv_all(client) == b"hello\n"
        events.wait_for(EventKind.CLOSED)
        relay.stop()


def test_a_relay_at_its_fd_limit_says_so_once_not_every_pause(peers: Peers, sockdir: Path) -> None:
    back = sockdir / "back.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(back))
        server.listen(8)
        front = f"{sockdir}/f.sock"
        relay = peers.start(
            sys.executable, "-c", _SCARCE_FDS, f"unix-listen:{front}", f"unix:{back}", "0"
        )
        lines = _Lines(relay)
        assert lines.next()[0] == "ready"  # open() has bound; the script set its limit
        assert lines.next()[0] == "listening"  # serve_forever() serves
        clients = []
        for _ in range(3):  # they wait in the backlog: every accept() fails with EMFILE
            client = socket.socket(socket.AF_UNIX)
            client.connect(front)
            clients.append(client)
        assert lines.next()[0] == "error"
        # A pause every 0.1 s, and at most one line per 5 s: nothing more in 3 s (a
        # slower machine pauses less, never more).
        fd = lines.fd
        ready, _, _ = select.select([fd], [], [], 3.0)
        assert not ready and b"\n" not in lines.buffer, os.read(fd, 65536) if ready else b""
        for client in clients:
            client.close()
        _out, err = relay.stop(signal.SIGTERM)
    assert b"Traceback" not in err, err.decode()
