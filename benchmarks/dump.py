"""What capturing costs: redis-benchmark through `udskit dump -w` vs the socat+tcpdump recipe.

Run on its own: `.venv/bin/python benchmarks/dump.py` (about 2 minutes; `--quick` for
a smaller run). A real redis-server listens on a unix socket in a temporary directory;
`redis-benchmark -t set,get` (50 clients, -P 1 and -P 16) measures requests per second:

* direct: straight to redis's socket;
* udskit dump -w: `udskit dump -w FILE.pcapng SOCK` takes over redis's own socket
  path (as a user would run it), and redis-benchmark talks to the same path;
* socat+tcpdump: the recipe of seed 002 (the usual "no tcpdump for unix sockets"
  workaround): `socat UNIX-LISTEN:front,fork TCP:127.0.0.1:PORT`,
  `socat TCP-LISTEN:PORT,fork UNIX-CONNECT:redis.sock` and `tcpdump -i lo -w FILE
  tcp port PORT` (tshark -i lo -w if tcpdump is missing);
* socat alone: `socat UNIX-LISTEN:front,fork UNIX-CONNECT:redis.sock`, no capture at
  all, for scale (the issue quotes it at about 36% of direct at -P 1).
* udskit dump --engine ebpf -w: the eBPF engine (root only) watches redis's
  syscalls and writes the same pcapng; redis-benchmark talks to redis directly.
  Left out, saying why, where eBPF cannot run. Anything the capture lost (ring
  buffer drops, a writer that fell behind) is printed under the table.
* ebpf, idle: the same engine capturing a socket nobody uses, while redis-benchmark
  talks to redis: the cost of the tracepoints alone (each of redis's syscalls enters
  the programs and is filtered out in the kernel), the floor under the ebpf column.

socat listens with backlog=128 (its default of 5 makes 50 simultaneous connects fail).
Every round runs each contender once, in turn, so the noise of a shared machine spreads
evenly; the table shows medians and ratios to direct. Every process started here is
stopped by PID; the capture files are checked to be non-empty.
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

CONTENDERS = ["direct", "udskit dump -w", "socat+tcpdump", "socat alone"]
EBPF = "dump --engine ebpf"
#: The eBPF engine attached to a socket redis does not use: every syscall of redis
#: still enters the programs, which find no socket of interest and record nothing.
#: The floor of any capture built on syscall tracepoints, on this machine.
EBPF_IDLE = "ebpf, idle"
UDSKIT_DUMP = [sys.executable, "-m", "udskit", "dump"]
#: What the eBPF captures said about losses, one line per run that lost anything.
LOSSES: list[str] = []
TESTS = ("SET", "GET")


def wait_until(what: str, predicate: object, proc: subprocess.Popen[bytes] | None) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + 15
    while not predicate():
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise SystemExit(f"{proc.args!r} exited early: {err.strip()}")
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.01)


def start(*argv: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def stop(*procs: subprocess.Popen[bytes], signum: int = signal.SIGTERM) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signum)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(path: str) -> bool:
    return is_bound(parse_address(path), listening=True)


@contextmanager
def through(contender: str, workdir: Path, redis_sock: str) -> Iterator[str]:
    """Set up a contender; yield the socket path redis-benchmark should use."""
    if contender == "direct":
        yield redis_sock
        return
    if contender == "udskit dump -w":
        before = os.lstat(redis_sock).st_ino
        dump = start(
            *UDSKIT_DUMP, "--engine", "proxy", "-w", str(workdir / "dump.pcapng"), redis_sock
        )
        wait_until("udskit dump", lambda: os.lstat(redis_sock).st_ino != before, dump)
        try:
            yield redis_sock
        finally:
            stop(dump, signum=signal.SIGINT)
            if os.lstat(redis_sock).st_ino != before:
                raise SystemExit("udskit dump did not put redis's socket back")
            assert (workdir / "dump.pcapng").stat().st_size > 0
        return
    if contender in (EBPF, EBPF_IDLE):
        pcap = workdir / "ebpf.pcapng"
        watched = redis_sock
        idle = None
        if contender == EBPF_IDLE:
            watched = str(workdir / "idle.sock")
            idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            idle.bind(watched)
            idle.listen()
        dump = subprocess.Popen(
            [*UDSKIT_DUMP, "--engine", "ebpf", "-w", str(pcap), watched],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert dump.stderr is not None
        said: list[str] = []
        while not said or "Ctrl-C to stop" not in said[-1]:
            line = dump.stderr.readline().decode(errors="replace")
            if not line:
                stop(dump)
                raise SystemExit(f"udskit dump --engine ebpf did not start: {said}")
            said.append(line)
        try:
            yield redis_sock
        finally:
            dump.send_signal(signal.SIGINT)
            rest = dump.stderr.read().decode(errors="replace")
            stop(dump)
            LOSSES.extend(
                line for line in rest.splitlines() if "dropped" in line or "WARNING" in line
            )
            assert pcap.stat().st_size > 0
            if idle is not None:
                idle.close()
                os.unlink(watched)
        return
    front = str(workdir / "front.sock")
    listen = f"UNIX-LISTEN:{front},fork,backlog=128"
    if contender == "socat alone":
        relay = start("socat", listen, f"UNIX-CONNECT:{redis_sock}")
        wait_until("socat", lambda: listening(front), relay)
        try:
            yield front
        finally:
            stop(relay)
        return
    port = free_port()
    capture = capture_command(port, workdir / "recipe.pcap")
    sniffer = start(*capture)
    # Both print "listening on"/"Capturing on" on stderr once the capture runs.
    assert sniffer.stderr is not None
    line = sniffer.stderr.readline().decode(errors="replace")
    if "listening" not in line.lower() and "capturing" not in line.lower():
        stop(sniffer)
        raise SystemExit(f"{capture[0]} did not start: {line.strip()}")
    back = start(
        "socat",
        f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,backlog=128",
        f"UNIX-CONNECT:{redis_sock}",
    )
    front_relay = start("socat", listen, f"TCP:127.0.0.1:{port}")
    wait_until("socat", lambda: listening(front), front_relay)
    try:
        yield front
    finally:
        stop(front_relay, back)
        time.sleep(0.2)  # let the sniffer see the last packets
        stop(sniffer, signum=signal.SIGINT)
        assert (workdir / "recipe.pcap").stat().st_size > 0


def capture_command(port: int, out: Path) -> list[str]:
    if shutil.which("tcpdump"):
        return ["tcpdump", "-i", "lo", "-w", str(out), "tcp", "port", str(port)]
    return ["tshark", "-i", "lo", "-w", str(out), "-f", f"tcp port {port}"]


def run_benchmark(sock: str, pipeline: int, requests: int) -> dict[str, float]:
    result = subprocess.run(
        [
            "redis-benchmark",
            "-s",
            sock,
            "-t",
            "set,get",
            "-n",
            str(requests),
            "-c",
            "50",
            "-P",
            str(pipeline),
            "--csv",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    rates: dict[str, float] = {}
    for line in result.stdout.splitlines():
        cols = [c.strip('"') for c in line.split(",")]
        if cols and cols[0] in TESTS:
            rates[cols[0]] = float(cols[1])
    if set(rates) != set(TESTS):
        raise SystemExit(f"unexpected redis-benchmark output: {result.stdout!r}")
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests and rounds")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument(
        "--only",
        action="append",
        metavar="CONTENDER",
        help="run direct and this contender only (repeatable), e.g. --only "
        f"'{EBPF}'; one of: {', '.join([*CONTENDERS[1:], EBPF, EBPF_IDLE])}",
    )
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.quick else 5)
    # Requests per run: redis-benchmark's own default (100,000) at -P 1, and ten times
    # that at -P 16, so that a run lasts about a second and measures the steady rate
    # rather than the 50 connects of its start (30,000 requests, the earlier setting,
    # lasted 0.15 s direct: short enough for the start-up to weigh several percent).
    sizes = {1: 20_000 if args.quick else 100_000, 16: 100_000 if args.quick else 1_000_000}
    for program in ("redis-server", "redis-benchmark", "socat"):
        if shutil.which(program) is None:
            raise SystemExit(f"missing {program} (run `make peers` as root)")
    sniffer = "tcpdump" if shutil.which("tcpdump") else "tshark -i lo"
    from udskit.capture.bpf_loader import BpfProgram, BpfUnavailable

    try:
        BpfProgram(lambda _raw: None).close()
        CONTENDERS.extend((EBPF, EBPF_IDLE))
    except BpfUnavailable as exc:
        print(f"no eBPF column: {exc}", file=sys.stderr)
    if args.only:
        unknown = set(args.only) - set(CONTENDERS)
        if unknown:
            raise SystemExit(f"--only: no such contender here: {', '.join(sorted(unknown))}")
        CONTENDERS[:] = ["direct", *(c for c in CONTENDERS if c in args.only)]
    workdir = Path(tempfile.mkdtemp(prefix="udsk-dumpbench-", dir="/tmp"))
    redis_sock = str(workdir / "redis.sock")
    redis = start(
        "redis-server",
        "--port",
        "0",
        "--unixsocket",
        redis_sock,
        "--save",
        "",
        "--appendonly",
        "no",
    )
    samples: dict[tuple[str, int, str], list[float]] = {}
    began = time.monotonic()
    try:
        wait_until("redis-server", lambda: listening(redis_sock), redis)
        for round_no in range(rounds):
            for pipeline, requests in sizes.items():
                for contender in CONTENDERS:
                    with through(contender, workdir, redis_sock) as sock:
                        rates = run_benchmark(sock, pipeline, requests)
                    for test, rate in rates.items():
                        samples.setdefault((contender, pipeline, test), []).append(rate)
            print(
                f"round {round_no + 1}/{rounds} done ({time.monotonic() - began:.0f} s)",
                file=sys.stderr,
            )
    finally:
        stop(redis)
        shutil.rmtree(workdir, ignore_errors=True)
    report(samples, rounds, sniffer)


def report(samples: dict[tuple[str, int, str], list[float]], rounds: int, sniffer: str) -> None:
    print(
        f"\nredis-benchmark -t set,get -c 50, requests/s, median of {rounds} rounds "
        f"(recipe sniffer: {sniffer})\n"
    )
    header = (
        f"{'contender':<18} {'-P':>3} {'SET':>11} {'GET':>11} {'SET/direct':>11} {'GET/direct':>11}"
    )
    print(header)
    print("-" * len(header))
    for pipeline in (1, 16):
        direct = {t: statistics.median(samples[("direct", pipeline, t)]) for t in TESTS}
        for contender in CONTENDERS:
            med = {t: statistics.median(samples[(contender, pipeline, t)]) for t in TESTS}
            print(
                f"{contender:<18} {pipeline:>3} {med['SET']:>11,.0f} {med['GET']:>11,.0f} "
                f"{med['SET'] / direct['SET']:>10.0%} {med['GET'] / direct['GET']:>10.0%}"
            )
    print()
    for pipeline in (1, 16):
        base = statistics.median(
            [statistics.median(samples[("direct", pipeline, t)]) for t in TESTS]
        )
        if "udskit dump -w" in CONTENDERS and "socat+tcpdump" in CONTENDERS:  # not --only
            ours = statistics.median(
                [statistics.median(samples[("udskit dump -w", pipeline, t)]) for t in TESTS]
            )
            recipe = statistics.median(
                [statistics.median(samples[("socat+tcpdump", pipeline, t)]) for t in TESTS]
            )
            goal = " (goal: >= 50%)" if pipeline == 1 else ""
            print(
                f"-P {pipeline}: udskit dump -w keeps {ours / base:.0%} of direct{goal}; "
                f"{ours / recipe:.1f}x the socat+tcpdump recipe"
            )
        if EBPF in CONTENDERS:
            ebpf = statistics.median(
                [statistics.median(samples[(EBPF, pipeline, t)]) for t in TESTS]
            )
            goal = " (goal: >= 90%)" if pipeline == 1 else ""
            print(
                f"-P {pipeline}: udskit dump --engine ebpf -w keeps {ebpf / base:.0%} "
                f"of direct{goal}"
            )
    for line in LOSSES:
        print(f"eBPF capture: {line}")


if __name__ == "__main__":
    main()
