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

throughput: the peer sends `size`-byte messages for the trial's duration, then says
it is done; the measuring side counts the bytes that arrive in a window that starts
after a short warm-up and ends when the peer is done.
"""

from __future__ import annotations

import time
from itertools import repeat
from typing import Final

from udskit.bench.results import BenchFailed
from udskit.bench.transports import End

#: Share of each trial spent warming up (page faults, caches, scheduler placement).
WARMUP_SHARE: Final = 0.1
#: A stream receiver reads up to this much per call: a reader of a byte stream takes
#: what has arrived, not one message at a time.
STREAM_READ: Final = 256 * 1024
#: The throughput sender looks at the clock after this many bytes (or one message).
BATCH_BYTES: Final = 256 * 1024


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


def blast(end: End, size: int, seconds: float) -> None:
    """The peer side of throughput: send `size`-byte messages for `seconds`, then end."""
    out = _payload(size)
    send = end.send
    now = time.monotonic_ns
    batch = max(1, BATCH_BYTES // size)
    deadline = now() + int(seconds * 1e9)
    while now() < deadline:
        for _ in repeat(None, batch):
            sent = send(out)
            if sent != size:
                _send_rest(end, out, sent)
    end.finish()


def sink(end: End, size: int, seconds: float, keeps_boundaries: bool) -> tuple[int, int]:
    """The measuring side of throughput: (bytes, nanoseconds) of the measured window."""
    # One message per receive where the kernel keeps boundaries; all that has arrived,
    # up to STREAM_READ, on a byte stream.
    view = memoryview(bytearray(size if keeps_boundaries else max(size, STREAM_READ)))
    recv_into = end.recv_into
    now = time.perf_counter_ns
    if recv_into(view) == 0:
        raise BenchFailed("the peer sent nothing")
    warm_until = now() + int(seconds * WARMUP_SHARE * 1e9)
    while now() < warm_until:
        if recv_into(view) == 0:
            raise BenchFailed("the peer stopped during the warm-up")
    total = 0
    start = now()
    while True:
        count = recv_into(view)
        if count == 0:
            break
        total += count
    elapsed = now() - start
    end.close()
    return total, elapsed
