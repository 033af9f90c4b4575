"""The forwarding engine from Python: half-close, resets, taps, types, credentials.

Servers here are real sockets (threads in this process, or socat); the relay runs in
its background thread and is stopped at the end of each test.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from udskit.endpoints import open_listener
from udskit.relay import CopyMode, EventKind, Relay, RelayEvent, serve_relay_async
from udskit.tap import ConnectionInfo, Direction

Handler = Callable[[socket.socket], None]


@contextmanager
def unix_server(path: Path, handler: Handler, kind: int = socket.SOCK_STREAM) -> Iterator[None]:
    """A server on `path` running `handler` per connection in a thread."""
    srv = socket.socket(socket.AF_UNIX, kind)
    srv.bind(str(path))
    srv.listen(64)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=lambda c=conn: _run(handler, c), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        srv.shutdown(socket.SHUT_RDWR)
        srv.close()
        thread.join(5)


def _run(handler: Handler, conn: socket.socket) -> None:
    with conn:
        handler(conn)


def recv_all(sock: socket.socket) -> bytes:
    out = bytearray()
    while chunk := sock.recv(1 << 16):
        out += chunk
    return bytes(out)


def upper_after_eof(conn: socket.socket) -> None:
    """Reads the whole request (to EOF), then answers: needs half-close to work."""
    conn.sendall(recv_all(conn).upper())


class Tap:
    """A Tap that keeps everything (copies: the engine reuses its buffer)."""

    def __init__(self) -> None:
        self.opened_list: list[ConnectionInfo] = []
        self.chunks: list[tuple[int, Direction, bytes]] = []
        self.closed_list: list[tuple[int, Direction | None]] = []

    def opened(self, conn: ConnectionInfo, time_ns: int) -> None:
        self.opened_list.append(conn)

    def data(
        self, conn: ConnectionInfo, direction: Direction, data: bytes | memoryview, time_ns: int
    ) -> None:
        self.chunks.append((conn.id, direction, bytes(data)))

    def closed(self, conn: ConnectionInfo, first: Direction | None, time_ns: int) -> None:
        self.closed_list.append((conn.id, first))

    def joined(self, direction: Direction) -> bytes:
        return b"".join(d for _i, dirn, d in self.chunks if dirn is direction)


def front_connect(relay: Relay) -> socket.socket:
    spec = relay.listen_endpoint
    if spec.is_tcp:
        assert spec.host is not None and spec.port is not None
        return socket.create_connection((spec.host, spec.port))
    assert spec.address is not None
    sock = socket.socket(socket.AF_UNIX, spec.sock_type.kernel)
    sock.connect(spec.address.to_sockaddr())
    return sock


@pytest.mark.parametrize("variant", ["splice", "copy", "tap", "tcp-front"])
def test_half_close_carries_request_and_answer(sockdir: Path, variant: str) -> None:
    back = sockdir / "back.sock"
    events: list[RelayEvent] = []
    tap = Tap() if variant == "tap" else None
    left = "tcp-listen:127.0.0.1:0" if variant == "tcp-front" else f"unix-listen:{sockdir}/f.sock"
    request = os.urandom(300_000)
    with (
        unix_server(back, upper_after_eof),
        Relay(
            left, f"unix:{back}", tap=tap, splice=variant != "copy", on_event=events.append
        ).start() as relay,
    ):
        with front_connect(relay) as client:
            client.sendall(request)
            client.shutdown(socket.SHUT_WR)  # EOF must reach the server...
            answer = recv_all(client)  # ...and the answer must still come back
        relay.stop()
    assert answer == request.upper()
    closed = [e for e in events if e.kind is EventKind.CLOSED]
    assert len(closed) == 1
    assert (closed[0].c2s_bytes, closed[0].s2c_bytes) == (len(request), len(request))
    assert closed[0].first is Direction.C2S
    expected = {"splice": CopyMode.SPLICE, "copy": CopyMode.COPY, "tap": CopyMode.COPY}
    assert closed[0].mode is expected.get(variant, CopyMode.SPLICE)
    if tap is not None:
        assert tap.joined(Direction.C2S) == request
        assert tap.joined(Direction.S2C) == request.upper()
        assert [c.id for c in tap.opened_list] == [1]
        assert tap.closed_list == [(1, Direction.C2S)]
        client_info = tap.opened_list[0].client
        assert (client_info.pid, client_info.uid) == (os.getpid(), os.getuid())
        assert client_info.command  # /proc/PID/comm of this test process


def test_server_closing_first_leaves_client_sending(sockdir: Path) -> None:
    """The server says goodbye and shuts its write side; the client's later bytes still
    reach it (the other direction keeps flowing)."""
    back = sockdir / "back.sock"
    got: list[bytes] = []
    heard = threading.Event()

    def greeter(conn: socket.socket) -> None:
        conn.sendall(b"bye\n")
        conn.shutdown(socket.SHUT_WR)
        got.append(recv_all(conn))
        heard.set()

    events: list[RelayEvent] = []
    with (
        unix_server(back, greeter),
        Relay(
            f"unix-listen:{sockdir}/f.sock", f"unix:{back}", on_event=events.append
        ).start() as relay,
    ):
        with front_connect(relay) as client:
            assert recv_all(client) == b"bye\n"  # EOF from the server arrived
            client.sendall(b"still talking")
            client.shutdown(socket.SHUT_WR)
            assert heard.wait(10)
        relay.stop()
    assert got == [b"still talking"]
    closed = [e for e in events if e.kind is EventKind.CLOSED]
    assert closed[0].first is Direction.S2C


def test_reset_closes_both_sides_and_is_reported_once(sockdir: Path) -> None:
    back = sockdir / "back.sock"
    arrived = threading.Event()

    def rude(conn: socket.socket) -> None:
        conn.recv(1)  # leave the rest unread: close() then resets the connection
        arrived.set()

    events: list[RelayEvent] = []
    with (
        unix_server(back, rude),
        Relay(
            f"unix-listen:{sockdir}/f.sock", f"unix:{back}", on_event=events.append
        ).start() as relay,
    ):
        with front_connect(relay) as client:
            client.sendall(b"x" * 100_000)
            assert arrived.wait(10)
            client.settimeout(10)
            # A unix socket cannot be reset on purpose (only closing it with unread
            # data does that, unix_release_sock): the client sees the end, EOF or reset.
            try:
                while client.recv(65536):
                    pass
            except ConnectionResetError:
                pass
        relay.stop()
    ends = [e for e in events if e.kind in (EventKind.CLOSED, EventKind.RESET)]
    assert [e.kind for e in ends] == [EventKind.RESET]
    assert "upstream" in ends[0].detail


def test_seqpacket_keeps_message_boundaries(sockdir: Path) -> None:
    """All records go out before any is read, so the relay sees them queued back to
    back, an empty one among them (b"" is a record, not EOF)."""
    back = sockdir / "back.sock"
    records = [b"one", b"", b"two two", os.urandom(150_000), b"", b"4"]
    received: list[bytes] = []

    def collect(conn: socket.socket) -> None:
        for _ in records:  # recv() gives b"" for an empty record too: count them
            msg = conn.recv(1 << 20)
            received.append(msg)
            conn.send(str(len(msg)).encode())

    with (
        unix_server(back, collect, socket.SOCK_SEQPACKET),
        Relay(f"seqpacket:unix-listen:{sockdir}/f.sock", f"seqpacket:unix:{back}").start() as relay,
        front_connect(relay) as client,
    ):
        client.settimeout(10)
        for record in records:
            client.send(record)
        replies = [client.recv(100) for _ in records]
    assert received == records
    assert replies == [str(len(r)).encode() for r in records]


def test_datagrams_each_sender_gets_its_own_replies(sockdir: Path) -> None:
    back = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    back.bind(str(sockdir / "back.dgram"))
    peers_seen: set[str] = set()

    def echo() -> None:
        while True:
            try:
                data, sender = back.recvfrom(65536)
            except OSError:
                return
            peers_seen.add(sender)
            back.sendto(data.upper(), sender)

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    front = str(sockdir / "front.dgram")
    clients = []
    try:
        with Relay(f"unix-recvfrom:{front}", f"unix-sendto:{sockdir}/back.dgram").start():
            for name in ("a", "b"):
                c = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                c.bind(str(sockdir / f"client-{name}"))
                c.settimeout(10)
                clients.append(c)
            for round_no in range(3):
                for name, c in zip("ab", clients, strict=True):
                    c.sendto(f"{name}{round_no}".encode(), front)
            replies = [[c.recv(100) for _ in range(3)] for c in clients]
    finally:
        for c in clients:
            c.close()
        back.close()
        thread.join(5)
    assert replies == [[b"A0", b"A1", b"A2"], [b"B0", b"B1", b"B2"]]
    assert len(peers_seen) == 2  # one upstream socket per sender


def test_allow_uid_turns_others_away(sockdir: Path) -> None:
    back = sockdir / "back.sock"
    events: list[RelayEvent] = []
    with (
        unix_server(back, upper_after_eof),
        Relay(
            f"unix-listen:{sockdir}/f.sock",
            f"unix:{back}",
            allow_uids=[os.getuid() + 1],
            on_event=events.append,
        ).start() as relay,
        front_connect(relay) as client,
    ):
        client.settimeout(10)
        assert client.recv(10) == b""  # closed at once
    refused = [e for e in events if e.kind is EventKind.REFUSED]
    assert len(refused) == 1 and refused[0].conn is not None
    assert refused[0].conn.client.pid == os.getpid()


def test_max_clients_makes_the_next_one_wait(sockdir: Path) -> None:
    back = sockdir / "back.sock"
    events: list[RelayEvent] = []
    with (
        unix_server(back, upper_after_eof),
        Relay(
            f"unix-listen:{sockdir}/f.sock", f"unix:{back}", max_clients=1, on_event=events.append
        ).start() as relay,
    ):
        first = front_connect(relay)
        second = front_connect(relay)  # accepted by the kernel, queued in the backlog
        second.sendall(b"second")
        second.shutdown(socket.SHUT_WR)
        first.sendall(b"first")
        first.shutdown(socket.SHUT_WR)
        assert recv_all(first) == b"FIRST"
        first.close()
        assert recv_all(second) == b"SECOND"
        second.close()
        relay.stop()
    assert relay.stats.accepted == 2
    # The relay took the second client only once the first had ended.
    order = [
        (e.kind, e.conn.id)
        for e in events
        if e.conn is not None and e.kind in (EventKind.ACCEPTED, EventKind.CLOSED)
    ]
    assert order[:3] == [
        (EventKind.ACCEPTED, 1),
        (EventKind.CLOSED, 1),
        (EventKind.ACCEPTED, 2),
    ]


def test_adopted_listener_stays_with_its_owner(sockdir: Path) -> None:
    """udskit dump binds the path itself and hands the listener over."""
    back = sockdir / "back.sock"
    path = sockdir / "taken.sock"
    with unix_server(back, upper_after_eof), open_listener(str(path)) as listener:
        with Relay(listener, f"unix:{back}").start() as relay:
            with front_connect(relay) as client:
                client.sendall(b"hi")
                client.shutdown(socket.SHUT_WR)
                assert recv_all(client) == b"HI"
            relay.stop()
        assert path.exists()  # not ours to remove
        assert listener.sock.fileno() >= 0
    assert not path.exists()


def test_upstream_refusing_is_reported_with_advice(sockdir: Path) -> None:
    events: list[RelayEvent] = []
    with (
        Relay(
            f"unix-listen:{sockdir}/f.sock", f"unix:{sockdir}/nobody.sock", on_event=events.append
        ).start() as relay,
        front_connect(relay) as client,
    ):
        client.settimeout(10)
        assert client.recv(1) == b""
    failed = [e for e in events if e.kind is EventKind.FAILED]
    assert len(failed) == 1
    assert "no socket file" in failed[0].detail


def test_asyncio_variant_stops_on_cancel(sockdir: Path) -> None:
    import asyncio

    back = sockdir / "back.sock"
    front = sockdir / "f.sock"

    async def main() -> bytes:
        task = asyncio.create_task(serve_relay_async(f"unix-listen:{front}", f"unix:{back}"))
        while not front.exists():
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_unix_connection(str(front))
        writer.write(b"async")
        writer.write_eof()
        answer = await reader.read()
        writer.close()
        await writer.wait_closed()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return answer

    with unix_server(back, upper_after_eof):
        assert asyncio.run(main()) == b"ASYNC"
    assert not front.exists()


@pytest.mark.parametrize("splice", [True, False])
def test_server_gone_while_client_reads_slowly_loses_nothing(sockdir: Path, splice: bool) -> None:
    """The server writes more than one buffer holds and closes completely; the relay
    must deliver all of it to a client that starts reading only afterwards (EPOLLHUP
    on the upstream socket while its bytes still wait for the client)."""
    back = sockdir / "back.sock"
    reply = os.urandom(400_000)  # more than one socket buffer, less than all of them
    done = threading.Event()

    def talker(conn: socket.socket) -> None:
        conn.sendall(reply)
        done.set()

    with (
        unix_server(back, talker),
        Relay(f"unix-listen:{sockdir}/f.sock", f"unix:{back}", splice=splice).start() as relay,
        front_connect(relay) as client,
    ):
        client.shutdown(socket.SHUT_WR)
        assert done.wait(20)
        assert recv_all(client) == reply
