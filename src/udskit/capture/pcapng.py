"""Pure: pcapng files of unix socket traffic that stock Wireshark and tshark dissect.

Wireshark has no dissector for AF_UNIX payloads, but it dissects HTTP, Redis (RESP) and
PostgreSQL over TCP with full stream reassembly. So each unix connection is written as
a *synthetic* TCP flow between IPv4 loopback addresses that exist only inside the file
(nothing is ever sent on a network): a three-way handshake, one segment per chunk with
true sequence and acknowledgement numbers, and FINs in the order the two sides closed.
The server side is 127.0.0.1 on a port that names the protocol (80, 6379, 5432 or the
user's choice), so Wireshark's port table picks the dissector and "Follow TCP stream"
works. Datagram and seqpacket messages become one UDP packet each, which keeps their
boundaries. Every packet carries an `opt_comment` with the client's pid, command, uid,
gid, the socket path and the connection id; the decoder reads them back.

Layout choices, and why:

- The file is big-endian. pcapng lets the writer choose its byte order (the SHB's
  byte-order magic, pcapng spec section 4.1), and with network order everywhere one
  precompiled `struct` packs the block header and the IP and TCP headers of a packet in
  one call: the per-chunk path is the hot path of `udskit dump -w`.
- Link type 101 (LINKTYPE_RAW): packets start at the IPv4 header, no fake Ethernet.
- if_tsresol 9: timestamps in nanoseconds, as the event model has them.
- The IPv4 header checksum is correct (cheap: nine of its ten words are constant per
  direction); TCP and UDP checksums are 0, which Wireshark does not check by default.
- Window scaling (shift 14) is announced in the handshake, so a megabyte sent without
  a reply does not look like a full receive window.
- Clients are 127.1.X.Y (Y >= 1) on ports 49152 + (id mod 16384), unique per connection id;
  the ephemeral range keeps Wireshark's "lower port first" rule on the server's port.
- A chunk longer than an IPv4 packet can carry is split into several segments (TCP),
  PSH set on the last one only; the decoder joins segments up to a PSH back into one
  chunk, so `-r` shows the chunks a live capture showed. A datagram longer than a UDP
  packet can carry is recorded up to that size and marked truncated (rare: unix
  datagrams over 64 KiB).
- A datagram or seqpacket connection's end is an empty UDP packet whose comment says
  `event=close first=c2s|s2c|none` (an empty message has no such words in its
  comment), so `-r` shows the close as a live capture did.
- With no `--decode-as`, the server port is guessed from the first chunk, so the
  handshake is written when that chunk (or the close) arrives, stamped with the time
  of the open.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Final, final

from udskit.capture.events import Event, EventKind
from udskit.capture.midstream import Opening, opening
from udskit.errors import UdskitError, UsageError
from udskit.socktype import SocketType
from udskit.tap import ClientInfo, Direction

__all__ = [
    "FALLBACK_PORT",
    "PROTOCOL_PORTS",
    "Packet",
    "PcapngEncoder",
    "PcapngError",
    "ReadReport",
    "decode_events",
    "format_comment",
    "guess_port",
    "iter_packets",
    "parse_comment",
    "parse_decode_as",
]

# -- block and link constants (pcapng spec, tcpdump's link-layer header types) ----------
SHB_TYPE: Final = 0x0A0D0D0A
IDB_TYPE: Final = 0x00000001
EPB_TYPE: Final = 0x00000006
BYTE_ORDER_MAGIC: Final = 0x1A2B3C4D
OPT_ENDOFOPT: Final = 0
OPT_COMMENT: Final = 1
IF_TSRESOL: Final = 9
SHB_USERAPPL: Final = 4
LINKTYPE_NULL: Final = 0
LINKTYPE_ETHERNET: Final = 1
LINKTYPE_RAW: Final = 101
LINKTYPE_LINUX_SLL: Final = 113
LINKTYPE_IPV4: Final = 228

IPPROTO_TCP: Final = 6
IPPROTO_UDP: Final = 17
TCP_FIN: Final = 0x01
TCP_SYN: Final = 0x02
TCP_RST: Final = 0x04
TCP_PSH: Final = 0x08
TCP_ACK: Final = 0x10

SERVER_IP: Final = 0x7F000001  # 127.0.0.1
CLIENT_NET: Final = 0x7F010000  # 127.1.0.0/16
CLIENT_PORT_BASE: Final = 49152
CLIENT_PORTS: Final = 16384
#: A port with no dissector of its own: Wireshark shows the bytes as Data.
FALLBACK_PORT: Final = 4
#: `--decode-as` names and the ports Wireshark dissects them on by default.
PROTOCOL_PORTS: Final = {
    "http": 80,
    "redis": 6379,
    "resp": 6379,
    "postgres": 5432,
    "postgresql": 5432,
    "pgsql": 5432,
}
#: Largest TCP payload in one IPv4 packet (65535 - 20 - 20).
MAX_TCP_SEGMENT: Final = 65495
#: Largest UDP payload in one IPv4 packet (65535 - 20 - 8).
MAX_UDP_PAYLOAD: Final = 65507
WINDOW_SHIFT: Final = 14
ISN_CLIENT: Final = 0x10000000
ISN_SERVER: Final = 0x20000000

# EPB head (type, total length, interface, 64-bit time, captured and original lengths),
# then IPv4 (20 bytes) and TCP (20) or UDP (8), in network order and in as few words as
# the constant fields allow: fewer arguments make struct.pack measurably cheaper.
_EPB_TCP = struct.Struct(">IIIQII IIIQ IIIII")
_EPB_UDP = struct.Struct(">IIIQII IIIQ II")
#: Data offset 5 words, PSH|ACK, window 0xFFFF (scaled by WINDOW_SHIFT).
_DATA_FLAGS_WINDOW = (((5 << 12) | 0x18) << 16) | 0xFFFF
_U32 = struct.Struct(">I")
_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")  # indexed by length % 4
#: SYN options: MSS (kind 2: the largest segment we write), NOP, window scale (kind 3).
_SYN_OPTIONS = struct.pack(">BBH", 2, 4, MAX_TCP_SEGMENT) + bytes((1, 3, 3, WINDOW_SHIFT))
_IP_DF = 0x4000


def parse_decode_as(text: str) -> int:
    """`--decode-as` value -> server port: http, redis, postgres, or a number."""
    name = text.strip().lower()
    if name in PROTOCOL_PORTS:
        return PROTOCOL_PORTS[name]
    if name.isdigit() and 1 <= int(name) <= 65535:
        return int(name)
    raise UsageError(f"--decode-as {text!r}: give http, redis, postgres or a TCP port 1-65535")


_HTTP_STARTS: Final = (
    b"GET ",
    b"POST ",
    b"PUT ",
    b"HEAD ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
    b"PRI * HTTP/2",
    b"HTTP/1.",
)
#: PostgreSQL's first message: protocol 3.0, SSLRequest or GSSENCRequest (protocol.html).
_PG_CODES: Final = (0x00030000, 80877103, 80877104)


def guess_port(first: bytes | memoryview) -> int:
    """The server port whose dissector fits the first bytes of a connection."""
    head = bytes(first[:16])
    if head.startswith(_HTTP_STARTS):
        return PROTOCOL_PORTS["http"]
    if head[:1] == b"*" and head[1:2].isdigit():  # RESP array: *<count>\r\n
        return PROTOCOL_PORTS["redis"]
    if len(head) >= 8:
        length, code = struct.unpack_from(">iI", head)
        if code in _PG_CODES and 8 <= length <= 10000:
            return PROTOCOL_PORTS["postgres"]
    return FALLBACK_PORT


# -- comments -------------------------------------------------------------------------------
_COMMENT_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def format_comment(conn: int, path: str, sock_type: SocketType, client: ClientInfo) -> str:
    """`pid=42 command="curl" uid=0 gid=0 path="/run/x.sock" conn=3 type=stream`.

    Readable in Wireshark's packet list and parseable back (strings are JSON strings)."""
    parts: list[str] = []
    if client.pid is not None:
        parts.append(f"pid={client.pid}")
    if client.command is not None:
        parts.append(f"command={_comment_text(client.command)}")
    if client.uid is not None:
        parts.append(f"uid={client.uid}")
    if client.gid is not None:
        parts.append(f"gid={client.gid}")
    parts.append(f"path={_comment_text(path)}")
    parts.append(f"conn={conn}")
    parts.append(f"type={sock_type.value}")
    return " ".join(parts)


def _comment_text(text: str) -> str:
    """A JSON string for a comment, which pcapng wants in UTF-8: readable as it is when
    it is UTF-8, with `\\udcXX` escapes (which json.loads turns back into the exact
    bytes) when it holds bytes that are not."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(text)
    return json.dumps(text, ensure_ascii=False)


@final
@dataclass(frozen=True, slots=True)
class CommentFields:
    conn: int | None
    path: str | None
    sock_type: SocketType | None
    client: ClientInfo
    closing: bool = False  # `event=close`: the end of a datagram/seqpacket connection
    first: Direction | None = None  # with closing: who closed first
    fds: tuple[str, ...] = ()  # descriptors passed with this packet's chunk
    synthetic: bool = False  # bytes the writer added so that Wireshark dissects


def parse_comment(text: str | None) -> CommentFields:
    """The facts in a comment made by `format_comment`; unknown ones are None."""
    fields: dict[str, str] = {}
    for match in _COMMENT_FIELD.finditer(text or ""):
        key, value = match.group(1), match.group(2)
        if value.startswith('"'):
            try:
                value = json.loads(value)
            except ValueError:
                value = value.strip('"')
        fields[key] = value

    def number(key: str) -> int | None:
        value = fields.get(key, "")
        return int(value) if value.isdigit() else None

    sock_type: SocketType | None
    try:
        sock_type = SocketType(fields["type"]) if "type" in fields else None
    except ValueError:
        sock_type = None
    client = ClientInfo(number("pid"), number("uid"), number("gid"), fields.get("command"))
    first = {"c2s": Direction.C2S, "s2c": Direction.S2C}.get(fields.get("first", ""))
    closing = fields.get("event") == "close"
    fds: tuple[str, ...] = ()
    if "fd_kinds" in fields:
        try:
            listed = json.loads(fields["fd_kinds"])
        except ValueError:
            listed = []
        if isinstance(listed, list):
            fds = tuple(str(kind) for kind in listed)
    synthetic = fields.get("synthetic") == "1"
    return CommentFields(
        number("conn"), fields.get("path"), sock_type, client, closing, first, fds, synthetic
    )


def _option(code: int, value: bytes) -> bytes:
    return struct.pack(">HH", code, len(value)) + value + _PAD[len(value) % 4]


def _comment_options(text: str) -> bytes:
    raw = text.encode("utf-8", errors="surrogateescape")[:65000]
    return _option(OPT_COMMENT, raw) + _option(OPT_ENDOFOPT, b"")


def _ip_words(addr: int) -> int:
    return (addr >> 16) + (addr & 0xFFFF)


# -- the encoder ----------------------------------------------------------------------------
@final
class _Flow:
    """Per-connection state: sequence numbers and what is constant in its packets.

    `c2s`/`s2c` hold, per direction, the header words that never change: both
    addresses as one 64-bit word, both ports as one 32-bit word, and the partial IPv4
    checksum over the constant words (RFC 1071), to which each packet adds its length.
    """

    __slots__ = (
        "c2s_addrs",
        "c2s_ports",
        "c2s_seq",
        "c2s_sum",
        "client_ip",
        "client_port",
        "comment",
        "conn",
        "fd_note",
        "held",
        "held_bytes",
        "open_ns",
        "pending",
        "port",
        "proto_word",
        "s2c_addrs",
        "s2c_ports",
        "s2c_seq",
        "s2c_sum",
        "stream",
        "text",
    )

    def __init__(self, conn: int, stream: bool, text: str, open_ns: int) -> None:
        self.conn = conn
        self.stream = stream
        self.text = text
        self.comment = _comment_options(text)
        self.fd_note: str | None = None  # the next chunk's comment: descriptors passed
        #: A connection seen from its middle: its chunks until one is a place to start
        #: (see udskit.capture.midstream), as (direction, bytes, length, time, fd note).
        self.held: list[tuple[Direction, bytes, int, int, str | None]] | None = None
        self.held_bytes = 0
        self.open_ns = open_ns
        self.client_ip = CLIENT_NET | ((conn // CLIENT_PORTS + 1) & 0xFFFF)
        self.client_port = CLIENT_PORT_BASE + conn % CLIENT_PORTS
        self.port = 0
        self.pending = True
        self.c2s_seq = ISN_CLIENT
        self.s2c_seq = ISN_SERVER
        self.c2s_addrs = self.s2c_addrs = 0
        self.c2s_ports = self.s2c_ports = 0
        self.c2s_sum = self.s2c_sum = 0
        self.proto_word = 0

    def set_port(self, port: int, proto: int) -> None:
        self.port = port
        self.pending = False
        self.c2s_addrs = (self.client_ip << 32) | SERVER_IP
        self.s2c_addrs = (SERVER_IP << 32) | self.client_ip
        self.c2s_ports = (self.client_port << 16) | port
        self.s2c_ports = (port << 16) | self.client_port
        # Version/IHL, DF, TTL/protocol and both addresses; the sum is symmetric.
        const = 0x4500 + _IP_DF + ((64 << 8) | proto)
        const += _ip_words(self.client_ip) + _ip_words(SERVER_IP)
        self.c2s_sum = self.s2c_sum = const
        self.proto_word = (64 << 24) | (proto << 16)


@final
class PcapngEncoder:
    """Events in, pcapng bytes out (appended to `out`, which the caller empties).

    Call `header()` once first. `opened`/`data`/`closed` mirror the relay's `Tap`, so
    a sink can hand each call straight through; `event()` takes an `Event`.
    `server_port` None means: guess it per connection from the first chunk.
    """

    def __init__(self, server_port: int | None = None, application: str = "udskit dump") -> None:
        self.server_port = server_port
        self.application = application
        self.out = bytearray()
        self._flows: dict[int, _Flow] = {}

    def header(self) -> None:
        """Section header and the one interface (raw IPv4, nanosecond timestamps)."""
        shb_opts = _option(SHB_USERAPPL, self.application.encode()) + _option(OPT_ENDOFOPT, b"")
        shb_len = 28 + len(shb_opts)
        self.out += struct.pack(">IIIHHq", SHB_TYPE, shb_len, BYTE_ORDER_MAGIC, 1, 0, -1)
        self.out += shb_opts + _U32.pack(shb_len)
        idb_opts = _option(IF_TSRESOL, bytes((9,))) + _option(OPT_ENDOFOPT, b"")
        idb_len = 20 + len(idb_opts)
        self.out += struct.pack(">IIHHI", IDB_TYPE, idb_len, LINKTYPE_RAW, 0, 0)
        self.out += idb_opts + _U32.pack(idb_len)

    # -- the Tap-shaped entry points ------------------------------------------------------
    def opened(
        self,
        conn: int,
        path: str,
        sock_type: SocketType,
        client: ClientInfo,
        time_ns: int,
        midstream: bool = False,
    ) -> None:
        """`midstream`: the connection was open before the capture, so its first
        chunk may be the middle of anything (see udskit.capture.midstream)."""
        text = format_comment(conn, path, sock_type, client)
        flow = _Flow(conn, sock_type is SocketType.STREAM, text, time_ns)
        self._flows[conn] = flow
        if midstream and flow.stream:
            flow.held = []
        elif self.server_port is not None:
            self._start(flow, self.server_port)

    def data(
        self,
        conn: int,
        direction: Direction,
        payload: bytes | memoryview,
        length: int,
        time_ns: int,
    ) -> None:
        """One chunk; `payload` may be shorter than `length` (snap length).

        The common case (a stream chunk that fits one segment) is written inline:
        this is the per-chunk hot path of `udskit dump -w`."""
        flow = self._flows.get(conn)
        if flow is None:
            return
        if flow.pending:
            if flow.held is not None:
                self._midstream(flow, direction, payload, length, time_ns)
                return
            self._start(flow, guess_port(payload))
        if flow.fd_note is not None:  # this chunk came with descriptors: say so
            note, flow.fd_note = flow.fd_note, None
            plain, flow.comment = flow.comment, _comment_options(note)
            try:
                self.data(conn, direction, payload, length, time_ns)
            finally:
                flow.comment = plain
            return
        if not flow.stream:
            self._udp(flow, direction is Direction.C2S, payload, length, time_ns)
            return
        if length > MAX_TCP_SEGMENT:
            c2s = direction is Direction.C2S
            for offset in range(0, length, MAX_TCP_SEGMENT):
                size = min(MAX_TCP_SEGMENT, length - offset)
                piece = payload[offset : offset + size]
                last = offset + size == length  # PSH ends the chunk (see the docstring)
                flags = TCP_PSH | TCP_ACK if last else TCP_ACK
                self._tcp(flow, c2s, flags, piece, size, time_ns)
            return
        captured = 40 + len(payload)
        ip_len = 40 + length
        comment = flow.comment
        total = 32 + captured + _PADLEN[captured & 3] + len(comment)
        if direction is Direction.C2S:
            seq = flow.c2s_seq
            flow.c2s_seq = (seq + length) & 0xFFFFFFFF
            ack = flow.s2c_seq
            addrs, ports, csum = flow.c2s_addrs, flow.c2s_ports, flow.c2s_sum + ip_len
        else:
            seq = flow.s2c_seq
            flow.s2c_seq = (seq + length) & 0xFFFFFFFF
            ack = flow.c2s_seq
            addrs, ports, csum = flow.s2c_addrs, flow.s2c_ports, flow.s2c_sum + ip_len
        csum = (csum & 0xFFFF) + (csum >> 16)
        csum = ~((csum & 0xFFFF) + (csum >> 16)) & 0xFFFF
        out = self.out
        out += _EPB_TCP.pack(
            EPB_TYPE,
            total,
            0,
            time_ns,
            captured,
            ip_len,
            0x45000000 | ip_len,
            _IP_DF,
            flow.proto_word | csum,
            addrs,
            ports,
            seq,
            ack,
            _DATA_FLAGS_WINDOW,
            0,
        )
        out += payload
        out += _PAD[captured & 3]
        out += comment
        out += _U32.pack(total)

    def closed(self, conn: int, first: Direction | None, time_ns: int) -> None:
        flow = self._flows.get(conn)
        if flow is None:
            return
        if flow.pending:
            if flow.held:  # no place to start came: write what was held as it is
                self._midstream_begin(flow, Opening(self.server_port or FALLBACK_PORT))
            else:
                self._start(flow, self.server_port or FALLBACK_PORT)
        del self._flows[conn]
        if not flow.stream:
            word = "none" if first is None else first.value
            flow.comment = _comment_options(f"{flow.text} event=close first={word}")
            self._udp(flow, True, b"", 0, time_ns)
            return
        if first is None:
            self._tcp(flow, True, TCP_RST | TCP_ACK, b"", 0, time_ns)
            return
        c2s = first is Direction.C2S
        self._tcp(flow, c2s, TCP_FIN | TCP_ACK, b"", 1, time_ns, fin=True)
        self._tcp(flow, not c2s, TCP_FIN | TCP_ACK, b"", 1, time_ns, fin=True)
        self._tcp(flow, c2s, TCP_ACK, b"", 0, time_ns)

    def fds(self, conn: int, direction: Direction, kinds: tuple[str, ...], time_ns: int) -> None:
        """Descriptors passed with the next chunk of `conn` that way: that packet's
        comment says `fds=N fd_kinds=[...]` (and `-r` makes an fds event of it)."""
        flow = self._flows.get(conn)
        if flow is None:
            return
        # A JSON list inside a JSON string: one field for parse_comment's pattern.
        listed = json.dumps(json.dumps(list(kinds), separators=(",", ":")))
        flow.fd_note = f"{flow.text} fds={len(kinds)} fd_kinds={listed}"

    def event(self, ev: Event) -> None:
        if ev.kind is EventKind.FDS:
            assert ev.direction is not None
            self.fds(ev.conn, ev.direction, ev.fds, ev.time_ns)
            return
        if ev.kind is EventKind.OPEN:
            self.opened(ev.conn, ev.path, ev.sock_type, ev.client, ev.time_ns)
        elif ev.kind is EventKind.DATA:
            assert ev.direction is not None
            self.data(ev.conn, ev.direction, ev.data, ev.length, ev.time_ns)
        else:
            self.closed(ev.conn, ev.direction, ev.time_ns)

    # -- mid-stream connections -----------------------------------------------------------
    def _midstream(
        self,
        flow: _Flow,
        direction: Direction,
        payload: bytes | memoryview,
        length: int,
        time_ns: int,
    ) -> None:
        """A chunk of a connection seen from its middle, before its flow has begun:
        begin it here if this chunk is a place to start, else hold the chunk."""
        assert flow.held is not None
        note, flow.fd_note = flow.fd_note, None
        flow.held.append((direction, bytes(payload), length, time_ns, note))
        start = opening(
            payload,
            guess_port(payload),
            forced_port=self.server_port,
            fallback_port=FALLBACK_PORT,
            held_chunks=len(flow.held) - 1,
            held_bytes=flow.held_bytes,
        )
        flow.held_bytes += len(payload)
        if start is not None:
            self._midstream_begin(flow, start)

    def _midstream_begin(self, flow: _Flow, start: Opening) -> None:
        """The handshake, the held chunks but the last, the synthetic bytes (if any,
        marked in their comment), then the last held chunk: the one that starts."""
        held, flow.held = flow.held or [], None
        at = held[-1][3] if held else flow.open_ns
        self._start(flow, start.port)
        for i, (direction, payload, length, time_ns, note) in enumerate(held):
            if i == len(held) - 1 and start.synthetic:
                plain, flow.comment = flow.comment, _comment_options(f"{flow.text} synthetic=1")
                try:
                    self._tcp(
                        flow, True, TCP_PSH | TCP_ACK, start.synthetic, len(start.synthetic), at
                    )
                finally:
                    flow.comment = plain
            flow.fd_note = note
            self.data(flow.conn, direction, payload, length, time_ns)

    # -- packets ---------------------------------------------------------------------------
    def _start(self, flow: _Flow, port: int) -> None:
        flow.set_port(port, IPPROTO_TCP if flow.stream else IPPROTO_UDP)
        if not flow.stream:
            return
        t = flow.open_ns
        self._tcp(flow, True, TCP_SYN, b"", 1, t, options=_SYN_OPTIONS, fin=True)
        self._tcp(flow, False, TCP_SYN | TCP_ACK, b"", 1, t, options=_SYN_OPTIONS, fin=True)
        self._tcp(flow, True, TCP_ACK, b"", 0, t)

    def _tcp(
        self,
        flow: _Flow,
        c2s: bool,
        flags: int,
        payload: bytes | memoryview,
        length: int,
        time_ns: int,
        options: bytes = b"",
        fin: bool = False,
    ) -> None:
        """One TCP segment (the general case: handshake, FIN, RST, split chunks).
        `length` is the real payload size; with `fin`, it is the one sequence number a
        SYN or FIN consumes and no payload is written."""
        real = 0 if fin else length
        header = 40 + len(options)
        ip_len = header + real
        captured = header + len(payload)
        comment = flow.comment
        total = 32 + captured + _PADLEN[captured & 3] + len(comment)
        if c2s:
            addrs, ports, partial = flow.c2s_addrs, flow.c2s_ports, flow.c2s_sum
            seq, ack = flow.c2s_seq, flow.s2c_seq
            flow.c2s_seq = (seq + length) & 0xFFFFFFFF
        else:
            addrs, ports, partial = flow.s2c_addrs, flow.s2c_ports, flow.s2c_sum
            seq, ack = flow.s2c_seq, flow.c2s_seq
            flow.s2c_seq = (seq + length) & 0xFFFFFFFF
        if flags == TCP_SYN:
            ack = 0
        out = self.out
        out += _EPB_TCP.pack(
            EPB_TYPE,
            total,
            0,
            time_ns,
            captured,
            ip_len,
            0x45000000 | ip_len,
            _IP_DF,
            flow.proto_word | _checksum(partial, ip_len),
            addrs,
            ports,
            seq,
            ack,
            ((((header - 20) // 4) << 12 | flags) << 16) | 0xFFFF,
            0,
        )
        out += options
        out += payload
        out += _PAD[captured & 3]
        out += comment
        out += _U32.pack(total)

    def _udp(
        self, flow: _Flow, c2s: bool, payload: bytes | memoryview, length: int, time_ns: int
    ) -> None:
        if len(payload) > MAX_UDP_PAYLOAD:
            payload = payload[:MAX_UDP_PAYLOAD]
        ip_len = min(28 + length, 65535)
        captured = 28 + len(payload)
        comment = flow.comment
        total = 32 + captured + _PADLEN[captured & 3] + len(comment)
        if c2s:
            addrs, ports, partial = flow.c2s_addrs, flow.c2s_ports, flow.c2s_sum
        else:
            addrs, ports, partial = flow.s2c_addrs, flow.s2c_ports, flow.s2c_sum
        out = self.out
        out += _EPB_UDP.pack(
            EPB_TYPE,
            total,
            0,
            time_ns,
            captured,
            28 + length,
            0x45000000 | ip_len,
            _IP_DF,
            flow.proto_word | _checksum(partial, ip_len),
            addrs,
            ports,
            (ip_len - 20) << 16,
        )
        out += payload
        out += _PAD[captured & 3]
        out += comment
        out += _U32.pack(total)


def _checksum(partial: int, total_length: int) -> int:
    s = partial + total_length
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


_PADLEN = (0, 3, 2, 1)


# -- the decoder ---------------------------------------------------------------------------
@final
@dataclass(frozen=True, slots=True)
class Packet:
    """One captured packet: link type, timestamp, captured bytes, original length."""

    linktype: int
    time_ns: int
    data: bytes
    orig_len: int
    comment: str | None


class PcapngError(UdskitError):
    """The file is neither pcapng nor pcap, or is damaged before its first packet."""


@final
@dataclass(slots=True)
class ReadReport:
    """What reading a capture found besides packets: where it was cut short (a capture
    still being written, or killed mid-write), as tshark reports "cut short"."""

    size: int = 0
    cut_at: int | None = None  # the byte offset of the first incomplete record
    damaged: bool = False  # a record header that makes no sense, rather than a cut


_PCAP_MAGIC: Final = {
    b"\xa1\xb2\xc3\xd4": (">", 1000),  # classic pcap, microseconds
    b"\xd4\xc3\xb2\xa1": ("<", 1000),
    b"\xa1\xb2\x3c\x4d": (">", 1),  # nanoseconds
    b"\x4d\x3c\xb2\xa1": ("<", 1),
}
_SHB_MIN: Final = 28  # the smallest section header block


def iter_packets(buf: bytes | memoryview, report: ReadReport | None = None) -> Iterator[Packet]:
    """Every packet of every section of a pcapng file, in file order, or of a classic
    pcap file (what Debian's tcpdump -w writes).

    Both byte orders are read (each section says its own). A file cut off in the
    middle of a record ends at the last whole one, and `report` says where; a file that
    is neither format, or ends inside its first header, raises PcapngError."""
    view = memoryview(buf)
    size = len(view)
    report = report if report is not None else ReadReport()
    report.size = size
    head = bytes(view[:4])
    if head in _PCAP_MAGIC:
        yield from _iter_pcap(view, report)
        return
    if head != b"\x0a\x0d\x0d\x0a":
        what = "it is empty" if size == 0 else "no section header block at the start"
        raise PcapngError(
            f"not a pcapng or pcap file ({what}); udskit dump -w, tshark -w and tcpdump -w "
            "write one"
        )
    first_endian = "<" if bytes(view[8:12]) == b"\x4d\x3c\x2b\x1a" else ">"
    if size < _SHB_MIN or struct.unpack_from(first_endian + "I", view, 4)[0] > size:
        raise PcapngError(
            f"not a readable pcapng file: it ends inside its section header block ({size} bytes)"
        )
    pos = 0
    endian = ">"
    interfaces: list[tuple[int, int, int]] = []  # (linktype, units per second base, exp)
    while pos + 12 <= size:
        raw_type = bytes(view[pos : pos + 4])
        if raw_type == b"\x0a\x0d\x0d\x0a":
            magic = bytes(view[pos + 8 : pos + 12])
            if magic == b"\x1a\x2b\x3c\x4d":
                endian = ">"
            elif magic == b"\x4d\x3c\x2b\x1a":
                endian = "<"
            else:
                raise PcapngError("bad byte-order magic in a section header block")
            interfaces = []
        block_type, block_len = struct.unpack_from(endian + "II", view, pos)
        if block_len < 12 or block_len % 4:
            report.cut_at, report.damaged = pos, True
            return
        if pos + block_len > size:
            report.cut_at = pos
            return
        body = view[pos + 8 : pos + block_len - 4]
        need = {IDB_TYPE: 8, EPB_TYPE: 20}.get(block_type, 0)
        if len(body) < need:
            raise PcapngError(f"malformed block at byte {pos}: {block_len} bytes is too short")
        if block_type == IDB_TYPE:
            linktype = struct.unpack_from(endian + "H", body, 0)[0]
            base, exp = 10, 6
            for code, value in _options(body[8:], endian):
                if code == IF_TSRESOL and value:
                    base, exp = (2, value[0] & 0x7F) if value[0] & 0x80 else (10, value[0])
            interfaces.append((linktype, base, exp))
        elif block_type == EPB_TYPE:
            iface, hi, lo, caplen, orig = struct.unpack_from(endian + "IIIII", body, 0)
            if 20 + caplen > len(body):
                raise PcapngError(
                    f"malformed packet at byte {pos}: {caplen} captured bytes do not fit "
                    f"its {block_len}-byte block"
                )
            if iface < len(interfaces):
                linktype, base, exp = interfaces[iface]
                ticks = (hi << 32) | lo
                ns = ticks if (base, exp) == (10, 9) else ticks * 1_000_000_000 // (base**exp)
                data = bytes(body[20 : 20 + caplen])
                comment = None
                for code, value in _options(body[20 + caplen + _PADLEN[caplen & 3] :], endian):
                    if code == OPT_COMMENT:
                        comment = value.decode("utf-8", errors="replace")
                yield Packet(linktype, ns, data, orig, comment)
        pos += block_len
    if pos < size:
        report.cut_at = pos


def _iter_pcap(view: memoryview, report: ReadReport) -> Iterator[Packet]:
    """Classic pcap: a 24-byte file header, then a 16-byte header per packet."""
    endian, ns_per_unit = _PCAP_MAGIC[bytes(view[:4])]
    size = len(view)
    if size < 24:
        raise PcapngError(f"not a readable pcap file: it ends inside its header ({size} bytes)")
    linktype = struct.unpack_from(endian + "I", view, 20)[0] & 0x0FFFFFFF
    pos = 24
    while pos + 16 <= size:
        sec, frac, caplen, orig = struct.unpack_from(endian + "IIII", view, pos)
        if pos + 16 + caplen > size:
            report.cut_at = pos
            return
        data = bytes(view[pos + 16 : pos + 16 + caplen])
        yield Packet(linktype, sec * 1_000_000_000 + frac * ns_per_unit, data, orig, None)
        pos += 16 + caplen
    if pos < size:
        report.cut_at = pos


def _options(raw: memoryview, endian: str) -> Iterator[tuple[int, bytes]]:
    pos = 0
    while pos + 4 <= len(raw):
        code, length = struct.unpack_from(endian + "HH", raw, pos)
        if code == OPT_ENDOFOPT:
            return
        yield code, bytes(raw[pos + 4 : pos + 4 + length])
        pos += 4 + length + _PADLEN[length & 3]


@final
@dataclass(frozen=True, slots=True)
class _Segment:
    proto: int
    src: tuple[int, int]
    dst: tuple[int, int]
    flags: int
    payload: bytes
    length: int


def _ip_packet(packet: Packet) -> bytes | None:
    """The IPv4 packet inside a frame of a link type we know, else None."""
    data = packet.data
    if packet.linktype in (LINKTYPE_RAW, LINKTYPE_IPV4):
        return data
    if packet.linktype == LINKTYPE_ETHERNET and data[12:14] == b"\x08\x00":
        return data[14:]
    if packet.linktype == LINKTYPE_LINUX_SLL and data[14:16] == b"\x08\x00":
        return data[16:]
    if packet.linktype == LINKTYPE_NULL and len(data) >= 4 and data[0] in (2, 0):
        return data[4:]
    return None


def _segment(packet: Packet) -> _Segment | None:
    ip = _ip_packet(packet)
    if ip is None or len(ip) < 20 or ip[0] >> 4 != 4:
        return None
    ihl = (ip[0] & 0x0F) * 4
    ip_len, proto = struct.unpack_from(">H", ip, 2)[0], ip[9]
    src_ip, dst_ip = struct.unpack_from(">II", ip, 12)
    l4 = ip[ihl:]
    headroom = len(packet.data) - len(ip)  # link header bytes
    if proto == IPPROTO_TCP and len(l4) >= 20:
        sport, dport = struct.unpack_from(">HH", l4)
        offset = (l4[12] >> 4) * 4
        flags = l4[13]
        length = ip_len - ihl - offset
        payload = l4[offset : offset + length]
        return _Segment(proto, (src_ip, sport), (dst_ip, dport), flags, payload, length)
    if proto == IPPROTO_UDP and len(l4) >= 8:
        sport, dport = struct.unpack_from(">HH", l4)
        length = ip_len - ihl - 8
        if ip_len == 65535:  # a datagram recorded cut at the IPv4 limit: orig_len knows
            length = packet.orig_len - headroom - ihl - 8
        payload = l4[8 : 8 + length]
        return _Segment(proto, (src_ip, sport), (dst_ip, dport), 0, payload, length)
    return None


@final
class _Tracked:
    __slots__ = ("client", "closing", "conn", "held", "path", "sock_type")

    def __init__(
        self, conn: int, client: tuple[int, int], path: str, sock_type: SocketType
    ) -> None:
        self.conn = conn
        self.client = client
        self.path = path
        self.sock_type = sock_type
        self.closing: Direction | None = None
        #: Data segments without PSH, waiting to be joined into one chunk.
        self.held: list[tuple[Packet, CommentFields, Direction, _Segment]] = []

    def release(self) -> Iterator[Event]:
        """The held segments as one chunk (the time and facts of the first)."""
        if not self.held:
            return
        packet, info, direction, _seg = self.held[0]
        data = b"".join(seg.payload for *_rest, seg in self.held)
        length = sum(seg.length for *_rest, seg in self.held)
        self.held = []
        if info.fds:
            yield Event.passed_fds(
                packet.time_ns,
                self.conn,
                self.path,
                self.sock_type,
                info.client,
                direction,
                info.fds,
            )
        yield Event.chunk(
            packet.time_ns,
            self.conn,
            self.path,
            self.sock_type,
            info.client,
            direction,
            data,
            length,
        )


def _endpoint_text(endpoint: tuple[int, int]) -> str:
    ip, port = endpoint
    return f"{ip >> 24}.{(ip >> 16) & 255}.{(ip >> 8) & 255}.{ip & 255}:{port}"


def decode_events(
    buf: bytes | memoryview, report: ReadReport | None = None
) -> Generator[Event, None, None]:
    """The events of a capture: ours exactly (from comments and flows), and plain TCP
    and UDP captures (tcpdump on lo, say) as well as their headers allow. TCP data
    segments are joined up to one with PSH (the end of a chunk, or of a send)."""
    flows: dict[tuple[tuple[int, int], tuple[int, int], int], _Tracked] = {}
    next_conn = 1
    for packet in iter_packets(buf, report):
        seg = _segment(packet)
        if seg is None:
            continue
        key = (min(seg.src, seg.dst), max(seg.src, seg.dst), seg.proto)
        flow = flows.get(key)
        info = parse_comment(packet.comment)
        if flow is None:
            bare = seg.proto == IPPROTO_TCP and seg.length == 0
            if bare and seg.flags & (TCP_SYN | TCP_ACK) != TCP_SYN:
                continue  # tail of a connection that began before the capture
            client = seg.src if _looks_like_client(seg) else seg.dst
            conn = info.conn if info.conn is not None else next_conn
            next_conn = max(next_conn, conn) + 1
            default_type = SocketType.STREAM if seg.proto == IPPROTO_TCP else SocketType.DGRAM
            path = (
                info.path
                if info.path is not None
                else _endpoint_text(seg.dst if client == seg.src else seg.src)
            )
            flow = _Tracked(conn, client, path, info.sock_type or default_type)
            flows[key] = flow
            yield Event.open(packet.time_ns, conn, flow.path, flow.sock_type, info.client)
        direction = Direction.C2S if seg.src == flow.client else Direction.S2C
        if info.synthetic:
            continue  # not sent by anyone (a mid-stream HTTP/2 preface)
        if seg.proto != IPPROTO_TCP:
            if info.closing and seg.length == 0:
                del flows[key]
                yield Event.close(
                    packet.time_ns, flow.conn, flow.path, flow.sock_type, info.client, info.first
                )
            else:
                if info.fds:
                    yield Event.passed_fds(
                        packet.time_ns,
                        flow.conn,
                        flow.path,
                        flow.sock_type,
                        info.client,
                        direction,
                        info.fds,
                    )
                yield Event.chunk(
                    packet.time_ns,
                    flow.conn,
                    flow.path,
                    flow.sock_type,
                    info.client,
                    direction,
                    seg.payload,
                    seg.length,
                )
            continue
        if flow.held and (
            seg.flags & (TCP_FIN | TCP_RST) or (seg.length and flow.held[0][2] is not direction)
        ):  # a bare ACK from the receiver does not end a chunk
            yield from flow.release()
        if seg.length > 0:
            flow.held.append((packet, info, direction, seg))
            if seg.flags & TCP_PSH:
                yield from flow.release()
        if seg.flags & TCP_RST:
            del flows[key]
            yield Event.close(
                packet.time_ns, flow.conn, flow.path, flow.sock_type, info.client, None
            )
        elif seg.flags & TCP_FIN:
            if flow.closing is None:
                flow.closing = direction
            elif flow.closing is not direction:
                del flows[key]
                yield Event.close(
                    packet.time_ns,
                    flow.conn,
                    flow.path,
                    flow.sock_type,
                    info.client,
                    flow.closing,
                )
    for flow in flows.values():  # a capture that ended inside a chunk
        yield from flow.release()


def _looks_like_client(seg: _Segment) -> bool:
    """Is the sender of this first-seen segment the client?"""
    if seg.proto == IPPROTO_TCP and seg.flags & (TCP_SYN | TCP_ACK) == TCP_SYN:
        return True
    if seg.proto == IPPROTO_TCP and seg.flags & TCP_SYN:
        return False
    if seg.dst[0] == SERVER_IP and (seg.src[0] & 0xFFFF0000) == CLIENT_NET:
        return True
    if seg.src[0] == SERVER_IP and (seg.dst[0] & 0xFFFF0000) == CLIENT_NET:
        return False
    return seg.src[1] > seg.dst[1]  # the ephemeral (higher) port is the client's
