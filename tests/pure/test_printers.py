"""The text renderings of events: tcpdump-like lines, -X, -A and --json."""

from __future__ import annotations

import base64
import importlib
import json
import time
from pathlib import Path

import pytest

from udskit.capture.events import ClientInfo, Direction, Event, Selection
from udskit.capture.printers import Format, ascii_lines, hex_lines, json_line, line, render
from udskit.socktype import SocketType

T = 1_763_000_000_123_456_789
CURL = ClientInfo(4242, 1000, 1001, "curl")
STREAM = SocketType.STREAM


def clock(t: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t // 10**9)) + f".{t % 10**9 // 1000:06d}"


def test_data_line() -> None:
    ev = Event.chunk(T, 3, "/run/app.sock", STREAM, CURL, Direction.C2S, b"x" * 78)
    assert line(ev) == f"{clock(T)} pid 4242 (curl) c2s /run/app.sock conn 3 length 78"


def test_utc_line() -> None:
    ev = Event.chunk(T, 3, "/s", STREAM, CURL, Direction.S2C, b"ab")
    assert line(ev, utc=True).startswith(time.strftime("%H:%M:%S", time.gmtime(T // 10**9)))


def test_truncated_line_says_what_was_captured() -> None:
    ev = Event.chunk(T, 3, "/s", STREAM, CURL, Direction.S2C, b"abc", 1000)
    assert line(ev).endswith("s2c /s conn 3 length 1000 [captured 3]")


def test_open_and_close_lines() -> None:
    opened = Event.open(T, 3, "/s", SocketType.SEQPACKET, CURL)
    assert line(opened).endswith("pid 4242 (curl) open /s conn 3 seqpacket uid 1000 gid 1001")
    closed = Event.close(T, 3, "/s", STREAM, CURL, Direction.S2C)
    assert line(closed).endswith("close /s conn 3 (server closed first)")
    unknown = Event.close(T, 3, "/s", STREAM, ClientInfo(), None)
    assert line(unknown).endswith("pid ? (?) close /s conn 3 (closed by both or on error)")


def test_hex_lines_like_tcpdump() -> None:
    rows = hex_lines(b"GET / HTTP/1.1\r\nHost: x\r\n")
    assert rows == [
        "\t0x0000:  4745 5420 2f20 4854 5450 2f31 2e31 0d0a  GET./.HTTP/1.1..",
        "\t0x0010:  " + "486f 7374 3a20 780d 0a".ljust(39) + "  Host:.x..",
    ]


def test_ascii_lines() -> None:
    assert ascii_lines(b"+OK\r\n$3\r\nab\x00\r\n") == ["+OK", "$3", "ab."]
    assert ascii_lines(b"GET / HTTP/1.1\r\n\r\n") == ["GET / HTTP/1.1", ""]
    assert ascii_lines(b"no newline") == ["no newline"]
    assert ascii_lines(b"") == []


def test_render_formats() -> None:
    ev = Event.chunk(T, 1, "/s", STREAM, CURL, Direction.C2S, b"PING\r\n")
    assert render(ev, Format.LINE) == [line(ev)]
    assert render(ev, Format.ASCII) == [line(ev), "PING"]
    assert render(ev, Format.HEX)[1].startswith("\t0x0000:  5049 4e47 0d0a")
    opened = Event.open(T, 1, "/s", STREAM, CURL)
    assert render(opened, Format.HEX) == [line(opened)]


def test_json_line_has_every_field_and_every_byte() -> None:
    data = bytes(range(256))
    ev = Event.chunk(T, 9, "@abs\\x00", STREAM, CURL, Direction.S2C, data, 300)
    record = json.loads(json_line(ev))
    assert record["time"].endswith(".123456789Z") and record["time_ns"] == T
    assert {k: record[k] for k in ("event", "conn", "direction", "pid", "uid", "gid")} == {
        "event": "data",
        "conn": 9,
        "direction": "s2c",
        "pid": 4242,
        "uid": 1000,
        "gid": 1001,
    }
    assert record["command"] == "curl" and record["length"] == 300
    assert base64.b64decode(record["data"]) == data and record["truncated"] is True
    assert record["path"] == "@abs\\x00" and record["type"] == "stream"
    opened = json.loads(json_line(Event.open(T, 9, "/s", STREAM, CURL)))
    assert opened["event"] == "open" and opened["direction"] is None and "data" not in opened
    closed = json.loads(json_line(Event.close(T, 9, "/s", STREAM, CURL, Direction.C2S)))
    assert closed["event"] == "close" and closed["direction"] == "c2s"


def test_selection() -> None:
    sel = Selection(pid=4242, snaplen=2)
    assert sel.wants(CURL) and not sel.wants(ClientInfo(1))
    ev = Event.chunk(T, 1, "/s", STREAM, CURL, Direction.C2S, b"abcdef")
    cut = sel.apply(ev)
    assert cut.data == b"ab" and cut.length == 6 and cut.truncated


@pytest.mark.parametrize(
    "module", ["udskit.capture.events", "udskit.capture.pcapng", "udskit.capture.printers"]
)
def test_pure_modules_stay_pure(module: str) -> None:
    mod = importlib.import_module(module)
    assert (mod.__doc__ or "").startswith("Pure:")
    source = Path(mod.__file__ or "").read_text(encoding="utf-8")
    for name in ("socket", "select", "subprocess"):
        assert f"import {name}" not in source
