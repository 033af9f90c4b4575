"""The records on the pipe to the pcapng writer: built, shed and decoded without I/O."""

from __future__ import annotations

import itertools

import pytest

from udskit.capture.events import EventKind
from udskit.capture.pcapng import PcapngEncoder, decode_events
from udskit.capture.writerwire import (
    DATA,
    KIND_DATA,
    RecordDecoder,
    close_record,
    fds_record,
    open_record,
    shed_records,
)
from udskit.socktype import SocketType
from udskit.tap import ClientInfo, Direction

CLIENT = ClientInfo(42, 1000, 1000, "redis-cli")


def data_record(conn: int, direction: Direction, payload: bytes, length: int, t: int) -> bytes:
    return DATA.pack(KIND_DATA, direction is Direction.C2S, conn, length, len(payload), t) + payload


def session() -> bytes:
    return b"".join(
        [
            open_record(7, "/run/app.sock", SocketType.STREAM, CLIENT, 1),
            data_record(7, Direction.C2S, b"PING\r\n", 6, 2),
            fds_record(7, Direction.S2C, ("file:/etc/hosts",), 3),
            data_record(7, Direction.S2C, b"+PONG\r\n", 7, 3),
            close_record(7, Direction.C2S, 4),
        ]
    )


def decoded(records: bytes, split: int | None = None) -> list[tuple[object, ...]]:
    encoder = PcapngEncoder(None)
    encoder.header()
    decoder = RecordDecoder(encoder)
    for part in (records,) if split is None else (records[:split], records[split:]):
        decoder.feed(part)
    return [
        (e.kind, e.conn, e.direction, e.data, e.length, e.fds, e.client.pid, e.path)
        for e in decode_events(bytes(encoder.out))
    ]


def test_a_session_goes_through_the_wire_and_the_encoder() -> None:
    events = decoded(session())
    assert [e[0] for e in events] == [
        EventKind.OPEN,
        EventKind.DATA,
        EventKind.FDS,
        EventKind.DATA,
        EventKind.CLOSE,
    ]
    assert events[1][3] == b"PING\r\n" and events[3][3] == b"+PONG\r\n"
    assert events[2][5] == ("file:/etc/hosts",)
    assert events[0][6] == 42 and events[0][7] == "/run/app.sock"


def test_records_split_anywhere_decode_the_same() -> None:
    records = session()
    whole = decoded(records)
    for split in range(len(records) + 1):
        assert decoded(records, split) == whole, split


@pytest.mark.parametrize("keep_lengths", [True, False])
def test_shedding_keeps_every_open_close_and_fds_and_counts_every_chunk(
    keep_lengths: bool,
) -> None:
    kept, shed = shed_records(session(), keep_lengths)
    events = decoded(bytes(kept))
    kinds = [e[0] for e in events]
    assert kinds.count(EventKind.OPEN) == 1 and kinds.count(EventKind.CLOSE) == 1
    # The file shows passed descriptors on the chunk they came with: kept as long as
    # that chunk is (as its length); the wire keeps the record either way (see below).
    assert kinds.count(EventKind.FDS) == (1 if keep_lengths else 0)
    if keep_lengths:
        chunks = [e for e in events if e[0] is EventKind.DATA]
        assert [(c[3], c[4]) for c in chunks] == [(b"", 6), (b"", 7)]  # lengths only
        assert (shed.cut_chunks, shed.cut_bytes, shed.dropped_chunks) == (2, 13, 0)
    else:
        assert EventKind.DATA not in kinds
        assert (shed.cut_chunks, shed.cut_bytes, shed.dropped_chunks) == (0, 0, 2)


def test_shedding_every_mix_of_records() -> None:
    parts = {
        "open": open_record(1, "@x", SocketType.SEQPACKET, CLIENT, 1),
        "data": data_record(1, Direction.C2S, b"abc", 5, 2),
        "fds": fds_record(1, Direction.C2S, ("pipe:[1]",), 3),
        "close": close_record(1, None, 4),
    }
    for mix in itertools.product(parts, repeat=3):
        records = b"".join(parts[name] for name in mix)
        for keep in (True, False):
            kept, shed = shed_records(records, keep)
            chunks = mix.count("data")
            assert shed.cut_chunks + shed.dropped_chunks == chunks
            others = b"".join(parts[n] for n in mix if n != "data")
            if not keep:
                assert bytes(kept) == others
            else:
                assert len(kept) == len(others) + chunks * DATA.size
