"""Pure: events -> text lines, the way tcpdump shows packets.

Four renderings of the same `Event`s, live or read back from a file:

- `line`: one line per event: time, client pid and command, what happened, the
  socket, the connection and the length, e.g.
  ``21:43:45.123456 pid 4242 (curl) c2s /run/app.sock conn 3 length 78``
- `hex_lines` (-X): after that line, the bytes as hex and ASCII, 16 a row, as
  ``tcpdump -X`` prints them.
- `ascii_lines` (-A): after that line, the bytes as text, unprintable bytes as dots.
- `json_line` (--json): one JSON object per event; `data` in base64 so every byte
  survives; `time` in ISO 8601 UTC with nanoseconds and `time_ns` as a number.
"""

from __future__ import annotations

import base64
import enum
import json
import time
from typing import Final

from udskit.capture.events import Event, EventKind
from udskit.safetext import escape_text, json_fields, safe_line
from udskit.tap import Direction

__all__ = [
    "Format",
    "ascii_lines",
    "hex_lines",
    "json_line",
    "line",
    "render",
]


class Format(enum.Enum):
    """The live and -r outputs (-X, -A, --json; LINE is the default)."""

    LINE = "line"
    HEX = "hex"
    ASCII = "ascii"
    JSON = "json"


_PRINTABLE: Final = bytes(b if 0x20 <= b < 0x7F else ord(".") for b in range(256))
#: -X shows only graphic characters; a space is a dot there, as in tcpdump.
_GRAPHIC: Final = bytes(b if 0x20 < b < 0x7F else ord(".") for b in range(256))


def clock(time_ns: int, utc: bool = False) -> str:
    """HH:MM:SS.micro in local time, like tcpdump's default timestamp."""
    seconds, ns = divmod(time_ns, 1_000_000_000)
    parts = time.gmtime(seconds) if utc else time.localtime(seconds)
    return f"{parts.tm_hour:02d}:{parts.tm_min:02d}:{parts.tm_sec:02d}.{ns // 1000:06d}"


def iso_time(time_ns: int) -> str:
    seconds, ns = divmod(time_ns, 1_000_000_000)
    parts = time.gmtime(seconds)
    return time.strftime("%Y-%m-%dT%H:%M:%S", parts) + f".{ns:09d}Z"


def _who(event: Event) -> str:
    client = event.client
    pid = "?" if client.pid is None else str(client.pid)
    return f"pid {pid} ({escape_text(client.command) if client.command else '?'})"


def _closer(first: Direction | None) -> str:
    if first is Direction.C2S:
        return "client closed first"
    if first is Direction.S2C:
        return "server closed first"
    return "closed by both or on error"


def line(event: Event, utc: bool = False) -> str:
    """The one-line summary of an event."""
    head = f"{clock(event.time_ns, utc)} {_who(event)}"
    # The path is address notation already; read back from a file it may be anything.
    where = f"{safe_line(event.path)} conn {event.conn}"
    if event.kind is EventKind.DATA:
        assert event.direction is not None
        text = f"{head} {event.direction.value} {where} length {event.length}"
        if event.truncated:
            text += f" [captured {len(event.data)}]"
        return text
    if event.kind is EventKind.FDS:
        assert event.direction is not None
        kinds = ", ".join(escape_text(kind) for kind in event.fds)
        return f"{head} {event.direction.value} {where} fds {len(event.fds)}: {kinds}"
    if event.kind is EventKind.OPEN:
        client = event.client
        uid = "?" if client.uid is None else client.uid
        gid = "?" if client.gid is None else client.gid
        return f"{head} open {where} {event.sock_type.value} uid {uid} gid {gid}"
    return f"{head} close {where} ({_closer(event.direction)})"


def hex_lines(data: bytes) -> list[str]:
    """`tcpdump -X` rows: offset, eight groups of two bytes in hex, then ASCII."""
    rows: list[str] = []
    for offset in range(0, len(data), 16):
        row = data[offset : offset + 16]
        words = [row[i : i + 2].hex() for i in range(0, len(row), 2)]
        hexpart = " ".join(words)
        rows.append(f"\t0x{offset:04x}:  {hexpart:<39}  {row.translate(_GRAPHIC).decode()}")
    return rows


def ascii_lines(data: bytes) -> list[str]:
    """`tcpdump -A` text: printable bytes as they are, CR LF and LF end a line, other
    bytes as dots. A chunk that does not end with a newline still ends its last line."""
    text = data.replace(b"\r\n", b"\n")
    if text.endswith(b"\n"):
        text = text[:-1]
    return [part.translate(_PRINTABLE).decode() for part in text.split(b"\n")] if data else []


def json_line(event: Event) -> str:
    client = event.client
    record: dict[str, object] = {
        "time": iso_time(event.time_ns),
        "time_ns": event.time_ns,
        "event": event.kind.value,
        "conn": event.conn,
        "path": event.path,
        "type": event.sock_type.value,
        "direction": event.direction.value if event.direction is not None else None,
        "pid": client.pid,
        "uid": client.uid,
        "gid": client.gid,
        "command": client.command,
        "length": event.length,
    }
    _strict_text(record, "command")
    _strict_text(record, "path")
    if event.kind is EventKind.DATA:
        record["data"] = base64.b64encode(event.data).decode("ascii")
        record["truncated"] = event.truncated
    elif event.kind is EventKind.FDS:
        # Each as escaped text (a file name is any bytes), so the line stays strict UTF-8.
        record["fds"] = [escape_text(kind) for kind in event.fds]
    return json.dumps(record, ensure_ascii=False)


def _strict_text(record: dict[str, object], key: str) -> None:
    """JSON lines are strict UTF-8 (see `udskit.safetext.json_fields`)."""
    value = record[key]
    if isinstance(value, str):
        record.update(json_fields(key, value))


def render(event: Event, fmt: Format, utc: bool = False) -> list[str]:
    """All the lines of one event in one format."""
    if fmt is Format.JSON:
        return [json_line(event)]
    first = line(event, utc)
    if event.kind is not EventKind.DATA or fmt is Format.LINE:
        return [first]
    if fmt is Format.HEX:
        return [first, *hex_lines(event.data)]
    return [first, *ascii_lines(event.data)]
