"""Pure: a bench report as text: two tables (pingpong, throughput) and the notes.

Rows are built as plain strings first (`table_rows`), so that what the table says
can be tested without a terminal; `render` lays them out with rich into a string.
rich is imported inside `render` only; nothing here touches a socket or a file.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence
from typing import Final

from udskit.bench.plan import format_size
from udskit.bench.results import BenchReport, BenchResult, Pattern

PINGPONG_HEADERS: Final = ("size", "transport", "p50 µs", "p99 µs", "p99.9 µs", "×TCP")
THROUGHPUT_HEADERS: Final = ("size", "transport", "MB/s", "msgs/s", "×TCP")


def _us(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value < 1000 else f"{value:,.0f}"


def _mb(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def _count(value: float | None) -> str:
    if value is None:
        return "-"
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.2f}{suffix}"
    return f"{value:.0f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}×"


def table_rows(results: Sequence[BenchResult], pattern: Pattern) -> list[list[str]]:
    """One row of strings per result of `pattern`, in the report's order."""
    rows = []
    for r in results:
        if r.pattern is not pattern:
            continue
        if pattern is Pattern.PINGPONG:
            figures = [_us(r.p50_us), _us(r.p99_us), _us(r.p999_us)]
        else:
            figures = [_mb(r.mb_s), _count(r.msgs_s)]
        rows.append([format_size(r.size), r.transport.value, *figures, _ratio(r.vs_tcp)])
    return rows


def notes(report: BenchReport) -> list[str]:
    """The lines under the tables: what the numbers mean, the machine, the caps."""
    m = report.machine
    s = report.settings
    lines = [
        "×TCP: how many times better than TCP loopback at the same size (higher is better): "
        "TCP's p50 over this p50 for round trips, this MB/s over TCP's for throughput.",
        f"Medians of {s.get('rounds')} rounds of {_seconds(s.get('trial_s'))} per transport "
        "and size, transports alternating; pingpong is a full echo of the same size on "
        "every transport.",
        f"Machine: {m.get('kernel')}, {m.get('cpu_model')}, {m.get('cpus_usable')} usable "
        f"CPUs, load {_load(m.get('loadavg_at_start'))} at start; "
        + (f"pinned to CPUs {s['pin']}." if s.get("pin") else "not pinned (--pin to pin)."),
    ]
    caps = m.get("message_caps")
    if isinstance(caps, dict) and caps:
        described = ", ".join(f"{name} {cap:,} B" for name, cap in caps.items())
        lines.append(
            f"Largest message per send here: {described} (SO_SNDBUF {m.get('so_sndbuf_default')}"
            " − 32, unix_dgram_sendmsg); raise SO_SNDBUF/net.core.wmem_default for more."
        )
    if report.skipped:
        by_transport: dict[str, list[str]] = {}
        for skip in report.skipped:
            by_transport.setdefault(skip.transport.value, []).append(format_size(skip.size))
        described = "; ".join(f"{t} at {', '.join(sizes)}" for t, sizes in by_transport.items())
        lines.append(f"Not run (over the message limit): {described}.")
    return lines


def _seconds(value: object) -> str:
    return f"{value:.3g} s" if isinstance(value, float | int) else "?"


def _load(value: object) -> str:
    if isinstance(value, list) and value:
        return str(value[0])
    return "?"


def render(report: BenchReport, *, width: int = 100, color: bool = False) -> str:
    """The tables and notes as text, `width` columns wide (ANSI colours if `color`)."""
    from rich.console import Console
    from rich.table import Table

    buffer = io.StringIO()
    console = Console(
        file=buffer, width=width, force_terminal=color, no_color=not color, highlight=False
    )
    titles = {
        Pattern.PINGPONG: ("Round trip (pingpong)", PINGPONG_HEADERS),
        Pattern.THROUGHPUT: ("One-way throughput", THROUGHPUT_HEADERS),
    }
    for pattern, (title, headers) in titles.items():
        rows = table_rows(report.results, pattern)
        if not rows:
            continue
        table = Table(title=title, title_justify="left")
        for i, header in enumerate(headers):
            table.add_column(header, justify="left" if i < 2 else "right")
        for i, row in enumerate(rows):
            last_of_size = i + 1 == len(rows) or rows[i + 1][0] != row[0]
            table.add_row(*row, end_section=last_of_size)
        console.print(table)
    text = buffer.getvalue()
    # Plain lines, wrapped at spaces: rich would colour numbers and split anywhere.
    wrapped = [textwrap.fill(line, width, subsequent_indent="  ") for line in notes(report)]
    return text + "\n".join(wrapped) + "\n"
