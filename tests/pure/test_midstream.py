"""Mid-stream connections: where their file flow begins, what is added, and that stock
tshark dissects the result (HTTP/2 and gRPC from a synthetic preface, HTTP/1 from the
next request or status line)."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from udskit.capture.events import ClientInfo, Direction, EventKind
from udskit.capture.midstream import (
    EMPTY_SETTINGS,
    HOLD_BYTES,
    HOLD_CHUNKS,
    HTTP2_PREFACE,
    HTTP_PORT,
    Opening,
    is_http1_start,
    is_http2_frames,
    opening,
)
from udskit.capture.pcapng import (
    FALLBACK_PORT,
    PcapngEncoder,
    decode_events,
    guess_port,
    iter_packets,
    parse_comment,
)
from udskit.socktype import SocketType

T0 = 1_763_000_000_000_000_000
GRPC = ClientInfo(77, 0, 0, "grpc-client")


def frame(kind: int, stream: int, payload: bytes = b"", flags: int = 0, length: int = -1) -> bytes:
    size = len(payload) if length < 0 else length
    return struct.pack(">I", size)[1:] + bytes((kind, flags)) + struct.pack(">I", stream) + payload


def literal(index: int, value: bytes) -> bytes:
    """An HPACK literal header field without indexing, its name from the static table
    (RFC 7541 section 6.2.2): what a peer sends that needs no earlier state."""
    head = bytes((index,)) if index < 15 else bytes((15, index - 15))
    return head + bytes((len(value),)) + value


def grpc_headers(stream: int, path: bytes) -> bytes:
    block = bytes((0x83, 0x86))  # :method POST, :scheme http (static 3 and 6)
    block += literal(4, path) + literal(31, b"application/grpc")  # :path, content-type
    return frame(0x1, stream, block, flags=0x4)


def grpc_message(stream: int, body: bytes) -> bytes:
    return frame(0x0, stream, b"\0" + struct.pack(">I", len(body)) + body)


# -- is_http2_frames ---------------------------------------------------------------------------
GOOD_FRAMES = [
    frame(0x0, 1, b"data"),
    frame(0x1, 3, b"\x82"),
    frame(0x2, 5, b"\0" * 5),
    frame(0x3, 5, b"\0" * 4),
    frame(0x4, 0),
    frame(0x4, 0, b"\0\x03\0\0\0\x64"),
    frame(0x4, 0, flags=1),  # SETTINGS ACK
    frame(0x5, 1, b"\0\0\0\x02"),
    frame(0x6, 0, b"\0" * 8),
    frame(0x7, 0, b"\0" * 8),
    frame(0x8, 0, b"\0\0\x10\0"),
    frame(0x8, 7, b"\0\0\x10\0"),
    frame(0x9, 3, b"\x82"),
]


@pytest.mark.parametrize("data", GOOD_FRAMES)
def test_each_frame_type_alone_is_http2(data: bytes) -> None:
    assert is_http2_frames(data)
    assert is_http2_frames(memoryview(data))


def test_a_run_of_frames_is_http2() -> None:
    assert is_http2_frames(b"".join(GOOD_FRAMES))
    assert is_http2_frames(grpc_headers(1, b"/a.B/C") + grpc_message(1, b"x"))


BAD_FRAMES = {
    "shorter than a frame header": b"\0\0\0\x04\0\0\0\0",
    "unknown type": frame(0xA, 1),
    "reserved bit set": frame(0x0, 0x80000001, b"x"),
    "DATA on stream 0": frame(0x0, 0, b"x"),
    "HEADERS on stream 0": frame(0x1, 0, b"x"),
    "SETTINGS on a stream": frame(0x4, 1),
    "SETTINGS not a multiple of 6": frame(0x4, 0, b"\0" * 5),
    "PING of 7 bytes": frame(0x6, 0, b"\0" * 7),
    "PING on a stream": frame(0x6, 1, b"\0" * 8),
    "GOAWAY too short": frame(0x7, 0, b"\0" * 7),
    "WINDOW_UPDATE of 5": frame(0x8, 0, b"\0" * 5),
    "PRIORITY of 4": frame(0x2, 1, b"\0" * 4),
    "RST_STREAM on stream 0": frame(0x3, 0, b"\0" * 4),
    "a frame cut short": frame(0x0, 1, b"data")[:-1],
    "a whole frame then half a header": frame(0x4, 0) + b"\0\0",
    "a whole frame then junk": frame(0x4, 0) + b"GET / HTTP/1.1\r\n",
    "an HTTP/1 request": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "a RESP command": b"*1\r\n$4\r\nPING\r\n",
    "the preface": HTTP2_PREFACE,
    "empty": b"",
}


@pytest.mark.parametrize("data", BAD_FRAMES.values(), ids=BAD_FRAMES.keys())
def test_other_bytes_are_not_http2(data: bytes) -> None:
    assert not is_http2_frames(data)


@given(st.binary(min_size=0, max_size=64))
def test_random_text_is_not_frames_unless_it_parses(data: bytes) -> None:
    text = b"hello " + data  # length 0x68656c: longer than what follows
    assert not is_http2_frames(text)


# -- is_http1_start ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",
        b"POST /upload?x=1 HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc",
        b"M-SEARCH * HTTP/1.1\n",
        b"HTTP/1.1 200 OK\r\n",
        b"HTTP/1.0 404 Not Found\r\n",
        b"HTTP/1.1 204\r\n",
    ],
)
def test_request_and_status_lines_start_http1(data: bytes) -> None:
    assert is_http1_start(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"ody of a request GET / HTTP/1.1\r\n",
        b"get / HTTP/1.1\r\n",
        b"GET / HTTP/2\r\n",
        b"GET /\r\n",
        b"GET / HTTP/1.1",  # the line is not complete: wait for its end
        b"HTTP/1.1 999 No\r\n",
        b"HTTP/1.1 20",
        b"\x00\x00\x00\x04",
    ],
)
def test_other_bytes_do_not_start_http1(data: bytes) -> None:
    assert not is_http1_start(data)


# -- opening -----------------------------------------------------------------------------------
def ask(data: bytes, forced: int | None = None, chunks: int = 0, size: int = 0) -> Opening | None:
    return opening(
        data,
        guess_port(data),
        forced_port=forced,
        fallback_port=FALLBACK_PORT,
        held_chunks=chunks,
        held_bytes=size,
    )


def test_http2_frames_get_the_preface_and_settings_on_the_http_port() -> None:
    start = ask(grpc_headers(1, b"/a.B/C"))
    assert start == Opening(HTTP_PORT, HTTP2_PREFACE + EMPTY_SETTINGS)
    assert frame(0x4, 0) == EMPTY_SETTINGS


def test_the_preface_itself_needs_nothing_added() -> None:
    assert ask(HTTP2_PREFACE + frame(0x4, 0)) == Opening(HTTP_PORT)


def test_http1_starts_at_a_request_or_a_status_line() -> None:
    assert ask(b"GET /x HTTP/1.1\r\n\r\n") == Opening(HTTP_PORT)
    assert ask(b"HTTP/1.1 200 OK\r\n\r\n") == Opening(HTTP_PORT)
    # After bytes of an earlier message: Wireshark's HTTP heuristic, not port 80.
    assert ask(b"GET /x HTTP/1.1\r\n\r\n", chunks=1) == Opening(FALLBACK_PORT)


def test_a_known_protocol_start_takes_its_port() -> None:
    assert ask(b"*1\r\n$4\r\nPING\r\n") == Opening(6379)
    assert ask(struct.pack(">iI", 8, 80877103)) == Opening(5432)


def test_the_middle_of_something_is_held() -> None:
    assert ask(b"rest of a request body") is None
    assert ask(b"+OK\r\n") is None  # a redis reply: wait for the next command


def test_holding_ends_after_so_many_chunks_or_bytes() -> None:
    assert ask(b"x", chunks=HOLD_CHUNKS - 2) is None
    assert ask(b"x", chunks=HOLD_CHUNKS - 1) == Opening(FALLBACK_PORT)
    assert ask(b"x", size=HOLD_BYTES - 2) is None
    assert ask(b"xy", size=HOLD_BYTES - 2) == Opening(FALLBACK_PORT)


def test_a_forced_port_never_holds_but_still_gets_a_preface() -> None:
    assert ask(b"body", forced=8080) == Opening(8080)
    assert ask(b"GET / HTTP/1.1\r\n", forced=8080) == Opening(8080)
    assert ask(frame(0x6, 0, b"\0" * 8), forced=50051) == Opening(
        50051, HTTP2_PREFACE + EMPTY_SETTINGS
    )


# -- the encoder ------------------------------------------------------------------------------
def midstream_grpc() -> bytes:
    """A gRPC connection met in its middle: a PING exchange, then a call."""
    enc = PcapngEncoder()
    enc.header()
    enc.opened(1, "/run/grpc.sock", SocketType.STREAM, GRPC, T0, midstream=True)
    ping = frame(0x6, 0, b"\0" * 8)
    enc.data(1, Direction.S2C, ping, len(ping), T0 + 1000)
    enc.data(1, Direction.C2S, frame(0x6, 0, b"\0" * 8, flags=1), 17, T0 + 2000)
    call = grpc_headers(7, b"/pkg.Svc/Method") + grpc_message(7, b"hi")
    enc.data(1, Direction.C2S, call, len(call), T0 + 3000)
    reply = frame(0x1, 7, bytes((0x88,)), flags=0x4)  # :status 200
    enc.data(1, Direction.S2C, reply, len(reply), T0 + 4000)
    enc.closed(1, Direction.C2S, T0 + 5000)
    return bytes(enc.out)


def test_midstream_http2_starts_with_a_synthetic_preface_that_dump_r_skips() -> None:
    raw = midstream_grpc()
    packets = [p for p in iter_packets(raw) if len(p.data) > 48]  # past the handshake
    first = packets[0]
    assert first.data[40:] == HTTP2_PREFACE + EMPTY_SETTINGS
    assert parse_comment(first.comment).synthetic
    assert "synthetic=1" in (first.comment or "")
    assert not any(parse_comment(p.comment).synthetic for p in packets[1:])
    data = [e for e in decode_events(raw) if e.kind is EventKind.DATA]
    assert [e.direction for e in data] == [
        Direction.S2C,
        Direction.C2S,
        Direction.C2S,
        Direction.S2C,
    ]
    assert not any(e.data.startswith(b"PRI") for e in data)


def test_midstream_chunks_before_a_start_are_kept_in_order() -> None:
    enc = PcapngEncoder()
    enc.header()
    enc.opened(1, "/run/h.sock", SocketType.STREAM, GRPC, T0, midstream=True)
    enc.data(1, Direction.C2S, b"end of a body", 13, T0 + 1)
    enc.data(1, Direction.S2C, b"HTTP/1.1 200 OK\r\n\r\n", 19, T0 + 2)
    enc.data(1, Direction.C2S, b"GET /next HTTP/1.1\r\n\r\n", 22, T0 + 3)
    enc.closed(1, Direction.C2S, T0 + 4)
    data = [e for e in decode_events(bytes(enc.out)) if e.kind is EventKind.DATA]
    assert [e.data[:4] for e in data] == [b"end ", b"HTTP", b"GET "]
    assert [e.time_ns for e in data] == [T0 + 1, T0 + 2, T0 + 3]


def test_a_midstream_connection_that_never_starts_is_written_at_its_close() -> None:
    enc = PcapngEncoder()
    enc.header()
    enc.opened(1, "/run/x.sock", SocketType.STREAM, GRPC, T0, midstream=True)
    enc.data(1, Direction.C2S, b"no protocol here", 16, T0 + 1)
    enc.closed(1, None, T0 + 2)
    events = list(decode_events(bytes(enc.out)))
    assert [e.kind for e in events] == [EventKind.OPEN, EventKind.DATA, EventKind.CLOSE]
    assert events[1].data == b"no protocol here"


def test_a_whole_connection_is_not_held() -> None:
    enc = PcapngEncoder()
    enc.header()
    enc.opened(1, "/run/x.sock", SocketType.STREAM, GRPC, T0)
    size = len(enc.out)
    enc.data(1, Direction.C2S, b"no protocol here", 16, T0 + 1)
    assert len(enc.out) > size


# -- tshark, the outside judge ----------------------------------------------------------------
def tshark(pcap: Path, *args: str) -> list[str]:
    if shutil.which("tshark") is None:
        pytest.fail("test peer missing: tshark (run `make peers` as root)")
    result = subprocess.run(
        ["tshark", "-r", str(pcap), *args], capture_output=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.decode().split()


def test_tshark_dissects_a_midstream_grpc_call(tmp_path: Path) -> None:
    pcap = tmp_path / "grpc.pcapng"
    pcap.write_bytes(midstream_grpc())
    fields = ("-T", "fields", "-e", "http2.headers.path")
    assert tshark(pcap, "-Y", "http2.header", *fields) == ["/pkg.Svc/Method"]
    assert tshark(pcap, "-Y", "grpc", "-T", "fields", "-e", "frame.number") != []


def test_tshark_dissects_midstream_http1_from_the_next_request(tmp_path: Path) -> None:
    enc = PcapngEncoder()
    enc.header()
    enc.opened(1, "/run/h.sock", SocketType.STREAM, GRPC, T0, midstream=True)
    enc.data(1, Direction.C2S, b"end of an upload body", 21, T0 + 1)
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    enc.data(1, Direction.S2C, reply, len(reply), T0 + 2)
    ask_next = b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n"
    enc.data(1, Direction.C2S, ask_next, len(ask_next), T0 + 3)
    enc.data(1, Direction.S2C, reply, len(reply), T0 + 4)
    enc.closed(1, Direction.C2S, T0 + 5)
    pcap = tmp_path / "http.pcapng"
    pcap.write_bytes(bytes(enc.out))
    assert tshark(pcap, "-Y", "http.request", "-T", "fields", "-e", "http.request.uri") == ["/next"]
    assert tshark(pcap, "-Y", "http.response", "-T", "fields", "-e", "http.response.code") == [
        "200",
        "200",
    ]


def test_tshark_dissects_midstream_redis_from_the_next_command(tmp_path: Path) -> None:
    enc = PcapngEncoder()
    enc.header()
    enc.opened(1, "/run/redis.sock", SocketType.STREAM, GRPC, T0, midstream=True)
    enc.data(1, Direction.S2C, b"+OK\r\n", 5, T0 + 1)  # the reply to a command not seen
    ping = b"*1\r\n$4\r\nPING\r\n"
    enc.data(1, Direction.C2S, ping, len(ping), T0 + 2)
    enc.data(1, Direction.S2C, b"+PONG\r\n", 7, T0 + 3)
    enc.closed(1, Direction.C2S, T0 + 4)
    pcap = tmp_path / "redis.pcapng"
    pcap.write_bytes(bytes(enc.out))
    ports = tshark(pcap, "-Y", "tcp.len > 0", "-T", "fields", "-e", "tcp.dstport")
    assert ports == ["49153", "6379", "49153"], "written on redis's port"
    assert len(tshark(pcap, "-Y", "resp")) >= 2
