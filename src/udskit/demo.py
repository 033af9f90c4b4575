"""I/O: the guided tour (`udskit demo`), run on real sockets from nothing.

Every capability adds a section: a function `demo(tour)` in its command module
(`udskit.cli.<name>`). A section shows real commands and their real output; files a
person may want to open afterwards (captures, charts) go to `tour.outdir`, which stays.
"""

from __future__ import annotations

import importlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TextIO, final

from udskit.address import parse_address
from udskit.errors import UsageError
from udskit.probe import is_bound

#: The sections in order; each names the module whose `demo(tour)` runs.
SECTIONS = ("talk", "relay", "dump", "ls", "doctor", "bench", "activate")


@final
class Tour:
    """Helpers for a demo section: run udskit, show what it printed, clean up after."""

    def __init__(self, out: TextIO, outdir: Path) -> None:
        self.out = out
        self.outdir = outdir
        # Short and private: socket paths must fit in 107 bytes.
        self.workdir = Path(tempfile.mkdtemp(prefix="udskit-demo-", dir="/tmp"))
        self._background: list[subprocess.Popen[bytes]] = []

    def section(self, title: str) -> None:
        self.out.write(f"\n== {title}\n")
        self.out.flush()

    def say(self, text: str) -> None:
        self.out.write(f"   {text}\n")
        self.out.flush()

    def path(self, name: str) -> str:
        return str(self.workdir / name)

    def show(
        self, *args: str, input: bytes | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[bytes]:
        """Run `udskit ARGS`, print the command line and what it printed."""
        shown = " ".join(shlex.quote(a) for a in args)
        if input is not None:
            text = input.decode(errors="replace").replace("\\", "\\\\").replace("\n", "\\n")
            shown = f"printf {shlex.quote(text)} | udskit {shown}"
        else:
            shown = f"udskit {shown}"
        self.out.write(f"   $ {shown}\n")
        result = subprocess.run(
            [sys.executable, "-m", "udskit", *args],
            input=input,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        for stream in (result.stdout, result.stderr):
            for line in stream.decode(errors="replace").splitlines():
                self.out.write(f"     {line}\n")
        self.out.flush()
        if check and result.returncode != 0:
            raise RuntimeError(f"demo step failed: udskit {shown} exited {result.returncode}")
        return result

    def spawn(
        self, *args: str, wait_for: str | None = None, listening: bool | None = None
    ) -> subprocess.Popen[bytes]:
        """Start `udskit ARGS` in the background (stopped when the tour ends)."""
        self.out.write(f"   $ udskit {' '.join(shlex.quote(a) for a in args)} &\n")
        proc = subprocess.Popen(
            [sys.executable, "-m", "udskit", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._background.append(proc)
        if wait_for is not None:
            self.wait_for(wait_for, listening=listening, proc=proc)
        return proc

    def wait_for(
        self,
        address: str,
        *,
        listening: bool | None = None,
        proc: subprocess.Popen[bytes] | None = None,
        timeout: float = 10.0,
    ) -> None:
        addr = parse_address(address)
        deadline = time.monotonic() + timeout
        while not is_bound(addr, listening=listening):
            if proc is not None and proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"demo server exited early: {err.strip()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"demo server did not bind {address} in {timeout}s")
            time.sleep(0.01)

    def stop(self, proc: subprocess.Popen[bytes]) -> tuple[bytes, bytes]:
        """Stop a background process with SIGTERM (cleanup runs), return its output."""
        if proc.poll() is None:
            proc.terminate()
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        return out, err

    def close(self) -> None:
        for proc in self._background:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Tour:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def section_functions(only: Sequence[str] = ()) -> list[tuple[str, Callable[[Tour], None]]]:
    found: list[tuple[str, Callable[[Tour], None]]] = []
    for name in SECTIONS:
        if only and name not in only:
            continue
        module = importlib.import_module(f"udskit.cli.{name}")
        func = getattr(module, "demo", None)
        if func is not None:
            found.append((name, func))
    return found


def run_tour(out: TextIO, outdir: Path, only: Sequence[str] = ()) -> int:
    """Run every section; returns how many ran. Raises on the first failing step, and
    UsageError when `outdir` cannot be made."""
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise UsageError(
            f"--outdir {outdir}: cannot create it ({reason.lower()}): pick a directory "
            "you may write to"
        ) from None
    sections = section_functions(only)
    with Tour(out, outdir) as tour:
        for _name, func in sections:
            func(tour)
    out.write(f"\nDone: {len(sections)} sections. Files kept in {outdir}{os.sep}\n")
    return len(sections)
