"""The pcapng encoder and decoder: round trips, and stock tshark as the outside judge."""

from __future__ import annotations

import dataclasses
import hashlib
import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from udskit.capture.events import ClientInfo, Direction, Event, EventKind
from udskit.capture.pcapng import (
    FALLBACK_PORT,
    PcapngEncoder,
    PcapngError,
    ReadReport,
    decode_events,
    format_comment,
    guess_port,
    iter_packets,
    parse_comment,
    parse_decode_as,
)
from udskit.errors import UdskitError, UsageError
from udskit.socktype import SocketType

T0 = 1_763_000_000_123_456_789
CURL = ClientInfo(4242, 1000, 1000, "curl")
REDIS = ClientInfo(4243, 0, 0, "redis-cli")
PSQL = ClientInfo(4244, 70, 70, "psql")


def encode(events: list[Event], port: int | None = None) -> bytes:
    enc = PcapngEncoder(port)
    enc.header()
    for ev in events:
        enc.event(ev)
    return bytes(enc.out)


def conversation(
    conn: int,
    path: str,
    client: ClientInfo,
    exchanges: list[tuple[Direction, bytes]],
    sock_type: SocketType = SocketType.STREAM,
    first: Direction | None = Direction.C2S,
    t0: int = T0,
) -> list[Event]:
    events = [Event.open(t0, conn, path, sock_type, client)]
    for i, (direction, data) in enumerate(exchanges, 1):
        events.append(Event.chunk(t0 + i * 1000, conn, path, sock_type, client, direction, data))
    events.append(Event.close(t0 + 10**6, conn, path, sock_type, client, first))
    return events


HTTP = conversation(
    1,
    "/run/http.sock",
    CURL,
    [
        (Direction.C2S, b"GET /hello?x=1 HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl\r\n\r\n"),
        (Direction.S2C, b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhello\n"),
        (Direction.C2S, b"GET /api/items HTTP/1.1\r\nHost: localhost\r\n\r\n"),
        (Direction.S2C, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
    ],
)
RESP = conversation(
    2,
    "/run/redis.sock",
    REDIS,
    [
        (Direction.C2S, b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n"),
        (Direction.S2C, b"+OK\r\n"),
        (Direction.C2S, b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n"),
        (Direction.S2C, b"$5\r\nvalue\r\n"),
    ],
    first=Direction.S2C,
    t0=T0 + 5 * 10**6,
)


def _pg_startup() -> bytes:
    body = struct.pack(">I", 0x00030000) + b"user\0app\0database\0app\0\0"
    return struct.pack(">I", len(body) + 4) + body


def _pg_query(sql: str) -> bytes:
    body = sql.encode() + b"\0"
    return b"Q" + struct.pack(">I", len(body) + 4) + body


PGSQL = conversation(
    3,
    "/run/postgresql/.s.PGSQL.5432",
    PSQL,
    [
        (Direction.C2S, _pg_startup()),
        (Direction.S2C, b"R" + struct.pack(">II", 8, 0)),
        (Direction.C2S, _pg_query("SELECT 42")),
    ],
    first=None,
    t0=T0 + 9 * 10**6,
)


# -- round trips ------------------------------------------------------------------------------
def test_round_trip_keeps_every_fact() -> None:
    events = HTTP + RESP + PGSQL
    assert list(decode_events(encode(events))) == events


@pytest.mark.parametrize("sock_type", [SocketType.DGRAM, SocketType.SEQPACKET])
def test_messages_keep_their_boundaries(sock_type: SocketType) -> None:
    messages = [(Direction.C2S, b"a"), (Direction.C2S, b"bc"), (Direction.S2C, b"x" * 70000)]
    events = conversation(7, "/run/d.sock", CURL, messages, sock_type)
    decoded = [e for e in decode_events(encode(events)) if e.kind is EventKind.DATA]
    assert [(e.direction, e.length) for e in decoded] == [(d, len(m)) for d, m in messages]
    assert [e.sock_type for e in decoded] == [sock_type] * 3
    # A datagram beyond what one IPv4 packet holds is recorded cut, and says so.
    assert decoded[2].truncated and decoded[2].data == b"x" * len(decoded[2].data)


def test_big_chunk_is_split_into_segments_and_read_back_as_one_chunk() -> None:
    data = random.Random(1).randbytes(300_000)
    events = conversation(1, "/s", CURL, [(Direction.C2S, data), (Direction.S2C, b"ok")])
    blob = encode(events)
    segments = [p for p in iter_packets(blob) if p.orig_len > 20 + (p.data[32] >> 4) * 4]
    assert len(segments) == 6  # five segments of the big chunk, one reply
    # PSH only ends a chunk: on the fifth segment and on the reply.
    assert [p.data[33] & 0x08 for p in segments] == [0, 0, 0, 0, 8, 8]
    assert list(decode_events(blob)) == events


def test_split_chunk_cut_by_snap_length_is_one_chunk_too() -> None:
    chunk = Event.chunk(T0 + 1, 1, "/s", SocketType.STREAM, CURL, Direction.C2S, b"ab", 200_000)
    events = [Event.open(T0, 1, "/s", SocketType.STREAM, CURL), chunk]
    assert list(decode_events(encode(events))) == events


@pytest.mark.parametrize("first", [Direction.C2S, Direction.S2C, None])
@pytest.mark.parametrize("sock_type", [SocketType.DGRAM, SocketType.SEQPACKET])
def test_message_connections_keep_their_close(
    sock_type: SocketType, first: Direction | None
) -> None:
    messages = [(Direction.C2S, b""), (Direction.S2C, b"x")]  # an empty message stays one
    events = conversation(4, "/run/d.sock", CURL, messages, sock_type, first)
    decoded = list(decode_events(encode(events)))
    # Without a handshake, a message flow opens at its first message.
    assert decoded[0] == dataclasses.replace(events[0], time_ns=events[1].time_ns)
    assert decoded[1:] == events[1:]


def test_malformed_packet_block_is_one_line_error() -> None:
    good = encode(HTTP[:2])
    # An EPB whose length (12) leaves no room for its fixed fields.
    bad = good + struct.pack(">III", 6, 12, 12)
    with pytest.raises(PcapngError, match="malformed block at byte"):
        list(decode_events(bad))
    # An EPB whose captured length runs past its block.
    last = good.rindex(struct.pack(">I", 6))
    lying = bytearray(good)
    struct.pack_into(">I", lying, last + 20, 10_000)
    with pytest.raises(PcapngError, match="malformed packet at byte"):
        list(decode_events(bytes(lying)))


def test_mangled_files_give_one_line_errors_never_a_traceback() -> None:
    base = encode(HTTP + RESP + PGSQL)
    rng = random.Random(1)
    for _ in range(2000):
        blob = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            blob[rng.randrange(len(blob))] = rng.randrange(256)
        try:
            list(decode_events(bytes(blob)))
        except UdskitError as err:
            assert "\n" not in str(err)


def test_snap_length_cut_keeps_real_length_and_sequence() -> None:
    events = [
        Event.open(T0, 1, "/s", SocketType.STREAM, CURL),
        Event.chunk(T0 + 1, 1, "/s", SocketType.STREAM, CURL, Direction.C2S, b"GET ", 100),
        Event.chunk(T0 + 2, 1, "/s", SocketType.STREAM, CURL, Direction.C2S, b"abc"),
    ]
    decoded = list(decode_events(encode(events)))
    assert decoded == events
    assert decoded[1].truncated and not decoded[2].truncated


def test_timestamps_are_nanoseconds() -> None:
    packets = list(iter_packets(encode(HTTP)))
    assert packets[0].time_ns == T0
    assert packets[-1].time_ns == T0 + 10**6


def test_a_file_cut_short_reads_up_to_the_last_whole_block() -> None:
    data = encode(HTTP)
    whole = list(decode_events(data))
    cut = list(decode_events(data[:-250]))
    assert cut == whole[: len(cut)] and len(cut) < len(whole)


def test_not_a_capture_is_one_error() -> None:
    with pytest.raises(PcapngError, match="not a pcapng or pcap file"):
        list(decode_events(b"GET / HTTP/1.1\r\n" + bytes(40)))


def test_an_empty_classic_pcap_has_no_events() -> None:
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101)
    report = ReadReport()
    assert list(decode_events(header, report)) == []
    assert report.cut_at is None
    assert list(decode_events(header + bytes(10), report)) == [] and report.cut_at == 24


# -- ports and comments ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("first", "port"),
    [
        (b"GET / HTTP/1.1\r\n", 80),
        (b"POST /x HTTP/1.1\r\n", 80),
        (b"*1\r\n$4\r\nPING\r\n", 6379),
        (_pg_startup(), 5432),
        (struct.pack(">II", 8, 80877103), 5432),
        (b"hello", FALLBACK_PORT),
        (b"", FALLBACK_PORT),
    ],
)
def test_guess_port(first: bytes, port: int) -> None:
    assert guess_port(first) == port


def test_decode_as() -> None:
    assert parse_decode_as("http") == 80
    assert parse_decode_as("Redis") == 6379
    assert parse_decode_as("postgres") == 5432
    assert parse_decode_as("8080") == 8080
    for bad in ("gopher", "0", "70000", ""):
        with pytest.raises(UsageError, match="--decode-as"):
            parse_decode_as(bad)


@given(
    command=st.text(max_size=20),
    path=st.text(min_size=1, max_size=60),
    pid=st.none() | st.integers(1, 2**22),
    conn=st.integers(1, 10**9),
)
def test_comment_round_trip(command: str, path: str, pid: int | None, conn: int) -> None:
    client = ClientInfo(pid, 0, 0, command)
    text = format_comment(conn, path, SocketType.SEQPACKET, client)
    back = parse_comment(text)
    assert (back.conn, back.path, back.sock_type, back.client) == (
        conn,
        path,
        SocketType.SEQPACKET,
        client,
    )


# -- tshark is the judge ---------------------------------------------------------------------
def tshark(path: Path, *args: str) -> list[str]:
    if shutil.which("tshark") is None:
        pytest.fail("test peer missing: tshark (run `make peers` as root)")
    result = subprocess.run(
        ["tshark", "-r", str(path), *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pcap") / "mixed.pcapng"
    path.write_bytes(encode(HTTP + RESP + PGSQL))
    return path


def test_tshark_lists_the_http_uris(capture: Path) -> None:
    uris = tshark(capture, "-Y", "http.request", "-T", "fields", "-e", "http.request.uri")
    assert uris == ["/hello?x=1", "/api/items"]


def test_tshark_dissects_redis_commands(capture: Path) -> None:
    lines = tshark(capture, "-Y", "resp")
    assert len(lines) == 4
    assert "SET key value" in lines[0] and "GET key" in lines[2]


def test_tshark_dissects_postgresql(capture: Path) -> None:
    queries = tshark(capture, "-Y", "pgsql.query", "-T", "fields", "-e", "pgsql.query")
    assert queries == ["SELECT 42"]


def test_tshark_shows_pid_and_command_in_comments(capture: Path) -> None:
    comments = set(tshark(capture, "-T", "fields", "-e", "frame.comment"))
    assert 'pid=4242 command="curl" uid=1000 gid=1000 path="/run/http.sock" conn=1 type=stream' in (
        comments
    )
    assert any('command="redis-cli"' in c for c in comments)


def test_tshark_follows_the_tcp_stream(capture: Path) -> None:
    out = "\n".join(tshark(capture, "-q", "-z", "follow,tcp,raw,1"))
    hexes = "".join(
        line.strip()
        for line in out.splitlines()
        if set(line.strip()) <= set("0123456789abcdef") and line.strip()
    )
    assert hexes == "".join(
        data.hex() for _d, data in [(e.direction, e.data) for e in RESP if e.kind is EventKind.DATA]
    )


def test_tshark_finds_no_bad_checksum_or_sequence_problem(capture: Path) -> None:
    bad = tshark(
        capture,
        "-o",
        "ip.check_checksum:TRUE",
        "-Y",
        "ip.checksum.status == 0 || tcp.analysis.flags && !tcp.analysis.window_update",
    )
    assert bad == []
    good = tshark(capture, "-o", "ip.check_checksum:TRUE", "-Y", "ip.checksum.status == 1")
    assert len(good) == len(tshark(capture)) > 20


def test_tshark_reads_big_flows_byte_for_byte(tmp_path: Path) -> None:
    data = random.Random(2).randbytes(1 << 20)
    events = conversation(1, "/s", CURL, [(Direction.C2S, data)])
    path = tmp_path / "big.pcapng"
    path.write_bytes(encode(events, port=9999))
    out = tshark(path, "-q", "-z", "follow,tcp,raw,0")
    hexes = "".join(
        line.strip()
        for line in out
        if line.strip() and set(line.strip()) <= set("0123456789abcdef")
    )
    assert hashlib.sha256(bytes.fromhex(hexes)).digest() == hashlib.sha256(data).digest()
