"""I/O: the bench chart, a PNG: latency and throughput against message size.

matplotlib is an optional extra (`pip install 'udskit[charts]'`): it is imported
inside `write_chart` only, with the Agg backend, which draws to files and needs no
display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from udskit.bench.plan import format_size
from udskit.bench.results import BenchReport, Pattern, Transport
from udskit.errors import UsageError

INSTALL_HINT: Final = "pip install 'udskit[charts]' (or pip install matplotlib)"

_STYLE: Final = {
    Transport.UNIX_STREAM: ("tab:blue", "-", "o"),
    Transport.UNIX_STREAM_ABSTRACT: ("tab:cyan", "-", "s"),
    Transport.SOCKETPAIR: ("tab:purple", "-", "^"),
    Transport.UNIX_DGRAM: ("tab:green", "-", "D"),
    Transport.UNIX_SEQPACKET: ("tab:olive", "-", "v"),
    Transport.TCP: ("black", "--", "x"),
    Transport.PIPE: ("tab:orange", ":", "P"),
}


def charts_available() -> bool:
    from importlib.util import find_spec

    return find_spec("matplotlib") is not None


def require_charts() -> None:
    if not charts_available():
        raise UsageError(f"--chart needs matplotlib, which is not installed: {INSTALL_HINT}")


def write_chart(report: BenchReport, path: Path) -> None:
    """Draw p50 round trip and throughput against size, one line per transport."""
    require_charts()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import (
        FixedLocator,
        FuncFormatter,
        LogLocator,
        NullFormatter,
        NullLocator,
    )

    fig, (lat, thr) = plt.subplots(1, 2, figsize=(13, 5.2))
    sizes = sorted({r.size for r in report.results})
    for axis, pattern, ylabel, title in (
        (lat, Pattern.PINGPONG, "p50 round trip (µs, log)", "Latency: same payload both ways"),
        (thr, Pattern.THROUGHPUT, "MB/s (log)", "One-way throughput"),
    ):
        for transport in Transport:
            rows = [r for r in report.results if r.transport is transport and r.pattern is pattern]
            values = [r.p50_us if pattern is Pattern.PINGPONG else r.mb_s for r in rows]
            points = [(r.size, v) for r, v in zip(rows, values, strict=True) if v]
            if not points:
                continue
            color, line, marker = _STYLE[transport]
            axis.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                color=color,
                linestyle=line,
                marker=marker,
                markersize=4,
                label=transport.value,
            )
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        # 1-2-5 ticks written as plain numbers: "20", not "2×10¹".
        axis.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.10g}"))
        axis.yaxis.set_minor_formatter(NullFormatter())
        axis.xaxis.set_major_locator(FixedLocator(sizes))
        axis.xaxis.set_minor_locator(NullLocator())
        axis.set_xticks(sizes, [format_size(s).replace(" ", "") for s in sizes], rotation=45)
        axis.set_xlabel("message size")
        axis.set_ylabel(ylabel)
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
    lat.legend(fontsize="small")
    m = report.machine
    fig.suptitle(
        f"udskit bench: {m.get('kernel')}, {m.get('cpu_model')}, "
        f"{m.get('cpus_usable')} CPUs; medians of {report.settings.get('rounds')} rounds",
        fontsize="medium",
    )
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
