"""I/O: what a command talks to (stdio, tty-ness) and how it ends (exit statuses).

Commands receive an `Env` instead of reaching for sys.stdout, so tests can run most of
the command line in-process with byte buffers.
"""

from __future__ import annotations

import enum
import io
import sys

from udskit.safetext import safe_line

TYPE_CHECKING = False  # importing typing costs ~9 ms before `udskit ls` can fork its scan
if TYPE_CHECKING:
    from typing import BinaryIO, TextIO


class ExitStatus(enum.IntEnum):
    """Exit statuses of every udskit command (also listed in `udskit --help`)."""

    OK = 0
    FAILED = 1  # a socket operation failed; the message says which and why
    USAGE = 2  # bad arguments or a bad address; nothing was done
    INTERRUPTED = 130  # Ctrl-C (SIGINT); what was moved has been put back
    TERMINATED = 143  # SIGTERM; likewise cleaned up


class Env:
    """Where a command reads and writes. A plain class, not a dataclass: this module is
    imported on every run, before `udskit ls` forks its scan, and dataclasses costs ~6 ms."""

    __slots__ = ("stderr", "stderr_isatty", "stdin", "stdout", "stdout_isatty")

    def __init__(
        self,
        stdin: BinaryIO,
        stdout: BinaryIO,
        stderr: TextIO,
        stdout_isatty: bool = False,
        stderr_isatty: bool = False,
    ) -> None:
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.stdout_isatty = stdout_isatty
        self.stderr_isatty = stderr_isatty

    @classmethod
    def from_process(cls) -> Env:
        return cls(
            stdin=sys.stdin.buffer,
            stdout=sys.stdout.buffer,
            stderr=sys.stderr,
            stdout_isatty=sys.stdout.isatty(),
            stderr_isatty=sys.stderr.isatty(),
        )

    @classmethod
    def in_memory(cls, stdin: bytes = b"") -> Env:
        """An Env over byte buffers, for tests: read `stdout.getvalue()` afterwards."""
        return cls(stdin=io.BytesIO(stdin), stdout=io.BytesIO(), stderr=io.StringIO())

    def write(self, data: bytes) -> None:
        """Raw bytes to stdout, flushed: received data must show at once, like nc."""
        self.stdout.write(data)
        self.stdout.flush()

    def out(self, line: str) -> None:
        """One line for a person: whatever a peer put in it cannot reach the terminal
        raw (`safe_line`, the last guard behind each printer's escaping)."""
        self.write(safe_line(line).encode("utf-8", errors="surrogateescape") + b"\n")

    def err(self, line: str) -> None:
        self.stderr.write(safe_line(line) + "\n")
        self.stderr.flush()
