"""udskit bench: every transport and pattern measured, the JSON shape, the caps, cleanup.

No assertion here depends on how fast anything is: the machine is shared. The tests
check what a user relies on: every transport and pattern has figures, the JSON has
the documented shape, the datagram limit is real and said, a chart is a PNG, bad
input gets one line, and an interrupted run leaves no process or socket file.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import Peers, wait_until
from udskit.bench.plan import (
    QUICK_SIZES,
    BenchPlan,
    Trial,
    format_size,
    parse_size,
    parse_sizes,
    trial_order,
)
from udskit.bench.report import table_rows
from udskit.bench.results import BenchResult, Pattern, Transport
from udskit.bench.runner import run_trial
from udskit.bench.stats import median, percentile, summarise, with_tcp_ratios
from udskit.bench.transports import message_cap
from udskit.errors import UsageError
from udskit.socktype import SocketType

ALL_TRANSPORTS = {t.value for t in Transport}
ALL_PATTERNS = {p.value for p in Pattern}
RESULT_KEYS = {
    "transport",
    "pattern",
    "size",
    "p50_us",
    "p99_us",
    "p999_us",
    "mb_s",
    "msgs_s",
    "vs_tcp",
    "samples",
    "rounds",
}
MACHINE_KEYS = {
    "kernel",
    "arch",
    "cpu_model",
    "cpus",
    "cpus_usable",
    "loadavg_at_start",
    "python",
    "udskit",
    "so_sndbuf_default",
    "wmem_default",
    "wmem_max",
    "max_dgram_qlen",
    "message_caps",
}
SETTINGS_KEYS = {"transports", "patterns", "sizes", "duration_s", "rounds", "trial_s", "pin"}


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def check_shape(doc: Any) -> None:
    """The shape documented in `udskit bench --help`, checked field by field."""
    assert isinstance(doc, dict)
    assert set(doc) == {"machine", "settings", "results", "skipped"}
    assert set(doc["machine"]) == MACHINE_KEYS
    caps = doc["machine"]["message_caps"]
    assert set(caps) == {"unix-dgram", "unix-seqpacket"}
    assert all(isinstance(c, int) and c > 0 for c in caps.values())
    assert set(doc["settings"]) == SETTINGS_KEYS
    assert isinstance(doc["results"], list) and doc["results"]
    for row in doc["results"]:
        assert set(row) == RESULT_KEYS, row
        assert row["transport"] in ALL_TRANSPORTS
        assert row["pattern"] in ALL_PATTERNS
        assert isinstance(row["size"], int) and row["size"] >= 1
        latency = [row["p50_us"], row["p99_us"], row["p999_us"]]
        rate = [row["mb_s"], row["msgs_s"]]
        if row["pattern"] == "pingpong":
            assert all(_positive(v) for v in latency), row
            assert row["p50_us"] <= row["p99_us"] <= row["p999_us"], row
            assert rate == [None, None], row
        else:
            assert all(_positive(v) for v in rate), row
            assert latency == [None, None, None], row
            # MB/s and messages/s describe the same bytes.
            assert math.isclose(row["mb_s"] * 1e6 / row["size"], row["msgs_s"], rel_tol=1e-6)
        assert row["vs_tcp"] is None or _positive(row["vs_tcp"])
        assert isinstance(row["samples"], int) and row["samples"] > 0
        assert isinstance(row["rounds"], int) and row["rounds"] >= 1
    for skip in doc["skipped"]:
        assert set(skip) == {"transport", "size", "reason"}


# -- the Must-show: --quick --json ---------------------------------------------------------
def test_quick_json_has_every_transport_and_pattern(
    tmp_path: Path, sockdir: Path, peers: Peers
) -> None:
    out = tmp_path / "bench.json"
    # --quick's sizes and rounds; --duration shortens it for the suite (run the real
    # --quick by hand: it finishes in about 15 s).
    done = peers.udskit_run(
        "bench", "--quick", "--duration", "0.06", "--json", out, "--dir", sockdir, timeout=120
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(out.read_text())
    check_shape(doc)
    cells = {(r["transport"], r["pattern"], r["size"]) for r in doc["results"]}
    assert cells == {(t, p, s) for t in ALL_TRANSPORTS for p in ALL_PATTERNS for s in QUICK_SIZES}
    assert all(r["rounds"] == 3 for r in doc["results"])
    # Every row has its ratio to TCP, and TCP's own is 1.
    assert all(r["vs_tcp"] is not None for r in doc["results"])
    assert all(r["vs_tcp"] == 1.0 for r in doc["results"] if r["transport"] == "tcp")
    # The table a person reads names every transport and the ratio column.
    table = done.stdout.decode()
    assert "Round trip (pingpong)" in table and "One-way throughput" in table
    assert all(name in table for name in ALL_TRANSPORTS)
    assert "×TCP" in table
    assert f"wrote {out}" in done.stderr.decode()
    assert list(sockdir.iterdir()) == []


def test_json_to_stdout_replaces_the_table(peers: Peers) -> None:
    done = peers.udskit_run(
        "bench", "-t", "socketpair", "--sizes", "64", "--duration", "0.02", "--json", "-"
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    check_shape(doc)
    # tcp joins on its own so that ratios exist.
    assert {r["transport"] for r in doc["results"]} == {"socketpair", "tcp"}


# -- datagram limits -----------------------------------------------------------------------
def test_sizes_over_the_message_limit_are_skipped_and_said(tmp_path: Path, peers: Peers) -> None:
    out = tmp_path / "caps.json"
    done = peers.udskit_run(
        "bench",
        *("-t", "unix-dgram", "-t", "unix-seqpacket", "-p", "throughput"),
        *("--sizes", "64,1M", "--duration", "0.04", "--json", out),
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(out.read_text())
    check_shape(doc)
    caps = doc["machine"]["message_caps"]
    ran = {(r["transport"], r["size"]) for r in doc["results"]}
    skipped = {(s["transport"], s["size"]) for s in doc["skipped"]}
    for name in ("unix-dgram", "unix-seqpacket"):
        for size in (64, 1 << 20):
            assert ((name, size) in ran) == (size <= caps[name])
            assert ((name, size) in skipped) == (size > caps[name])
    assert ("tcp", 1 << 20) in ran
    table = done.stdout.decode()
    assert f"unix-dgram {caps['unix-dgram']:,} B" in table
    if skipped:
        assert "Not run (over the message limit)" in table


@pytest.mark.parametrize("kind", [SocketType.DGRAM, SocketType.SEQPACKET])
def test_the_reported_limit_is_the_real_one(kind: SocketType, sockdir: Path) -> None:
    """A message of exactly the limit makes the round trip intact; one byte more is
    refused by the kernel (the pingpong loop checks the echo equals what was sent)."""
    cap = message_cap(kind)
    transport = Transport.UNIX_DGRAM if kind is SocketType.DGRAM else Transport.UNIX_SEQPACKET
    result = run_trial(Trial(transport, Pattern.PINGPONG, cap, 0), 0.02, sockdir)
    assert result.samples_ns and all(s > 0 for s in result.samples_ns)
    import socket

    a, b = socket.socketpair(socket.AF_UNIX, kind.kernel)
    with a, b, pytest.raises(OSError) as err:
        a.send(bytes(cap + 1))
    assert err.value.errno == 90  # EMSGSIZE


@pytest.mark.parametrize("transport", list(Transport), ids=lambda t: t.value)
def test_every_transport_carries_a_large_message_both_ways(
    transport: Transport, sockdir: Path
) -> None:
    size = 1 << 20 if not transport.keeps_boundaries else 128 * 1024
    for pattern in Pattern:
        result = run_trial(Trial(transport, pattern, size, 0), 0.02, sockdir)
        if pattern is Pattern.PINGPONG:
            assert len(result.samples_ns) >= 1
        else:
            assert result.bytes_moved >= size and result.elapsed_ns > 0
    assert list(sockdir.iterdir()) == []


#: Stop process PID for 25 ms of every 28 until a line arrives on stdin; the last signal
#: sent is always SIGCONT, so the process is never left stopped.
LATE_SCHEDULER = """\
import os, select, signal, sys, time
pid = int(sys.argv[1])
print("ready", flush=True)
while True:
    os.kill(pid, signal.SIGSTOP)
    time.sleep(0.025)
    os.kill(pid, signal.SIGCONT)
    if select.select([sys.stdin], [], [], 0.003)[0]:
        break
"""


@pytest.mark.parametrize(
    "transport", [t for t in Transport if not t.keeps_boundaries], ids=lambda t: t.value
)
def test_a_measuring_side_run_late_still_counts_a_whole_message(
    transport: Transport, sockdir: Path, peers: Peers
) -> None:
    """Seen in a soak with the other CPU busy: the measuring side of a 20 ms trial at
    1 MiB was descheduled past the end of its window, woke, read what the socket held
    and closed the window, having counted 438,528 bytes. Here another process stops it
    (SIGSTOP) most of the time, as a late scheduler would."""
    size = 1 << 20
    late = peers.start(
        sys.executable, "-c", LATE_SCHEDULER, str(os.getpid()), stdin=subprocess.PIPE
    )
    assert late.proc.stdin is not None and late.proc.stdout is not None
    assert late.proc.stdout.readline() == b"ready\n"
    try:
        results = [
            run_trial(Trial(transport, Pattern.THROUGHPUT, size, 0), 0.02, sockdir)
            for _ in range(3)
        ]
    finally:
        late.proc.stdin.write(b"done\n")
        late.proc.stdin.flush()
        assert late.wait() == 0
    assert [r.bytes_moved >= size for r in results] == [True] * 3, results


# -- chart ----------------------------------------------------------------------------------
def test_chart_is_a_png(tmp_path: Path, peers: Peers) -> None:
    pytest.importorskip("matplotlib")
    chart = tmp_path / "bench.png"
    done = peers.udskit_run(
        "bench", "-t", "unix-stream", "--sizes", "64,4K", "--duration", "0.02", "--chart", chart
    )
    assert done.returncode == 0, done.stderr
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert chart.stat().st_size > 10_000


# -- bad input: one line, exit 2, nothing run -------------------------------------------------
@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--sizes", "0"], "bad size '0'"),
        (["--sizes", "4X"], "bad size '4X'"),
        (["--sizes", "2G"], "bad size"),
        (["--duration", "0"], "--duration"),
        (["--rounds", "0"], "--rounds"),
        (["--pin", "0,4096"], "--pin"),
        (["--pin", "zero"], "--pin"),
        (["--json", "/nonexistent-dir/x.json"], "does not exist"),
        (["--chart", "/nonexistent-dir/x.png"], "--chart"),
        (["-t", "carrier-pigeon"], "invalid choice"),
        (["--dir", "/nonexistent-dir"], "--dir"),
    ],
)
def test_bad_input_gets_one_line(args: list[str], says: str, peers: Peers) -> None:
    done = peers.udskit_run("bench", "--sizes", "64", "--duration", "0.01", *args)
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert says in err
    assert done.stdout == b""


def test_help_documents_the_json_shape(peers: Peers) -> None:
    done = peers.udskit_run("bench", "--help")
    text = done.stdout.decode()
    for key in (*RESULT_KEYS, "machine", "results", "message_caps", "skipped"):
        assert f'"{key}"' in text, key
    assert "udskit bench --quick" in text


# -- nothing left behind -----------------------------------------------------------------------
def test_sigterm_mid_run_leaves_no_process_or_socket_file(peers: Peers) -> None:
    """Without --dir: the bench's own temporary directory must go too."""

    def bench_dirs() -> set[str]:
        return {p for p in os.listdir("/tmp") if p.startswith("udskit-bench-")}

    before = bench_dirs()
    bench = peers.udskit(
        "bench",
        *("-t", "unix-stream", "-t", "unix-dgram", "-p", "pingpong", "--sizes", "64"),
        *("--duration", "600", "--rounds", "1"),
    )
    wait_until(lambda: bench_dirs() - before, what="the bench's socket directory")
    me = psutil.Process(bench.pid)
    wait_until(me.children, what="the bench's peer process")
    children = [c.pid for c in me.children(recursive=True)]
    _out, err = bench.stop(signal.SIGTERM)
    assert bench.proc.returncode == 143, err
    assert b"Traceback" not in err
    wait_until(lambda: not any(psutil.pid_exists(pid) for pid in children), what="peers gone")
    assert bench_dirs() - before == set()


# -- pure parts --------------------------------------------------------------------------------
def test_percentiles_are_nearest_rank() -> None:
    values = list(range(1, 1001))
    assert percentile(values, 50) == 500
    assert percentile(values, 99) == 990
    assert percentile(values, 99.9) == 999
    assert percentile(values, 100) == 1000
    assert percentile([7], 99.9) == 7
    assert percentile(list(range(1, 11)), 99.9) == 10  # few samples: the slowest one
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([1.0, 2.0, 3.0, 10.0]) == 2.5
    with pytest.raises(ValueError):
        percentile([], 50)


def test_sizes_parse_and_format() -> None:
    assert parse_sizes("1,64,4K,4KiB,1M") == (1, 64, 4096, 1 << 20)
    assert parse_size("16k") == 16384
    assert [format_size(s) for s in (1, 100, 4096, 1 << 20, 1500)] == [
        "1 B",
        "100 B",
        "4 KiB",
        "1 MiB",
        "1500 B",
    ]
    for bad in ("", "0", "-1", "1.5K", "1G"):
        with pytest.raises(UsageError):
            parse_sizes(bad)


def test_transports_alternate_and_rotate_each_round() -> None:
    plan = BenchPlan(
        (Transport.UNIX_STREAM, Transport.TCP, Transport.PIPE), (Pattern.PINGPONG,), (64,), 1, 3
    )
    order = [t.transport.value for t in trial_order(plan, {})]
    assert order == [
        *("unix-stream", "tcp", "pipe"),
        *("tcp", "pipe", "unix-stream"),
        *("pipe", "unix-stream", "tcp"),
    ]
    capped = list(trial_order(plan, {Transport.UNIX_STREAM: 32}))
    assert all(t.transport is not Transport.UNIX_STREAM for t in capped)


def _row(transport: Transport, pattern: Pattern, **figures: float) -> BenchResult:
    return BenchResult(
        transport=transport,
        pattern=pattern,
        size=64,
        p50_us=figures.get("p50"),
        p99_us=figures.get("p99"),
        p999_us=figures.get("p999"),
        mb_s=figures.get("mb"),
        msgs_s=figures.get("msgs"),
        vs_tcp=None,
        samples=10,
        rounds=1,
    )


def test_ratios_to_tcp_are_higher_is_better() -> None:
    rows = with_tcp_ratios(
        [
            _row(Transport.SOCKETPAIR, Pattern.PINGPONG, p50=5, p99=6, p999=7),
            _row(Transport.TCP, Pattern.PINGPONG, p50=10, p99=12, p999=14),
            _row(Transport.SOCKETPAIR, Pattern.THROUGHPUT, mb=300, msgs=1),
            _row(Transport.TCP, Pattern.THROUGHPUT, mb=200, msgs=1),
        ]
    )
    assert [r.vs_tcp for r in rows] == [2.0, 1.0, 1.5, 1.0]
    assert table_rows(rows, Pattern.PINGPONG)[0] == [
        "64 B",
        "socketpair",
        "5.0",
        "6.0",
        "7.0",
        "2.00×",
    ]
    assert table_rows(rows, Pattern.THROUGHPUT)[0][-1] == "1.50×"


def test_summary_is_the_median_over_rounds() -> None:
    from udskit.bench.results import TrialResult

    trials = [
        TrialResult(Transport.PIPE, Pattern.THROUGHPUT, 100, bytes_moved=b, elapsed_ns=10**9)
        for b in (100_000_000, 300_000_000, 200_000_000)
    ]
    result = summarise(trials)
    assert result.mb_s == 200.0 and result.msgs_s == 2_000_000.0
    assert result.rounds == 3 and result.samples == 6_000_000
