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
import os
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


def run_once(argv: Sequence[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


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
    with socketpairs(args.pairs) as holders:
        # Sanity: udskit must really list every socket (and name the holders).
        out = subprocess.run(tools["udskit ls -p --json"], capture_output=True, check=True).stdout
        listed = out.count(b'"inode"')
        held = sum(out.count(f'"pid": {pid},'.encode()) for pid in holders)
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
                times[name].append(run_once(tools[name]))
            if time.monotonic() > deadline:
                print(f"time budget reached after {round_number + 1} rounds")
                break

    base = statistics.median(times["ss -xp"]) if "ss -xp" in times else None
    print()
    print(f"{'tool':<22} {'median s':>9} {'min s':>8} {'max s':>8} {'vs ss -xp':>10}")
    for name, samples in times.items():
        median = statistics.median(samples)
        ratio = f"{median / base:.2f}x" if base else "-"
        print(f"{name:<22} {median:>9.3f} {min(samples):>8.3f} {max(samples):>8.3f} {ratio:>10}")
    if base:
        ours = statistics.median(times["udskit ls -p --json"]) / base
        verdict = "meets" if ours <= 1.5 else "MISSES"
        print(f"\nudskit ls -p --json / ss -xp = {ours:.2f} ({verdict} the 1.5x goal)")
        if "lsof -U" in times:
            lsof = statistics.median(times["lsof -U"]) / base
            print(f"lsof -U / ss -xp = {lsof:.2f}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "0")
    sys.exit(main())
