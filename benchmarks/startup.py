"""How long `udskit --help` takes to start, next to the bare interpreter and socat -h.

Run: .venv/bin/python benchmarks/startup.py [--runs N]
The goal is under 150 ms for `udskit --help`; Python's own start is the floor.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

UDSKIT = str(Path(sys.executable).with_name("udskit"))


def median_ms(argv: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    cases = {
        "python3 -c pass": [sys.executable, "-c", "pass"],
        "udskit --help": [UDSKIT, "--help"],
        "udskit listen --help": [UDSKIT, "listen", "--help"],
    }
    if shutil.which("socat"):
        cases["socat -h"] = ["socat", "-h"]
    results: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(3):  # alternate the tools so machine noise hits them alike
        for name, argv in cases.items():
            results[name].append(median_ms(argv, args.runs))
    floor = statistics.median(results["python3 -c pass"])
    print(f"{'command':<24}{'median ms':>10}{'x python':>10}")
    for name, values in results.items():
        ms = statistics.median(values)
        print(f"{name:<24}{ms:>10.1f}{ms / floor:>10.2f}")
    help_ms = statistics.median(results["udskit --help"])
    print(
        f"goal: udskit --help < 150 ms: {'met' if help_ms < 150 else 'NOT met'} ({help_ms:.0f} ms)"
    )


if __name__ == "__main__":
    main()
