"""Pure: where a connection seen from its middle may begin in a pcapng file.

The eBPF engine records connections that were open before the capture started, so
their first recorded bytes may be the middle of anything: a request body, half an
HTTP/2 frame, a Redis reply. Wireshark picks a dissector by port and then expects a
protocol's start, so the pcapng writer asks `opening()` about each chunk of such a
connection until one is a place to start:

- HTTP/2 (and so gRPC): a chunk made of whole, well-formed HTTP/2 frames. Wireshark
  recognises HTTP/2 on a TCP stream by the client's connection preface (RFC 9113
  section 3.4), which was sent long ago; the writer puts a synthetic one first (the
  preface and an empty SETTINGS frame, marked `synthetic=1` in the packet comment,
  skipped by `udskit dump -r`), on the HTTP port, where Wireshark's HTTP dissector
  hands the stream to HTTP/2 on seeing the preface. The HPACK dynamic table of the
  connection is lost: header fields sent as literals during the capture decode,
  those that refer to entries indexed before it show as `<unknown>`.
- HTTP/1: a request line (`GET /x HTTP/1.1`) or a status line (`HTTP/1.1 200`).
  On the HTTP port, Wireshark's HTTP dissector takes the bytes before it (the end
  of a body, held as said below) for the start of a message and swallows the next
  request into it; so a connection with such bytes goes on the port of undissected
  data, where Wireshark's HTTP heuristic (on by default) finds HTTP from the first
  request or status line on. Checked with tshark 4.0.
- Anything `guess_port` knows (a RESP command, PostgreSQL's startup message).

Chunks before that start are held and written after the handshake on the chosen
port, in their order (Wireshark shows them as continuation data); after
HOLD_CHUNKS chunks or HOLD_BYTES bytes without a start, the connection is written
on the port the first chunk suggests, as before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, final

__all__ = [
    "EMPTY_SETTINGS",
    "HOLD_BYTES",
    "HOLD_CHUNKS",
    "HTTP2_PREFACE",
    "HTTP_PORT",
    "Opening",
    "is_http1_start",
    "is_http2_frames",
    "opening",
]

#: The client connection preface, RFC 9113 section 3.4.
HTTP2_PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: A SETTINGS frame with no settings (length 0, type 4, flags 0, stream 0), which must
#: follow the preface.
EMPTY_SETTINGS: Final = bytes.fromhex("000000040000000000")
HTTP_PORT: Final = 80
#: How long a mid-stream connection may wait for a place to start (a guess: a few
#: request/response round trips of a busy HTTP/1 or Redis connection).
HOLD_CHUNKS: Final = 64
HOLD_BYTES: Final = 1 << 20

# HTTP/2 frame types (RFC 9113 section 6) and what each allows: (stream 0 allowed,
# other streams allowed, exact payload length or None).
_FRAME_RULES: Final = {
    0x0: (False, True, None),  # DATA
    0x1: (False, True, None),  # HEADERS
    0x2: (False, True, 5),  # PRIORITY
    0x3: (False, True, 4),  # RST_STREAM
    0x4: (True, False, None),  # SETTINGS (a multiple of 6)
    0x5: (False, True, None),  # PUSH_PROMISE
    0x6: (True, False, 8),  # PING
    0x7: (True, False, None),  # GOAWAY (at least 8)
    0x8: (True, True, 4),  # WINDOW_UPDATE
    0x9: (False, True, None),  # CONTINUATION
}
#: The largest frame a peer may announce (SETTINGS_MAX_FRAME_SIZE, 2^24 - 1).
_MAX_FRAME: Final = (1 << 24) - 1
_REQUEST_LINE: Final = re.compile(rb"[A-Z][A-Z-]{0,19} [\x21-\x7e]+ HTTP/1\.[01]\r?\n")
_STATUS_LINE: Final = re.compile(rb"HTTP/1\.[01] [1-5][0-9][0-9][ \r\n]")


@final
@dataclass(frozen=True, slots=True)
class Opening:
    """Start the connection here, on `port`, after writing `synthetic` from the client
    (b"" for nothing)."""

    port: int
    synthetic: bytes = b""


def is_http2_frames(data: bytes | memoryview) -> bool:
    """Is `data` one or more whole HTTP/2 frames (RFC 9113 section 4.1), each of a
    known type, with a stream and a length that type allows? Strict on purpose: a
    chunk of anything else that passes would get an HTTP/2 preface it never had."""
    view = bytes(data)
    pos, size = 0, len(view)
    if size < 9:
        return False
    while pos < size:
        if pos + 9 > size:
            return False
        length = (view[pos] << 16) | (view[pos + 1] << 8) | view[pos + 2]
        kind = view[pos + 3]
        stream = int.from_bytes(view[pos + 5 : pos + 9], "big")
        rules = _FRAME_RULES.get(kind)
        if rules is None or stream & 0x80000000 or length > _MAX_FRAME:
            return False
        zero_ok, other_ok, exact = rules
        if (stream == 0 and not zero_ok) or (stream != 0 and not other_ok):
            return False
        if exact is not None and length != exact:
            return False
        if kind == 0x4 and length % 6:
            return False
        if kind == 0x7 and length < 8:
            return False
        pos += 9 + length
    return pos == size


def is_http1_start(data: bytes | memoryview) -> bool:
    """Does `data` begin an HTTP/1 message: a request line or a status line?"""
    head = bytes(data[:512])
    return bool(_REQUEST_LINE.match(head) or _STATUS_LINE.match(head))


def opening(
    data: bytes | memoryview,
    guessed_port: int,
    *,
    forced_port: int | None = None,
    fallback_port: int,
    held_chunks: int = 0,
    held_bytes: int = 0,
) -> Opening | None:
    """Where a mid-stream connection's file flow may begin: at this chunk (an
    `Opening`), or not yet (None: hold the chunk and ask again with the next).

    `guessed_port` is what the first bytes of a whole connection would have chosen
    (`pcapng.guess_port(data)`), `fallback_port` the port of undissected data;
    `forced_port` the user's `--decode-as` (never held then: the user knows the
    protocol); `held_chunks`/`held_bytes` what waits already, before this chunk."""
    if bytes(data[: len(HTTP2_PREFACE)]) == HTTP2_PREFACE:
        return Opening(forced_port or HTTP_PORT)
    if is_http2_frames(data):
        return Opening(forced_port or HTTP_PORT, HTTP2_PREFACE + EMPTY_SETTINGS)
    if forced_port is not None:
        return Opening(forced_port)
    if is_http1_start(data):
        return Opening(HTTP_PORT if held_chunks == 0 else fallback_port)
    if guessed_port != fallback_port:
        return Opening(guessed_port)
    if held_chunks + 1 >= HOLD_CHUNKS or held_bytes + len(data) >= HOLD_BYTES:
        return Opening(fallback_port)
    return None
