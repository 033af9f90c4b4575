"""Throughput of `udskit get` against socat moving the same file over an abstract socket.

    .venv/bin/python benchmarks/files.py [--size 1G] [--rounds 3] [--dir /tmp]

udskit: a `udskit serve-files` server outside the timing (it is a long-running
server), then `udskit get @NAME big out` timed from its start to its exit, which
includes its Python start-up, the SHA-256 of both ends and the rename.
socat: `socat -u ABSTRACT-LISTEN:NAME OPEN:out,creat` started first, then
`socat -u OPEN:big ABSTRACT-CONNECT:NAME` timed from its start until both have exited
(socat's default 8 KiB buffer: the tool as people run it). CPU time (user + system of
both ends) is printed too: on a shared machine it varies less than the wall clock.
The two alternate, round
after round, on the same file in the page cache; the output file is deleted after
each run, and its size checked. Prints the medians and the ratio (goal: >= 0.8x).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

UDSKIT = [sys.executable, "-m", "udskit"]


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)


def _make_file(path: Path, size: int) -> None:
    chunk = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(size // len(chunk)):
            f.write(chunk)
        f.write(chunk[: size % len(chunk)])


def _wait_bound(name: str, timeout: float = 10.0) -> None:
    """Until @name shows in /proc/net/unix (no connection is made to find out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open("/proc/net/unix", "rb") as f:  # other programs' names need not be UTF-8
            if any(line.rstrip().endswith(b"@" + name.encode()) for line in f):
                return
        time.sleep(0.01)
    raise SystemExit(f"@{name} did not appear in {timeout}s")


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _cpu_of(pid: int) -> float:
    """utime + stime of a running process, in seconds (/proc/PID/stat fields 14, 15)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _reap(proc: subprocess.Popen[bytes]) -> float:
    """Wait for a child; its CPU time (user + system) in seconds. Fails unless it exited 0."""
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{proc.args!r} exited with {proc.returncode}")
    return usage.ru_utime + usage.ru_stime


def run_udskit(
    server: subprocess.Popen[bytes], server_name: str, big: Path, out: Path
) -> tuple[float, float]:
    """(wall seconds, CPU seconds of client and server) for one `udskit get`."""
    server_cpu = _cpu_of(server.pid)
    start = time.perf_counter()
    client = subprocess.Popen(
        [*UDSKIT, "get", f"@{server_name}", big.name, str(out)], stdin=subprocess.DEVNULL
    )
    cpu = _reap(client)
    took = time.perf_counter() - start
    return took, cpu + _cpu_of(server.pid) - server_cpu


def run_socat(big: Path, out: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of both socats) for one copy."""
    name = f"udskit-bench-socat-{uuid.uuid4().hex[:12]}"
    receiver = subprocess.Popen(
        ["socat", "-u", f"ABSTRACT-LISTEN:{name}", f"OPEN:{out},creat"],
        stdin=subprocess.DEVNULL,
    )
    try:
        _wait_bound(name)
        start = time.perf_counter()
        sender = subprocess.Popen(
            ["socat", "-u", f"OPEN:{big}", f"ABSTRACT-CONNECT:{name}"], stdin=subprocess.DEVNULL
        )
        cpu = _reap(sender) + _reap(receiver)
        return time.perf_counter() - start, cpu
    finally:
        _kill(receiver)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=_size, default=1 << 30, help="file size (default 1G)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default="/tmp", help="where the temporary files go")
    args = parser.parse_args()
    if shutil.which("socat") is None:
        raise SystemExit("socat is needed (apt-get install socat)")
    work = Path(tempfile.mkdtemp(prefix="udskit-bench-files-", dir=args.dir))
    root = work / "root"
    root.mkdir()
    big = root / "big"
    out = work / "out"
    server_name = f"udskit-bench-files-{uuid.uuid4().hex[:12]}"
    server: subprocess.Popen[bytes] | None = None
    try:
        _make_file(big, args.size)
        server = subprocess.Popen(
            [*UDSKIT, "serve-files", f"@{server_name}", "--root", str(root), "--quiet"],
            stdin=subprocess.DEVNULL,
        )
        _wait_bound(server_name)
        times: dict[str, list[float]] = {"udskit": [], "socat": []}
        cpus: dict[str, list[float]] = {"udskit": [], "socat": []}
        for round_no in range(args.rounds):
            order = ("udskit", "socat") if round_no % 2 == 0 else ("socat", "udskit")
            for tool in order:
                took, cpu = (
                    run_udskit(server, server_name, big, out)
                    if tool == "udskit"
                    else run_socat(big, out)
                )
                size = out.stat().st_size
                out.unlink()
                if size != args.size:
                    raise SystemExit(f"{tool} wrote {size} bytes, not {args.size}")
                times[tool].append(took)
                cpus[tool].append(cpu)
                print(
                    f"round {round_no + 1} {tool:7} {args.size / took / 1e6:8.0f} MB/s"
                    f"  {cpu:6.2f} s CPU",
                    flush=True,
                )
        rates = {tool: args.size / statistics.median(t) / 1e6 for tool, t in times.items()}
        cpu_s = {tool: statistics.median(c) for tool, c in cpus.items()}
        print(f"udskit get   median {rates['udskit']:8.0f} MB/s  {cpu_s['udskit']:6.2f} s CPU")
        print(f"socat        median {rates['socat']:8.0f} MB/s  {cpu_s['socat']:6.2f} s CPU")
        print(f"ratio udskit/socat: {rates['udskit'] / rates['socat']:.2f}x (goal >= 0.8x)")
        print(f"CPU time udskit/socat: {cpu_s['udskit'] / cpu_s['socat']:.2f}x")
    finally:
        if server is not None:
            _kill(server)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
