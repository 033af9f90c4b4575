"""Pure: the decisions of a forwarded stream connection, as tables (no I/O here).

A session (stream.py) runs two pumps, one per direction, over two sockets. What a
pump does next depends only on its state and on what its last I/O attempt found;
what a socket's epoll event leads to depends only on the event's bits and on the two
pumps' states. Those decisions live here, the way h11 keeps its state machine apart
from the bytes; stream.py does the reads, writes, shutdowns and closes they name.
tests/pure/test_pumpstate.py walks every combination.

A pump's life::

    READING --HELD--> BLOCKED --DRAINED--> READING
    READING --EOF--> DONE                (shutdown(SHUT_WR) of the destination)
    any live state --FAILED--> DONE      (the whole session resets)

A pump reads only in READING; while BLOCKED it holds bytes its destination did not
take (a splice pipe's contents or a copy's remainder) and reads nothing, so a slow
reader slows its writer instead of filling our memory (back-pressure). Hence a
BLOCKED pump never sees EOF: its source is not read until the held bytes are out.

The epoll bits are the kernel's ABI (include/uapi/linux/eventpoll.h), spelled here so
that this module needs no `select`; a test checks them against `select`'s.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, final

#: epoll event bits (include/uapi/linux/eventpoll.h).
EPOLLIN: Final = 0x001
EPOLLOUT: Final = 0x004
EPOLLERR: Final = 0x008
EPOLLHUP: Final = 0x010
#: Bits that make a reading pump read: readable, or gone (the read then returns EOF or
#: the error, which ends the pump properly).
READ_ON: Final = EPOLLIN | EPOLLHUP | EPOLLERR
#: Bits that make a blocked pump try its destination again: writable, or gone (the
#: send then fails with EPIPE and the session resets, instead of EPOLLHUP waking the
#: loop for ever).
SEND_ON: Final = EPOLLOUT | EPOLLHUP | EPOLLERR
GONE: Final = EPOLLHUP | EPOLLERR


class PumpState(enum.Enum):
    READING = "reading"  # wants its source readable; holds nothing
    BLOCKED = "blocked"  # holds bytes for its destination; wants it writable
    DONE = "done"  # source ended and everything went out, or the session failed

    # Members are singletons compared by identity, so identity hashing is exact; it is
    # C code, where Enum's own hash(self._name_) is Python and made each TRANSITIONS
    # lookup (twice per splice round when a destination is full) cost 6 times more.
    __hash__ = object.__hash__


class Outcome(enum.Enum):
    """What a pump's last I/O attempt found (the facts the table takes)."""

    WOULD_BLOCK = "would-block"  # EAGAIN: nothing moved
    DELIVERED = "delivered"  # read a chunk, and the destination took all of it
    HELD = "held"  # bytes are left over: the destination is full (or took part)
    DRAINED = "drained"  # the held bytes have all gone out now
    EOF = "eof"  # the source read returned end of stream
    FAILED = "failed"  # a read or write failed (ECONNRESET, EPIPE, a record too big)

    __hash__ = object.__hash__  # (see PumpState)


class PumpAction(enum.Enum):
    NOTHING = "nothing"
    WATCH = "watch"  # ask epoll for what the pumps now want (see `interest`)
    SHUTDOWN_WRITE = "shutdown-write"  # pass the EOF on: shutdown(SHUT_WR), pump done
    RESET = "reset"  # close both sides at once, report one reset


@final
@dataclass(frozen=True, slots=True)
class Step:
    state: PumpState
    action: PumpAction


R, B, D = PumpState.READING, PumpState.BLOCKED, PumpState.DONE
Out = Outcome
Act = PumpAction

#: (state, outcome) -> the next state and what to do. Pairs missing here cannot happen
#: (a READING pump holds nothing to drain; a BLOCKED pump does not read; a DONE pump
#: does no I/O): `step` refuses them, so a bug in stream.py shows at once.
TRANSITIONS: Final[dict[tuple[PumpState, Outcome], Step]] = {
    (R, Out.WOULD_BLOCK): Step(R, Act.NOTHING),
    (R, Out.DELIVERED): Step(R, Act.NOTHING),
    (R, Out.HELD): Step(B, Act.WATCH),
    (R, Out.EOF): Step(D, Act.SHUTDOWN_WRITE),
    (R, Out.FAILED): Step(D, Act.RESET),
    (B, Out.WOULD_BLOCK): Step(B, Act.NOTHING),
    (B, Out.HELD): Step(B, Act.NOTHING),
    (B, Out.DRAINED): Step(R, Act.WATCH),
    (B, Out.FAILED): Step(D, Act.RESET),
}


def step(state: PumpState, outcome: Outcome) -> Step:
    """The pump's next state and action after `outcome` in `state`."""
    try:
        return TRANSITIONS[state, outcome]
    except KeyError:
        raise ValueError(f"a {state.value} pump cannot see {outcome.value}") from None


def interest(reader: PumpState, writer: PumpState) -> int:
    """The epoll mask one socket needs: EPOLLIN while the pump reading it reads,
    EPOLLOUT while the pump writing to it holds bytes."""
    return (EPOLLIN if reader is R else 0) | (EPOLLOUT if writer is B else 0)


def flush_first(events: int, writer: PumpState) -> bool:
    """On an event for one socket: should the pump writing to it try again first?
    (Before reading, so bytes already held go out before more come in.)"""
    return bool(events & SEND_ON) and writer is B


#: The event almost every wake-up is: exactly EPOLLIN on the socket of a READING pump.
#: Whatever the other pump's state, the answer is no flush, then READ (the tests check
#: it on every state), so stream.py may take it without asking: the per-chunk path
#: then costs no more than it did before these tables.
JUST_READABLE: Final = EPOLLIN


class SideAction(enum.Enum):
    NOTHING = "nothing"
    READ = "read"  # the reading pump reads (data, EOF or the error)
    PEER_GONE = "peer-gone"  # the socket closed completely: the session is over
    PARK = "park"  # stop hearing its EPOLLHUP until its pump wants events again


def side_action(events: int, reader: PumpState, writer: PumpState) -> SideAction:
    """On an event for one socket, after any flush: what to do about its reader.

    A socket that hung up while its pump does not read: if that pump is DONE (we
    passed its EOF on) and nothing waits to be written to the socket, nobody can ever
    use it again, so the session ends. If its pump is BLOCKED, its bytes still wait
    for the other side: park it (EPOLLHUP comes whatever the mask, epoll_ctl(2)) and
    hear from it once the pump reads again.
    """
    if reader is R:
        return SideAction.READ if events & READ_ON else SideAction.NOTHING
    if events & GONE and writer is not B:
        return SideAction.PEER_GONE if reader is D else SideAction.PARK
    return SideAction.NOTHING


class SessionAction(enum.Enum):
    WATCH = "watch"  # one direction still runs: ask epoll for what it wants
    CLOSE = "close"  # both directions ended: close both sockets, report CLOSED


def after_pump_done(c2s: PumpState, s2c: PumpState) -> SessionAction:
    """A pump passed its EOF on: the connection ends when both have (half-close)."""
    return SessionAction.CLOSE if c2s is D and s2c is D else SessionAction.WATCH
