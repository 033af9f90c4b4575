"""The `udskit bench` command: unix sockets vs TCP loopback vs pipes, measured fairly."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from udskit.cli.env import Env, ExitStatus

if TYPE_CHECKING:
    from udskit.bench.plan import BenchPlan
    from udskit.bench.results import BenchReport
    from udskit.demo import Tour

TRANSPORT_NAMES = (
    "unix-stream",
    "unix-stream-abstract",
    "socketpair",
    "unix-dgram",
    "unix-seqpacket",
    "tcp",
    "pipe",
)
PATTERN_NAMES = ("pingpong", "throughput")

DESCRIPTION = """\
Measure round-trip latency (p50, p99, p99.9) and one-way throughput (MB/s, messages/s)
of unix sockets (stream on a file and on an abstract name, socketpair, dgram, seqpacket)
against TCP on 127.0.0.1 (TCP_NODELAY) and a pair of pipes, from 1 byte to 1 MiB, with
the client and the server in two processes. Every transport does the same work: a
pingpong is a full echo of the same size both ways.

Each transport and size runs in rounds, transports alternating, and the table shows the
median over rounds and each transport's ratio to TCP loopback (higher is better). A
datagram or seqpacket message cannot exceed SO_SNDBUF - 32 bytes: the bench measures that
limit on this machine, says it, and skips larger sizes for those two."""

EPILOG = """\
transports: unix-stream unix-stream-abstract socketpair unix-dgram unix-seqpacket tcp pipe
patterns:   pingpong (round trips, same payload both ways)  throughput (one way, batched)

examples:
  udskit bench --quick                         # 64 B, 4 KiB, 64 KiB; about 15 s
  udskit bench                                 # 1 B .. 1 MiB, 1 s per cell; about 2 min
  udskit bench --sizes 64,4K,1M -t unix-stream -t tcp --duration 2
  udskit bench --quick --pin                   # client on one CPU, server on another
  udskit bench --quick --json bench.json --chart bench.png

--json FILE ('-' for stdout instead of the table) writes:
  {"machine":  {"kernel", "arch", "cpu_model", "cpus", "cpus_usable", "loadavg_at_start",
                "python", "udskit", "so_sndbuf_default", "wmem_default", "wmem_max",
                "max_dgram_qlen", "message_caps": {"unix-dgram": BYTES, "unix-seqpacket": BYTES}},
   "settings": {"transports", "patterns", "sizes", "duration_s", "rounds", "trial_s", "pin"},
   "results":  [{"transport": NAME, "pattern": "pingpong"|"throughput", "size": BYTES,
                 "p50_us", "p99_us", "p999_us",   # round trip in µs; null for throughput
                 "mb_s", "msgs_s",                # 10^6 bytes/s, sends/s; null for pingpong
                 "vs_tcp",                        # ratio to TCP, higher is better; null if no TCP
                 "samples", "rounds"}, ...],      # round trips or messages counted; rounds
   "skipped":  [{"transport", "size", "reason"}, ...]}   # sizes over a message limit

--chart FILE.png needs matplotlib: pip install 'udskit[charts]'.

exit statuses: 0 done, 1 a trial failed (the message says which), 2 bad arguments,
130 Ctrl-C, 143 SIGTERM (the peer processes and socket files are gone either way)."""


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="latency and throughput: unix sockets vs TCP loopback vs pipes",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="64 B, 4 KiB and 64 KiB at 0.3 s per cell: under a minute",
    )
    parser.add_argument(
        "-t",
        "--transport",
        action="append",
        choices=TRANSPORT_NAMES,
        metavar="NAME",
        help="run only this transport (repeatable; default: all; tcp is always added "
        "for the ratios unless --no-tcp-baseline)",
    )
    parser.add_argument(
        "--no-tcp-baseline",
        action="store_true",
        help="do not add tcp when -t leaves it out (no ratios then)",
    )
    parser.add_argument(
        "-p",
        "--pattern",
        action="append",
        choices=PATTERN_NAMES,
        metavar="NAME",
        help="pingpong or throughput (repeatable; default: both)",
    )
    parser.add_argument(
        "--sizes",
        metavar="LIST",
        help="message sizes, like 1,64,4K,1M (K, M = 1024, 1024²; default: "
        "1,64,512,4K,16K,64K,256K,1M; with --quick 64,4K,64K)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        metavar="SECONDS",
        help="time per transport and size, over all rounds (default 1; --quick 0.3); "
        "however short, a trial measures at least one round trip or one whole message",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        metavar="N",
        help="rounds per transport and size; the median is reported (default 3)",
    )
    parser.add_argument(
        "--pin",
        nargs="?",
        const="auto",
        metavar="CPU,CPU",
        help="pin the measuring and the peer process to two CPUs (default: the first two "
        "this process may use)",
    )
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON ('-': stdout)")
    parser.add_argument("--chart", type=Path, metavar="FILE.png", help="draw a PNG chart")
    parser.add_argument(
        "--dir",
        type=Path,
        metavar="DIR",
        help="where the socket files go (default: a fresh directory under /tmp, removed after)",
    )
    parser.set_defaults(handler=handle)


def _pin(text: str | None) -> tuple[int, int] | None:
    import os

    from udskit.errors import UsageError

    if text is None:
        return None
    usable = sorted(os.sched_getaffinity(0))
    if text == "auto":
        if len(usable) < 2:
            raise UsageError(
                f"--pin needs two CPUs and this process may use only {usable}; "
                f"give --pin {usable[0]},{usable[0]} to share one"
            )
        return (usable[0], usable[1])
    parts = text.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise UsageError(f"--pin {text!r}: give two CPU numbers like 0,1")
    pin = (int(parts[0]), int(parts[1]))
    for cpu in pin:
        if cpu not in usable:
            raise UsageError(f"--pin: CPU {cpu} is not one this process may use: {usable}")
    return pin


def build_plan(args: argparse.Namespace) -> BenchPlan:
    from udskit.bench.plan import (
        DEFAULT_DURATION,
        DEFAULT_ROUNDS,
        DEFAULT_SIZES,
        QUICK_DURATION,
        QUICK_SIZES,
        BenchPlan,
        parse_sizes,
    )
    from udskit.bench.results import Pattern, Transport

    names = list(dict.fromkeys(args.transport or TRANSPORT_NAMES))
    if "tcp" not in names and not args.no_tcp_baseline:
        names.append("tcp")
    transports = tuple(t for t in Transport if t.value in names)
    patterns = tuple(p for p in Pattern if p.value in (args.pattern or PATTERN_NAMES))
    if args.sizes is not None:
        sizes = parse_sizes(args.sizes)
    else:
        sizes = QUICK_SIZES if args.quick else DEFAULT_SIZES
    if args.duration is not None:
        duration = args.duration
    else:
        duration = QUICK_DURATION if args.quick else DEFAULT_DURATION
    rounds = args.rounds if args.rounds is not None else DEFAULT_ROUNDS
    return BenchPlan(transports, patterns, sizes, duration, rounds, _pin(args.pin))


def _check_writable(path: Path, flag: str) -> None:
    import os

    from udskit.errors import UsageError

    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a directory; give a file name")
    if not parent.is_dir():
        raise UsageError(f"{flag} {path}: directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: cannot write in {parent}; pick another place")


def handle(args: argparse.Namespace, env: Env) -> int:
    import json
    import shutil

    from udskit.bench.chart import require_charts, write_chart
    from udskit.bench.report import render

    plan = build_plan(args)
    if args.chart is not None:
        require_charts()
        _check_writable(args.chart, "--chart")
    if args.json not in (None, "-"):
        _check_writable(Path(args.json), "--json")
    report = _run_with_progress(plan, args.dir, env)
    if args.json == "-":
        env.write((json.dumps(report.to_json(), indent=2) + "\n").encode())
    else:
        width = shutil.get_terminal_size((100, 24)).columns if env.stdout_isatty else 100
        env.write(render(report, width=width, color=env.stdout_isatty).encode())
    if args.json not in (None, "-"):
        Path(args.json).write_text(json.dumps(report.to_json(), indent=2) + "\n")
        env.err(f"wrote {args.json}")
    if args.chart is not None:
        write_chart(report, args.chart)
        env.err(f"wrote {args.chart}")
    return ExitStatus.OK


def _run_with_progress(plan: BenchPlan, sockdir: Path | None, env: Env) -> BenchReport:
    """Run the plan with a progress bar on stderr when it is a terminal.

    The bar is refreshed by hand after each trial rather than by rich's refresh
    thread: the runner forks, and a fork while another thread holds a lock can leave
    the child stuck on it.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from udskit.bench.plan import Trial, format_size
    from udskit.bench.runner import run_bench

    console = Console(file=env.stderr)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        auto_refresh=False,
        transient=True,
        disable=not env.stderr_isatty,
    ) as progress:
        task = progress.add_task("measuring the datagram limit", total=None)
        progress.refresh()

        def advance(trial: Trial, done: int, total: int) -> None:
            what = f"{trial.pattern.value} {format_size(trial.size)} {trial.transport.value}"
            progress.update(task, completed=done, total=total, description=f"{what:<36}")
            progress.refresh()

        return run_bench(plan, sockdir=sockdir, on_trial=advance)


def demo(tour: Tour) -> None:
    """A very short bench (about 10 s) and its chart in tour.outdir."""
    from udskit.bench.chart import INSTALL_HINT, charts_available

    tour.section("bench: unix sockets vs TCP loopback vs pipes")
    tour.say("A very short run (--quick, 0.1 s per transport and size); numbers on a busy")
    tour.say("machine are noisy: run `udskit bench` for the full sizes and longer rounds.")
    data = tour.outdir / "bench.json"
    args = ["bench", "--quick", "--duration", "0.1", "--json", str(data)]
    chart = tour.outdir / "bench.png"
    if charts_available():
        args += ["--chart", str(chart)]
    tour.show(*args, timeout=120)
    if charts_available():
        tour.say(f"chart: {chart} (latency and throughput against size, per transport)")
    else:
        tour.say(f"no chart: matplotlib is not installed; {INSTALL_HINT}")
    tour.say(f"results as JSON: {data}")
