"""How long is a service down after a `kill -9` of `udskit dump`? With the watchdog,
from the kill until the original socket file is back at PATH; the reference is what a
user had before: running `udskit dump --restore PATH` by hand (its run time alone, not
counting the human who notices and types it).

    .venv/bin/python benchmarks/dump_watchdog.py [--rounds 10]

Each round starts a socat echo server and `udskit dump --engine proxy` on it, waits
until the watchdog has set its name (it is up), kills the dump with SIGKILL and polls
the path's inode every 0.5 ms. Prints the median and the worst round, and the ratio of
the median to the median run time of `udskit dump --restore` (`--no-watchdog` rounds).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

UDSKIT = [sys.executable, "-m", "udskit"]


def _wait(predicate: object, what: str, timeout: float = 20.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.0005)


def _watchdog_up(dump: int) -> bool:
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        if b"(udskit-watchdog)" in raw and int(raw[raw.rindex(b")") + 2 :].split()[1]) == dump:
            return True
    return False


def one_round(directory: Path, watchdog: bool) -> float:
    path = directory / "echo.sock"
    server = subprocess.Popen(["socat", f"UNIX-LISTEN:{path},fork", "EXEC:cat"])
    try:
        _wait(path.exists, "socat")
        original = os.lstat(path).st_ino
        args = [] if watchdog else ["--no-watchdog"]
        dump = subprocess.Popen(
            [*UDSKIT, "dump", "--engine", "proxy", *args, str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            _wait(lambda: os.lstat(path).st_ino != original, "the takeover")
            if watchdog:
                _wait(lambda: _watchdog_up(dump.pid), "the watchdog")
                time.sleep(0.5)  # its imports are done: the steady state is measured
            os.kill(dump.pid, signal.SIGKILL)
            killed = time.monotonic()
            if watchdog:
                _wait(lambda: os.lstat(path).st_ino == original, "the watchdog's restore")
                return time.monotonic() - killed
            dump.wait()
            started = time.monotonic()
            subprocess.run(
                [*UDSKIT, "dump", "--restore", str(path)], check=True, capture_output=True
            )
            return time.monotonic() - started
        finally:
            if dump.poll() is None:
                dump.kill()
            dump.wait()
    finally:
        server.kill()
        server.wait()
        path.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    if shutil.which("socat") is None:
        raise SystemExit("socat is needed")
    directory = Path(tempfile.mkdtemp(prefix="udsk-wd-"))
    try:
        watched = sorted(one_round(directory, True) for _ in range(args.rounds))
        manual = sorted(one_round(directory, False) for _ in range(args.rounds))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    w, m = watched[len(watched) // 2], manual[len(manual) // 2]
    print(
        f"watchdog: kill -9 to original back: median {w * 1000:.1f} ms, "
        f"worst {watched[-1] * 1000:.1f} ms"
    )
    print(f"udskit dump --restore by hand (run time only): median {m * 1000:.1f} ms")
    print(f"ratio watchdog / manual restore: {w / m:.2f}")


if __name__ == "__main__":
    main()
