"""I/O: `udskit dump -r FILE`: a pcapng file back into events, through the same
selection and printers as a live capture.

The file is read whole (captures are written in memory-sized pieces anyway); a file
cut short by a killed capture is read up to its last whole block.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from udskit.capture.events import Event, EventKind, Selection
from udskit.capture.pcapng import decode_events
from udskit.errors import UsageError

__all__ = ["read_events", "replay"]


def _load(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise UsageError(
            f"cannot read {path}: {os.strerror(exc.errno or 0).lower()}; give a pcapng file "
            "written by `udskit dump -w` (or tcpdump/tshark)"
        ) from None
    if not data:
        raise UsageError(f"cannot read {path}: it is empty, not a pcapng file")
    return data


def read_events(path: str, selection: Selection | None = None) -> Iterator[Event]:
    """The events in a capture file, filtered and cut as `selection` says (`--pid`,
    `-c` counts data events, `-s` shortens the data)."""
    selection = selection or Selection()
    data_events = 0
    for event in decode_events(_load(path)):
        if not selection.wants(event.client):
            continue
        if event.kind is EventKind.DATA:
            if selection.count is not None and data_events >= selection.count:
                return
            data_events += 1
        yield selection.apply(event)


def replay(path: str, sinks: list[Callable[[Event], None]], selection: Selection | None) -> int:
    """Feed every selected event to each sink; returns the number of data events."""
    count = 0
    for event in read_events(path, selection):
        for sink in sinks:
            sink(event)
        if event.kind is EventKind.DATA:
            count += 1
    return count
