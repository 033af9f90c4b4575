"""Relay throughput and request rate: udskit relay vs socat vs a direct connection.

Run on its own: `.venv/bin/python benchmarks/relay.py` (about 2-3 minutes; `--quick` for
a smaller run). Every round runs each contender once, in turn, so the noise of a shared
machine spreads evenly; the table shows medians and the ratios the goals speak of:

* bulk: BYTES through one connection to a sink server that counts them (Python, 1 MiB
  buffers, so the sink is not the bottleneck); GB/s.
* redis: `redis-benchmark -t ping,set,get` with -P 1 and -P 16 against a real
  redis-server on a unix socket in a temporary directory; requests per second.

socat runs as `socat UNIX-LISTEN:front,fork,backlog=128 UNIX-CONNECT:back`: its default
backlog of 5 makes redis-benchmark's 50 simultaneous connects fail with EAGAIN.
Every process started here is stopped by PID.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from udskit.address import parse_address
from udskit.probe import is_bound

SINK = r"""
import socket, sys
srv = socket.socket(socket.AF_UNIX)
srv.bind(sys.argv[1]); srv.listen(128)
buf = bytearray(1 << 20)
while True:
    conn, _ = srv.accept()
    total = 0
    while n := conn.recv_into(buf):
        total += n
    conn.sendall(total.to_bytes(8, "big"))
    conn.close()
"""

CONTENDERS = ("udskit", "socat", "direct")


def wait_bound(path: str, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    address = parse_address(path)
    deadline = time.monotonic() + timeout
    while not is_bound(address, listening=True):
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args!r} exited early")
        if time.monotonic() > deadline:
            raise SystemExit(f"{proc.args!r} did not listen on {path}")
        time.sleep(0.01)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def front_for(name: str, backend: str, workdir: Path, extra: list[str]) -> Iterator[str]:
    """The address clients use: a relay's front socket, or the backend itself."""
    if name == "direct":
        yield backend
        return
    front = str(workdir / f"front-{name}.sock")
    if name.startswith("udskit"):
        argv = [sys.executable, "-m", "udskit", "relay", *extra]
        argv += [f"unix-listen:{front}", f"unix:{backend}"]
    else:
        argv = ["socat", f"UNIX-LISTEN:{front},fork,backlog=128", f"UNIX-CONNECT:{backend}"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        wait_bound(front, proc)
        yield front
    finally:
        stop(proc)
        if name == "socat" and os.path.exists(front):
            os.unlink(front)  # socat leaves it behind after SIGTERM with fork


def bulk_once(address: str, total: int) -> float:
    """Seconds to push `total` bytes through `address` and get the sink's count back."""
    chunk = memoryview(bytes(1 << 20))
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(address)
        start = time.perf_counter()
        left = total
        while left > 0:
            left -= sock.send(chunk[: min(left, len(chunk))])
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while len(reply) < 8:
            part = sock.recv(8 - len(reply))
            if not part:
                raise SystemExit("the sink closed without a count")
            reply += part
        elapsed = time.perf_counter() - start
    got = int.from_bytes(reply, "big")
    if got != total:
        raise SystemExit(f"lost bytes: sent {total}, the sink counted {got}")
    return elapsed


def redis_once(address: str, pipeline: int, requests: int) -> dict[str, float]:
    out = subprocess.run(
        [
            "redis-benchmark",
            "-s",
            address,
            "-t",
            "ping,set,get",
            "-P",
            str(pipeline),
            "-n",
            str(requests),
            "-c",
            "50",
            "--csv",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    rates: dict[str, float] = {}
    for line in out.splitlines():
        cells = [c.strip('"') for c in line.split(",")]
        if len(cells) >= 2 and cells[0] != "test":
            rates[cells[0]] = float(cells[1])
    if not rates:
        raise SystemExit(f"no rates from redis-benchmark: {out!r}")
    return rates


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bytes", type=int, default=1 << 30, help="bulk bytes per run")
    parser.add_argument("--requests", type=int, default=50_000, help="redis requests at -P 1")
    parser.add_argument("--quick", action="store_true", help="1 round, 256 MiB, 20k requests")
    parser.add_argument("--skip-redis", action="store_true")
    parser.add_argument("--skip-bulk", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.bytes, args.requests = 1, 256 << 20, 20_000
    for tool in ("socat", "redis-server", "redis-benchmark"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (make peers)")

    workdir = Path(tempfile.mkdtemp(prefix="udsk-bench-", dir="/tmp"))
    procs: list[subprocess.Popen[bytes]] = []
    bulk: dict[str, list[float]] = {}
    redis: dict[tuple[str, int, str], list[float]] = {}
    bulk_contenders = ("udskit", "udskit-copy", "socat", "direct")
    try:
        sink_path = str(workdir / "sink.sock")
        sink = subprocess.Popen([sys.executable, "-c", SINK, sink_path])
        procs.append(sink)
        wait_bound(sink_path, sink)
        redis_path = str(workdir / "redis.sock")
        server = subprocess.Popen(
            [
                "redis-server",
                "--port",
                "0",
                "--unixsocket",
                redis_path,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
            ],
            stdout=subprocess.DEVNULL,
        )
        procs.append(server)
        wait_bound(redis_path, server)

        for round_no in range(1, args.rounds + 1):
            print(f"round {round_no}/{args.rounds}", file=sys.stderr, flush=True)
            if not args.skip_bulk:
                for name in bulk_contenders:
                    extra = ["--no-splice"] if name == "udskit-copy" else []
                    with front_for(name, sink_path, workdir, extra) as address:
                        seconds = bulk_once(address, args.bytes)
                    bulk.setdefault(name, []).append(args.bytes / seconds / 1e9)
                    print(f"  bulk {name}: {bulk[name][-1]:.2f} GB/s", file=sys.stderr)
            if not args.skip_redis:
                for pipeline, requests in ((1, args.requests), (16, args.requests * 4)):
                    for name in CONTENDERS:
                        with front_for(name, redis_path, workdir, []) as address:
                            rates = redis_once(address, pipeline, requests)
                        for test, rate in rates.items():
                            redis.setdefault((name, pipeline, test), []).append(rate)
                        shown = " ".join(f"{t}={r:,.0f}" for t, r in rates.items())
                        print(f"  redis -P {pipeline} {name}: {shown}", file=sys.stderr)
    finally:
        for proc in procs:
            stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)

    report(bulk, redis, args)


def report(
    bulk: dict[str, list[float]],
    redis: dict[tuple[str, int, str], list[float]],
    args: argparse.Namespace,
) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if bulk:
        direct = median(bulk["direct"])
        socat = median(bulk["socat"])
        table = Table(title=f"bulk, {args.bytes / 2**30:g} GiB per run, median of {args.rounds}")
        for col in ("contender", "GB/s", "x socat", "of direct"):
            table.add_column(col, justify="right")
        for name, values in bulk.items():
            rate = median(values)
            table.add_row(name, f"{rate:.2f}", f"{rate / socat:.2f}x", f"{rate / direct:.0%}")
        console.print(table)
    if redis:
        table = Table(title=f"redis-benchmark requests/s, 50 clients, median of {args.rounds}")
        for col in ("-P", "test", "direct", "socat", "udskit", "udskit/socat", "udskit/direct"):
            table.add_column(col, justify="right")
        summary: dict[int, list[float]] = {}
        keys = sorted({(p, t) for (_n, p, t) in redis})
        for pipeline, test in keys:
            ours, theirs, direct = (
                median(redis.get((name, pipeline, test), []))
                for name in ("udskit", "socat", "direct")
            )
            summary.setdefault(pipeline, []).append(ours / theirs)
            table.add_row(
                str(pipeline),
                test,
                f"{direct:,.0f}",
                f"{theirs:,.0f} ({theirs / direct:.0%})",
                f"{ours:,.0f} ({ours / direct:.0%})",
                f"{ours / theirs:.2f}x",
                f"{ours / direct:.0%}",
            )
        console.print(table)
        for pipeline, ratios in sorted(summary.items()):
            mean = statistics.geometric_mean(ratios)
            console.print(f"-P {pipeline}: udskit relay = {mean:.2f}x socat (geometric mean)")
    if bulk:
        ours, socat, direct = median(bulk["udskit"]), median(bulk["socat"]), median(bulk["direct"])
        goal = "met" if ours >= 3 * socat and ours >= direct / 2 else "NOT met"
        console.print(
            f"bulk: udskit relay = {ours / socat:.2f}x socat, {ours / direct:.0%} of direct "
            f"(goal: >= 3x socat and >= 50% of direct: {goal})"
        )


if __name__ == "__main__":
    main()
