"""udskit bench: unix sockets against TCP loopback and pipes, latency and throughput.

    from udskit.bench import BenchPlan, Pattern, Transport, run_bench
    plan = BenchPlan(tuple(Transport), tuple(Pattern), sizes=(64, 4096))
    report = run_bench(plan)          # BenchReport; report.to_json() for machines

Pure parts: `results` (the records), `plan` (what runs in which order), `stats`
(percentiles, medians, ratios to TCP), `report` (the table). I/O parts: `transports`
(the connected pairs), `patterns` (the timed loops), `runner` (processes), `machine`
(facts about the host) and `chart` (the PNG, with matplotlib).
"""

from __future__ import annotations

from udskit.bench.plan import BenchPlan, parse_sizes
from udskit.bench.results import BenchFailed, BenchReport, BenchResult, Pattern, Transport
from udskit.bench.runner import run_bench

__all__ = [
    "BenchFailed",
    "BenchPlan",
    "BenchReport",
    "BenchResult",
    "Pattern",
    "Transport",
    "parse_sizes",
    "run_bench",
]
