"""I/O: the timed loops, one per side of each pattern.

They are written to keep Python's own cost small next to the kernel's, so that
transports compare as they would from C (benchmarks/bench_vs_c.py checks this):
buffers are allocated once, every receive is `recv_into` a preallocated buffer, the
send and receive methods are looked up once, and the throughput sender checks the
clock once per batch of sends rather than once per send.

pingpong: the measuring side sends `size` bytes, the peer reads all of them and sends
the same bytes back; one sample is the time from before the send to after the last
byte of the reply, for every transport alike (some published numbers compare a
1-byte reply on pipes with a full echo on sockets).

throughput: the peer sends `size`-byte messages until the measuring side raises a
shared stop flag, then says it is done; the measuring side counts the bytes that
arrive in a window of its own clock that starts after a short warm-up, raises the
flag when the window ends and drains the rest uncounted. The measuring side owns the
window: a peer that kept its own clock would finish early whenever the scheduler ran
the measuring side late (seen with 20 ms trials on a busy 2-core machine: the peer
was done before the warm-up ended). The window also lasts until a whole message's
bytes have been counted: on a byte stream, a measuring side that the scheduler ran
past the end of its window woke, read what the socket held and counted less than one
message (438,528 bytes of a 1 MiB one, in a soak with the other CPU busy).
"""

from __future__ import annotations

import time
from itertools import repeat
from typing import Final, Protocol

from udskit.bench.results import BenchFailed
from udskit.bench.transports import End

#: Share of each trial spent warming up (page faults, caches, scheduler placement).
WARMUP_SHARE: Final = 0.1
#: A stream receiver reads up to this much per call: a reader of a byte stream takes
#: what has arrived, not one message at a time.
STREAM_READ: Final = 256 * 1024
#: The throughput sender looks at the clock after this many bytes (or one message).
BATCH_BYTES: Final = 256 * 1024


class StopFlag(Protocol):
    """One shared byte (an anonymous shared mmap made before fork): non-zero means stop."""

    def __getitem__(self, index: int, /) -> int: ...
    def __setitem__(self, index: int, value: int, /) -> None: ...


def _payload(size: int) -> memoryview:
    # Not zeros: a transport that compressed or skipped zero pages would cheat.
    pattern = bytes(range(256))
    return memoryview(bytearray((pattern * (size // 256 + 1))[:size]))


def _send_rest(end: End, view: memoryview, sent: int) -> None:
    """Finish a partial stream send (a signal can cut a blocking send short)."""
    size = len(view)
    while sent < size:
        sent += end.send(view[sent:])


def _recv_rest(end: End, view: memoryview, got: int, keeps_boundaries: bool) -> None:
    """Read the rest of a message that arrived in pieces (streams only)."""
    size = len(view)
    if keeps_boundaries:
        raise BenchFailed(f"a {size}-byte message arrived as {got} bytes")
    while got < size:
        count = end.recv_into(view[got:])
        if count == 0:
            raise BenchFailed(f"the peer closed after {got} of {size} bytes")
        got += count


def _round_trips(
    end: End,
    out: memoryview,
    back: memoryview,
    deadline_ns: int,
    keeps_boundaries: bool,
    samples: list[int] | None,
) -> None:
    size = len(out)
    send = end.send
    recv_into = end.recv_into
    now = time.perf_counter_ns
    append = samples.append if samples is not None else None
    while True:
        start = now()
        sent = send(out)
        if sent != size:
            _send_rest(end, out, sent)
        got = recv_into(back)
        if got != size:
            if got == 0:
                raise BenchFailed("the peer closed during a round trip")
            _recv_rest(end, back, got, keeps_boundaries)
        stop = now()
        if append is not None:
            append(stop - start)
        if stop >= deadline_ns:
            return


def pingpong(end: End, size: int, seconds: float, keeps_boundaries: bool) -> list[int]:
    """The measuring side of pingpong: round-trip times in nanoseconds."""
    out = _payload(size)
    back = memoryview(bytearray(size))
    start = time.perf_counter_ns()
    warm_until = start + int(seconds * WARMUP_SHARE * 1e9)
    _round_trips(end, out, back, warm_until, keeps_boundaries, None)
    samples: list[int] = []
    _round_trips(end, out, back, start + int(seconds * 1e9), keeps_boundaries, samples)
    end.finish()
    if back != out:
        raise BenchFailed("the reply differs from what was sent")
    return samples


def echo(end: End, size: int, keeps_boundaries: bool) -> None:
    """The peer side of pingpong: send back every `size` bytes until the end."""
    view = memoryview(bytearray(size))
    send = end.send
    recv_into = end.recv_into
    while True:
        got = recv_into(view)
        if got != size:
            if got == 0:
                return
            _recv_rest(end, view, got, keeps_boundaries)
        sent = send(view)
        if sent != size:
            _send_rest(end, view, sent)


def blast(end: End, size: int, stop: StopFlag, limit_seconds: float) -> None:
    """The peer side of throughput: send `size`-byte messages until `stop` is raised
    (or, should the measuring side vanish without killing us, `limit_seconds`), then end."""
    out = _payload(size)
    send = end.send
    now = time.monotonic_ns
    batch = max(1, BATCH_BYTES // size)
    deadline = now() + int(limit_seconds * 1e9)
    while not stop[0] and now() < deadline:
        for _ in repeat(None, batch):
            sent = send(out)
            if sent != size:
                _send_rest(end, out, sent)
    end.finish()


def sink(
    end: End, size: int, seconds: float, keeps_boundaries: bool, stop: StopFlag
) -> tuple[int, int]:
    """The measuring side of throughput: (bytes, nanoseconds) of the measured window,
    which lasts the measured share of `seconds` and holds at least `size` bytes."""
    # One message per receive where the kernel keeps boundaries; all that has arrived,
    # up to STREAM_READ, on a byte stream.
    view = memoryview(bytearray(size if keeps_boundaries else max(size, STREAM_READ)))
    recv_into = end.recv_into
    now = time.perf_counter_ns
    # The clock is read once per batch of receives, like the sender's, so that small
    # messages do not pay for it; the window is what lies between two readings.
    batch = max(1, BATCH_BYTES // size)
    try:
        if recv_into(view) == 0:
            raise BenchFailed("the peer sent nothing")
        warm_until = now() + int(seconds * WARMUP_SHARE * 1e9)
        while now() < warm_until:
            if recv_into(view) == 0:
                raise BenchFailed("the peer stopped during the warm-up")
        total = 0
        start = now()
        stop_at = start + int(seconds * (1 - WARMUP_SHARE) * 1e9)
        while True:
            for _ in repeat(None, batch):
                count = recv_into(view)
                if count == 0:
                    raise BenchFailed("the peer stopped before the measured window ended")
                total += count
            stopped = now()
            if stopped >= stop_at and total >= size:
                break
    finally:
        stop[0] = 1
    while recv_into(view) != 0:  # what was sent before the peer saw the flag
        pass
    end.close()
    return total, stopped - start
