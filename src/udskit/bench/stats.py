"""Pure: from timed trials to the numbers in the report: percentiles, rates, ratios.

Percentiles are nearest-rank (the smallest sample with at least q% of samples at
or below it), so every reported latency is one that really happened; with fewer
than 1000 samples p99.9 is simply the slowest one. Each round is summarised on its
own and the report takes the median over rounds: a burst of load from another
process spoils one round, not the figure.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence

from udskit.bench.results import BenchResult, Pattern, Transport, TrialResult

#: The decimal megabyte (10**6 bytes), as MB/s is usually meant in benchmarks.
MEGABYTE = 1_000_000


def percentile(sorted_values: Sequence[int], q: float) -> int:
    """Nearest-rank percentile of already sorted values; q in (0, 100]."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0 < q <= 100:
        raise ValueError(f"percentile {q} is not in (0, 100]")
    # round() first: 99.9 / 100 * 1000 is 999.0000000000001 in binary floating point.
    rank = math.ceil(round(q / 100 * len(sorted_values), 9))
    return sorted_values[max(rank, 1) - 1]


def median(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("median of no values")
    ordered = sorted(values)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[mid]
    return (ordered[mid - 1] + ordered[mid]) / 2


def latency_us(samples_ns: Sequence[int]) -> tuple[float, float, float]:
    """(p50, p99, p99.9) in microseconds of one round's round trips."""
    ordered = sorted(samples_ns)
    return (
        percentile(ordered, 50) / 1000,
        percentile(ordered, 99) / 1000,
        percentile(ordered, 99.9) / 1000,
    )


def rates(bytes_moved: int, elapsed_ns: int, size: int) -> tuple[float, float]:
    """(MB/s, messages/s) of one throughput round; a message is one send of `size`."""
    if elapsed_ns <= 0:
        return (0.0, 0.0)
    seconds = elapsed_ns / 1e9
    return (bytes_moved / seconds / MEGABYTE, bytes_moved / size / seconds)


def summarise(trials: Sequence[TrialResult]) -> BenchResult:
    """The medians over the rounds of one cell (same transport, pattern and size)."""
    if not trials:
        raise ValueError("no trials to summarise")
    first = trials[0]
    if any(
        (t.transport, t.pattern, t.size) != (first.transport, first.pattern, first.size)
        for t in trials
    ):
        raise ValueError("trials of different cells cannot be summarised together")
    if first.pattern is Pattern.PINGPONG:
        rounds = [latency_us(t.samples_ns) for t in trials if t.samples_ns]
        if not rounds:
            raise ValueError("pingpong trials without samples")
        return BenchResult(
            transport=first.transport,
            pattern=first.pattern,
            size=first.size,
            p50_us=median([r[0] for r in rounds]),
            p99_us=median([r[1] for r in rounds]),
            p999_us=median([r[2] for r in rounds]),
            mb_s=None,
            msgs_s=None,
            vs_tcp=None,
            samples=sum(len(t.samples_ns) for t in trials),
            rounds=len(trials),
        )
    measured = [rates(t.bytes_moved, t.elapsed_ns, t.size) for t in trials]
    return BenchResult(
        transport=first.transport,
        pattern=first.pattern,
        size=first.size,
        p50_us=None,
        p99_us=None,
        p999_us=None,
        mb_s=median([m[0] for m in measured]),
        msgs_s=median([m[1] for m in measured]),
        vs_tcp=None,
        samples=sum(t.bytes_moved // t.size for t in trials),
        rounds=len(trials),
    )


def ratio_to_tcp(result: BenchResult, tcp: BenchResult | None) -> float | None:
    """How many times better than TCP (higher is better), or None without a TCP row."""
    if tcp is None:
        return None
    if result.pattern is Pattern.PINGPONG:
        if not result.p50_us or tcp.p50_us is None:
            return None
        return tcp.p50_us / result.p50_us
    if not tcp.mb_s or result.mb_s is None:
        return None
    return result.mb_s / tcp.mb_s


def with_tcp_ratios(results: Iterable[BenchResult]) -> list[BenchResult]:
    """The same results with `vs_tcp` filled in from the TCP row of each cell."""
    rows = list(results)
    tcp: Mapping[tuple[Pattern, int], BenchResult] = {
        (r.pattern, r.size): r for r in rows if r.transport is Transport.TCP
    }
    out = []
    for row in rows:
        ratio = ratio_to_tcp(row, tcp.get((row.pattern, row.size)))
        out.append(dataclasses.replace(row, vs_tcp=ratio))
    return out
