"""Pure: what a bench run will do: sizes, durations, rounds and the order of trials.

The machine udskit usually runs on is shared, so a burst of someone else's work
must not land on one transport only. Each cell (pattern, size, transport) is split
into rounds, and every round runs each transport once, in an order rotated by one
each round; the report takes the median over rounds.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, final

from udskit.bench.results import Pattern, Transport
from udskit.errors import UsageError

KIB: Final = 1024
MIB: Final = 1024 * KIB

#: From one byte to 1 MiB: the sizes of small RPCs, pages, and bulk copies.
DEFAULT_SIZES: Final = (1, 64, 512, 4 * KIB, 16 * KIB, 64 * KIB, 256 * KIB, MIB)
#: The sizes the C comparison reports, and what --quick runs.
QUICK_SIZES: Final = (64, 4 * KIB, 64 * KIB)
#: Seconds per cell (all its rounds together).
DEFAULT_DURATION: Final = 1.0
QUICK_DURATION: Final = 0.3
DEFAULT_ROUNDS: Final = 3
#: Anything bigger is a mistake, not a benchmark: each side allocates two buffers of it.
MAX_SIZE: Final = 64 * MIB

_SIZE = re.compile(r"^\s*(\d+)\s*(k|ki|kib|kb|m|mi|mib|mb|b)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'64', '4K', '4KiB', '1M' -> bytes (K and M are powers of 1024)."""
    match = _SIZE.match(text)
    if match is None:
        raise UsageError(f"bad size {text!r}: give bytes like 64, 4K or 1M")
    number = int(match.group(1))
    unit = (match.group(2) or "").lower()
    value = number * (MIB if unit.startswith("m") else KIB if unit.startswith("k") else 1)
    if not 1 <= value <= MAX_SIZE:
        raise UsageError(f"bad size {text!r}: sizes go from 1 byte to {format_size(MAX_SIZE)}")
    return value


def parse_sizes(text: str) -> tuple[int, ...]:
    """'1,64,4K' -> (1, 64, 4096), sorted, without repeats."""
    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise UsageError("--sizes needs at least one size, like 64,4K,64K")
    return tuple(sorted({parse_size(p) for p in parts}))


def format_size(size: int) -> str:
    """4096 -> '4 KiB', 1048576 -> '1 MiB', 100 -> '100 B'."""
    for unit, name in ((MIB, "MiB"), (KIB, "KiB")):
        if size >= unit and size % unit == 0:
            return f"{size // unit} {name}"
    return f"{size} B"


@final
@dataclass(frozen=True, slots=True)
class BenchPlan:
    """Everything a run needs to know before it starts."""

    transports: tuple[Transport, ...]
    patterns: tuple[Pattern, ...]
    sizes: tuple[int, ...]
    #: Seconds per cell, split evenly over the rounds.
    duration: float = DEFAULT_DURATION
    rounds: int = DEFAULT_ROUNDS
    #: CPUs for (this process, the peer process), or None to let the scheduler choose.
    pin: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if not self.transports or not self.patterns or not self.sizes:
            raise UsageError("nothing to run: give at least one transport, pattern and size")
        if not 0 < self.duration <= 3600:
            raise UsageError(f"--duration {self.duration}: give seconds between 0 and 3600")
        if not 1 <= self.rounds <= 1000:
            raise UsageError(f"--rounds {self.rounds}: give a number from 1 to 1000")

    @property
    def trial_seconds(self) -> float:
        return self.duration / self.rounds

    def settings(self) -> dict[str, object]:
        return {
            "transports": [t.value for t in self.transports],
            "patterns": [p.value for p in self.patterns],
            "sizes": list(self.sizes),
            "duration_s": self.duration,
            "rounds": self.rounds,
            "trial_s": self.trial_seconds,
            "pin": list(self.pin) if self.pin is not None else None,
        }


@final
@dataclass(frozen=True, slots=True)
class Trial:
    """One run of one transport at one pattern and size, in a fresh pair of processes."""

    transport: Transport
    pattern: Pattern
    size: int
    round: int


def size_allowed(transport: Transport, size: int, caps: Mapping[Transport, int]) -> bool:
    cap = caps.get(transport)
    return cap is None or size <= cap


def trial_order(plan: BenchPlan, caps: Mapping[Transport, int]) -> Iterator[Trial]:
    """Trials in the order they run: transports alternate within each round, and the
    order rotates by one transport each round."""
    for pattern in plan.patterns:
        for size in plan.sizes:
            runnable = [t for t in plan.transports if size_allowed(t, size, caps)]
            for rnd in range(plan.rounds):
                for transport in rotated(runnable, rnd):
                    yield Trial(transport, pattern, size, rnd)


def rotated(items: Sequence[Transport], by: int) -> list[Transport]:
    if not items:
        return []
    shift = by % len(items)
    return [*items[shift:], *items[:shift]]


def count_trials(plan: BenchPlan, caps: Mapping[Transport, int]) -> int:
    return sum(1 for _ in trial_order(plan, caps))
