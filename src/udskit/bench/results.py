"""Pure: what `udskit bench` measures and what a run returns.

Transports and patterns are enums whose values are the names users type and the
names in the JSON; a result is one frozen record per (transport, pattern, size), with
None where a figure does not apply (no MB/s for a round trip, no p99 for a stream of
bytes).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import final

from udskit.errors import UdskitError


class BenchFailed(UdskitError):
    """A bench trial could not run (its peer process died, a socket call failed)."""


class Transport(enum.Enum):
    """The ways two local processes can exchange bytes that the bench compares."""

    UNIX_STREAM = "unix-stream"
    UNIX_STREAM_ABSTRACT = "unix-stream-abstract"
    SOCKETPAIR = "socketpair"
    UNIX_DGRAM = "unix-dgram"
    UNIX_SEQPACKET = "unix-seqpacket"
    TCP = "tcp"
    PIPE = "pipe"

    @property
    def keeps_boundaries(self) -> bool:
        """One send is one receive: the kernel keeps message boundaries."""
        return self in (Transport.UNIX_DGRAM, Transport.UNIX_SEQPACKET)

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self]


_DESCRIPTIONS: Mapping[Transport, str] = {
    Transport.UNIX_STREAM: "SOCK_STREAM on a socket file (listen/connect/accept)",
    Transport.UNIX_STREAM_ABSTRACT: "SOCK_STREAM on an abstract name",
    Transport.SOCKETPAIR: "socketpair(AF_UNIX, SOCK_STREAM)",
    Transport.UNIX_DGRAM: "SOCK_DGRAM, both ends bound and connected",
    Transport.UNIX_SEQPACKET: "SOCK_SEQPACKET on a socket file",
    Transport.TCP: "TCP on 127.0.0.1 with TCP_NODELAY",
    Transport.PIPE: "two pipe(2)s, one each way",
}


class Pattern(enum.Enum):
    """pingpong: one message out and the same size back, timed per round trip.
    throughput: one side sends as fast as it can, the other counts what arrives."""

    PINGPONG = "pingpong"
    THROUGHPUT = "throughput"


@final
@dataclass(frozen=True, slots=True)
class TrialResult:
    """One trial: one transport, pattern and size, in one pair of processes.

    For pingpong, `samples_ns` holds every timed round trip; for throughput,
    `bytes_moved` and `elapsed_ns` cover the measured window.
    """

    transport: Transport
    pattern: Pattern
    size: int
    samples_ns: tuple[int, ...] = ()
    bytes_moved: int = 0
    elapsed_ns: int = 0


@final
@dataclass(frozen=True, slots=True)
class BenchResult:
    """One row of the JSON `results` list: medians over the rounds of one cell."""

    transport: Transport
    pattern: Pattern
    size: int
    p50_us: float | None
    p99_us: float | None
    p999_us: float | None
    mb_s: float | None
    msgs_s: float | None
    #: How many times better than TCP at the same pattern and size (higher is better:
    #: TCP's p50 over this p50 for pingpong, this MB/s over TCP's for throughput).
    vs_tcp: float | None
    #: Round trips timed (pingpong) or messages counted (throughput), all rounds.
    samples: int
    rounds: int

    def to_json(self) -> dict[str, object]:
        return {
            "transport": self.transport.value,
            "pattern": self.pattern.value,
            "size": self.size,
            "p50_us": self.p50_us,
            "p99_us": self.p99_us,
            "p999_us": self.p999_us,
            "mb_s": self.mb_s,
            "msgs_s": self.msgs_s,
            "vs_tcp": self.vs_tcp,
            "samples": self.samples,
            "rounds": self.rounds,
        }


@final
@dataclass(frozen=True, slots=True)
class Skipped:
    """A cell that was not run, and why (a size over a datagram cap)."""

    transport: Transport
    size: int
    reason: str


@final
@dataclass(frozen=True, slots=True)
class BenchReport:
    """A whole run: the machine it ran on, the settings, the rows, what was skipped."""

    machine: Mapping[str, object]
    settings: Mapping[str, object]
    results: tuple[BenchResult, ...]
    skipped: tuple[Skipped, ...] = field(default=())

    def to_json(self) -> dict[str, object]:
        return {
            "machine": dict(self.machine),
            "settings": dict(self.settings),
            "results": [r.to_json() for r in self.results],
            "skipped": [
                {"transport": s.transport.value, "size": s.size, "reason": s.reason}
                for s in self.skipped
            ],
        }
