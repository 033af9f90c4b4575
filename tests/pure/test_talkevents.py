"""listen --json's records: the connect/send schema, strict JSON for any bytes."""

from __future__ import annotations

import base64
import json

from hypothesis import given
from hypothesis import strategies as st

from udskit.address import parse_address
from udskit.socktype import SocketType
from udskit.talkevents import Accepted, Closed, Listening, Received, Refused, Stopped, record


def test_text_only_where_the_bytes_are_utf8() -> None:
    assert record(Received("é".encode(), 2, connection=3)) == {
        "event": "data",
        "connection": 3,
        "length": 2,
        "truncated": False,
        "data": base64.b64encode("é".encode()).decode(),
        "text": "é",
    }
    assert "text" not in record(Received(b"\xff", 1, connection=3))


@given(st.binary(max_size=64), st.text(max_size=20))
def test_every_record_is_strict_ascii_json_with_the_exact_bytes(data: bytes, name: str) -> None:
    command = name.encode("utf-8", "surrogateescape").decode("utf-8", "surrogateescape")
    for event in (
        Received(data, len(data), sender=parse_address("@x"), credentials=(1, 2, 3)),
        Accepted(1, 10, 20, 30, (40,), command),
    ):
        line = json.dumps(record(event))
        line.encode("ascii")  # strict UTF-8 whatever the peer sent
        back = json.loads(line)
        if isinstance(event, Received):
            assert base64.b64decode(back["data"]) == data


def test_a_peer_name_that_is_not_utf8_keeps_its_bytes() -> None:
    name = b"ev\xffil".decode("utf-8", "surrogateescape")
    got = record(Accepted(1, 10, 20, 30, (), name))
    assert base64.b64decode(str(got["command_b64"])) == b"ev\xffil"
    assert "\\xff" in str(got["command"])


def test_the_other_events() -> None:
    address = parse_address("@udskit-x")
    assert record(Listening(address, SocketType.DGRAM, 7)) == {
        "event": "listening",
        "type": "dgram",
        "address": "@udskit-x",
        "pid": 7,
        "replaced_stale": False,
    }
    assert record(Refused(5, 6, 7, (8,))) == {
        "event": "refused",
        "pid": 5,
        "uid": 6,
        "gid": 7,
        "groups": [8],
    }
    assert record(Refused(None, None, None, sender=parse_address("*"))) == {
        "event": "refused",
        "sender": "*",
    }
    assert record(Closed(2, 3, 4, "reset")) == {
        "event": "closed",
        "connection": 2,
        "messages": 3,
        "bytes": 4,
        "error": "reset",
    }
    assert record(Stopped("count", 1, 2, 3, 4, 5))["reason"] == "count"
