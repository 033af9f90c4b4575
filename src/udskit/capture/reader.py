"""I/O: `udskit dump -r FILE`: a pcapng file back into events, through the same
selection and printers as a live capture.

The file is read whole (captures are written in memory-sized pieces anyway); a file
cut short by a killed capture is read up to its last whole block, and the `ReadReport`
says where it ends (the command line warns, as tshark says "cut short"). Classic pcap
files (tcpdump -w) are read too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from udskit.capture.events import Event, EventKind, Selection
from udskit.capture.pcapng import ReadReport, decode_events
from udskit.errors import UsageError

__all__ = ["ReadReport", "cut_short_warning", "read_events", "replay"]


def _load(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise UsageError(
            f"cannot read {path}: {os.strerror(exc.errno or 0).lower()}; give a capture "
            "written by `udskit dump -w`, tshark -w (pcapng) or tcpdump -w (pcap)"
        ) from None
    if not data:
        raise UsageError(f"cannot read {path}: it is empty, not a capture file")
    return data


def read_events(
    path: str, selection: Selection | None = None, report: ReadReport | None = None
) -> Iterator[Event]:
    """The events in a capture file, filtered and cut as `selection` says (`--pid`,
    `-c` counts data events, `-s` shortens the data); `report` learns whether the file
    was cut short."""
    selection = selection or Selection()
    data_events = 0
    for event in decode_events(_load(path), report):
        if not selection.wants(event.client):
            continue
        if event.kind is EventKind.DATA:
            assert event.direction is not None
            if not selection.keeps(event.client, event.direction):
                continue
            if selection.count is not None and data_events >= selection.count:
                return
            data_events += 1
        yield selection.apply(event)


def replay(
    path: str,
    sinks: list[Callable[[Event], None]],
    selection: Selection | None,
    report: ReadReport | None = None,
) -> int:
    """Feed every selected event to each sink; returns the number of data events."""
    count = 0
    for event in read_events(path, selection, report):
        for sink in sinks:
            sink(event)
        if event.kind is EventKind.DATA:
            count += 1
    return count


def cut_short_warning(path: str, report: ReadReport) -> str | None:
    """The warning for a capture that ends inside a record, or None."""
    if report.cut_at is None:
        return None
    what = "a damaged record" if report.damaged else "the middle of a record"
    return (
        f"WARNING: {path} is cut short: it ends in {what} at byte {report.cut_at} of "
        f"{report.size}; the events before it are shown (a capture still being written, "
        "or one that was killed)"
    )
