"""Benchmark: `udskit ls -p --json` against `ss -xp` and `lsof -U` on 10,000 socketpairs.

Helper processes hold the socketpairs (20,000 sockets, 20,000 descriptors: more than
one process may hold under a default RLIMIT_NOFILE, so they are spread over as many
helpers as needed). The three tools then run alternately, round after round, each
with its output thrown away; the table shows medians and the ratio to `ss -xp`.
The goal is udskit / ss -xp <= 1.5.

    .venv/bin/python benchmarks/ls.py [--pairs 10000] [--rounds 9] [--budget 120]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

HOLDER = r"""
import os, resource, socket, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
pairs = [socket.socketpair() for _ in range(int(sys.argv[1]))]
print("ready", flush=True)
sys.stdin.read()  # until the benchmark closes our stdin (or dies)
"""


@contextmanager
def socketpairs(count: int) -> Iterator[list[int]]:
    """`count` socketpairs held by helper processes; yields their pids."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    per_process = max(1, (min(hard, 1 << 20) - 64) // 2)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        left = count
        while left > 0:
            n = min(left, per_process)
            proc = subprocess.Popen(
                [sys.executable, "-c", HOLDER, str(n)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            procs.append(proc)
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != b"ready":
                raise RuntimeError("socketpair holder failed to start")
            left -= n
        yield [p.pid for p in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()


def run_once(argv: Sequence[str]) -> tuple[float, float]:
    """Wall-clock seconds and CPU seconds (user + system) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pairs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--budget", type=float, default=120.0, help="seconds, at most")
    args = parser.parse_args(argv)

    tools: dict[str, list[str]] = {
        "udskit ls -p --json": [sys.executable, "-m", "udskit", "ls", "-p", "--json"],
        "ss -xp": ["ss", "-xp"],
        "lsof -U": ["lsof", "-U"],
    }
    for name, command in list(tools.items()):
        if command[0] != sys.executable and shutil.which(command[0]) is None:
            print(f"{name}: not installed, skipped")
            del tools[name]

    times: dict[str, list[float]] = {name: [] for name in tools}
    cpu: dict[str, list[float]] = {name: [] for name in tools}
    with socketpairs(args.pairs) as holders:
        # Sanity: udskit must really list every socket (and name the holders).
        out = subprocess.run(tools["udskit ls -p --json"], capture_output=True, check=True).stdout
        sockets = json.loads(out)
        listed = len(sockets)
        pids = set(holders)
        held = sum(1 for s in sockets if any(p["pid"] in pids for p in s["processes"]))
        print(
            f"{args.pairs} socketpairs in {len(holders)} helper process(es); "
            f"udskit listed {listed} sockets, {held} of them held by the helpers"
        )
        if held < 2 * args.pairs:
            print("error: udskit ls missed some of the helpers' sockets", file=sys.stderr)
            return 1
        deadline = time.monotonic() + args.budget
        for round_number in range(args.rounds):
            # Alternate the order too, so no tool always runs on a warm cache.
            order = list(tools) if round_number % 2 == 0 else list(reversed(tools))
            for name in order:
                wall, used = run_once(tools[name])
                times[name].append(wall)
                cpu[name].append(used)
            if time.monotonic() > deadline:
                print(f"time budget reached after {round_number + 1} rounds")
                break

    base = statistics.median(times["ss -xp"]) if "ss -xp" in times else None
    cpu_base = statistics.median(cpu["ss -xp"]) if "ss -xp" in cpu else None
    print(f"\n{len(times['ss -xp'] if base else [])} rounds; wall-clock and CPU (user+sys) seconds")
    print(
        f"{'tool':<22} {'median':>8} {'min':>7} {'max':>7} {'vs ss -xp':>10}"
        f" {'cpu median':>11} {'cpu vs ss':>10}"
    )
    for name, samples in times.items():
        median = statistics.median(samples)
        cpu_median = statistics.median(cpu[name])
        ratio = f"{median / base:.2f}x" if base else "-"
        cpu_ratio = f"{cpu_median / cpu_base:.2f}x" if cpu_base else "-"
        print(
            f"{name:<22} {median:>8.3f} {min(samples):>7.3f} {max(samples):>7.3f} {ratio:>10}"
            f" {cpu_median:>11.3f} {cpu_ratio:>10}"
        )
    if base:
        ours = statistics.median(times["udskit ls -p --json"]) / base
        verdict = "meets" if ours <= 1.5 else "MISSES"
        print(f"\nudskit ls -p --json / ss -xp = {ours:.2f} ({verdict} the 1.5x goal)")
        if "lsof -U" in times:
            lsof = statistics.median(times["lsof -U"]) / base
            print(f"lsof -U / ss -xp = {lsof:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
