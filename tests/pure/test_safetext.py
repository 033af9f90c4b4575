"""The one escaping rule: nothing a peer controls reaches a terminal raw, and the
notation gives the exact bytes back (paths paste back into `udskit connect`)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from udskit.address import AddressKind, UnixAddress, format_address, parse_address
from udskit.capture.events import Event
from udskit.capture.printers import json_line, line
from udskit.endpoint_spec import format_endpoint, parse_endpoint
from udskit.safetext import escape_bytes, escape_text, safe_line, unescape
from udskit.socktype import SocketType
from udskit.tap import ClientInfo, Direction

HOSTILE = 'e"v uid=7\n\x1b[1m\x1b[2J\x7f\x9b\u202e'


def has_control(text: str) -> bool:
    return any(not c.isprintable() and c != "\t" for c in text)


def test_hostile_text_is_one_printable_line() -> None:
    out = escape_text(HOSTILE)
    assert not has_control(out)
    assert out == 'e"v uid=7\\x0a\\x1b[1m\\x1b[2J\\x7f\\xc2\\x9b\\xe2\\x80\\xae'


def test_bytes_that_are_not_utf8_and_backslashes() -> None:
    raw = b"a\\b\xff\xfe/\x00"
    assert escape_bytes(raw) == "a\\\\b\\xff\\xfe/\\x00"
    assert unescape(escape_bytes(raw)) == raw


@given(st.binary(max_size=200))
def test_escape_bytes_round_trips_and_is_printable(raw: bytes) -> None:
    text = escape_bytes(raw)
    assert text.isprintable()
    assert unescape(text) == raw
    text.encode("utf-8")  # strict: no surrogates left


@given(st.text(max_size=100))
def test_safe_line_leaves_no_control_character(text: str) -> None:
    out = safe_line(text)
    assert not has_control(out)
    out.encode("utf-8", errors="strict")


@given(st.binary(min_size=1, max_size=107).filter(lambda b: b"\0" not in b))
def test_every_path_pastes_back(raw: bytes) -> None:
    address = UnixAddress.pathname(raw)
    text = format_address(address)
    assert text.isprintable()
    assert parse_address(text) == address
    spec = parse_endpoint(f"unix:{text.removeprefix('unix:')}")
    assert spec.address == address
    assert parse_endpoint(format_endpoint(spec)) == spec


def test_plain_paths_look_as_before_and_odd_ones_say_unix() -> None:
    assert format_address(UnixAddress.pathname("/run/app.sock")) == "/run/app.sock"
    assert format_address(UnixAddress.pathname(b"/tmp/a\nb")) == "unix:/tmp/a\\x0ab"
    assert format_address(UnixAddress.pathname(b"/tmp/a\\b")) == "unix:/tmp/a\\\\b"
    assert parse_address("/tmp/a\\b").name == b"/tmp/a\\b"  # a bare path is literal
    assert parse_address("unix:/tmp/\\xff").kind is AddressKind.PATHNAME


def test_dump_lines_and_json_of_a_hostile_client() -> None:
    path = format_address(UnixAddress.pathname(b"/tmp/\x1b[2J\n.sock"))
    client = ClientInfo(42, 0, 0, HOSTILE + "\udcff")  # comm with a byte not UTF-8
    event = Event.chunk(1, 3, path, SocketType.STREAM, client, Direction.C2S, b"x")
    text = line(event)
    assert not has_control(text) and "\\x1b[2J" in text
    record = json_line(event)
    record.encode("utf-8", errors="strict")
    parsed = json.loads(record)
    assert parsed["command_b64"] and parsed["path"] == path
    assert parse_address(parsed["path"]).name == b"/tmp/\x1b[2J\n.sock"
