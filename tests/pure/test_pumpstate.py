"""The stream pump's decisions (udskit.relay.pumpstate), on every combination of inputs.

The oracles below restate, flag by flag, the rules stream.py followed before the
decisions moved into a table (reading / blocked / eof / done booleans), so these tests
also show the move changed no behaviour.
"""

from __future__ import annotations

import itertools
import select

import pytest

from udskit.relay import pumpstate
from udskit.relay.pumpstate import (
    EPOLLERR,
    EPOLLHUP,
    EPOLLIN,
    EPOLLOUT,
    TRANSITIONS,
    Outcome,
    PumpAction,
    PumpState,
    SessionAction,
    SideAction,
    Step,
    after_pump_done,
    flush_first,
    interest,
    side_action,
    step,
)

R, B, D = PumpState.READING, PumpState.BLOCKED, PumpState.DONE
STATES = list(PumpState)
OUTCOMES = list(Outcome)
#: Every combination of the four bits epoll reports to a session (IN, OUT, ERR, HUP).
EVENT_MASKS = [
    sum(bit for bit, on in zip((EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP), bits, strict=True) if on)
    for bits in itertools.product((False, True), repeat=4)
]

#: What each state's I/O can produce: a READING pump reads (and sends what it read);
#: a BLOCKED one only sends what it holds; a DONE one does no I/O.
POSSIBLE = {
    R: {Outcome.WOULD_BLOCK, Outcome.DELIVERED, Outcome.HELD, Outcome.EOF, Outcome.FAILED},
    B: {Outcome.WOULD_BLOCK, Outcome.HELD, Outcome.DRAINED, Outcome.FAILED},
    D: set(),
}


def flags(state: PumpState) -> tuple[bool, bool, bool]:
    """(reading, blocked, done) as the old pump kept them."""
    return state is R, state is B, state is D


def test_epoll_bits_are_the_kernels() -> None:
    assert (EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP) == (
        select.EPOLLIN,
        select.EPOLLOUT,
        select.EPOLLERR,
        select.EPOLLHUP,
    )
    assert len(set(EVENT_MASKS)) == 16


@pytest.mark.parametrize(("state", "outcome"), list(itertools.product(STATES, OUTCOMES)))
def test_every_pair_is_defined_exactly_when_it_can_happen(
    state: PumpState, outcome: Outcome
) -> None:
    if outcome in POSSIBLE[state]:
        assert step(state, outcome) == TRANSITIONS[state, outcome]
    else:
        assert (state, outcome) not in TRANSITIONS
        with pytest.raises(ValueError, match=f"a {state.value} pump cannot see {outcome.value}"):
            step(state, outcome)


def old_rules(state: PumpState, outcome: Outcome) -> Step:
    """The flag logic of the old _Pump (_block, _unblock, _at_eof, _finish, reset)."""
    reading, blocked, _done = flags(state)
    if outcome is Outcome.FAILED:
        return Step(D, PumpAction.RESET)
    if outcome is Outcome.HELD:
        # _block() only when not yet blocked; a partial send while blocked waits on
        if blocked:
            return Step(B, PumpAction.NOTHING)
        return Step(B, PumpAction.WATCH)
    if outcome is Outcome.DRAINED:  # _unblock(): eof was never set while blocked
        return Step(R, PumpAction.WATCH)
    if outcome is Outcome.EOF:  # _at_eof() while not blocked: _finish() at once
        assert reading
        return Step(D, PumpAction.SHUTDOWN_WRITE)
    return Step(state, PumpAction.NOTHING)  # WOULD_BLOCK, DELIVERED: nothing changes


@pytest.mark.parametrize(("state", "outcome"), list(TRANSITIONS))
def test_the_table_matches_the_old_flag_rules(state: PumpState, outcome: Outcome) -> None:
    assert step(state, outcome) == old_rules(state, outcome)


def test_every_state_is_reachable_and_done_is_final() -> None:
    seen = {R}
    frontier = [R]
    while frontier:
        state = frontier.pop()
        for outcome in POSSIBLE[state]:
            nxt = step(state, outcome).state
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    assert seen == set(STATES)
    assert not [key for key in TRANSITIONS if key[0] is D]


@pytest.mark.parametrize(("state", "outcome"), list(TRANSITIONS))
def test_actions_follow_from_the_state_change(state: PumpState, outcome: Outcome) -> None:
    """WATCH exactly when what the pump wants from epoll changes (it starts or stops
    reading); SHUTDOWN_WRITE exactly on a clean end; RESET exactly on failure."""
    nxt = step(state, outcome)
    if outcome is Outcome.FAILED:
        assert nxt == Step(D, PumpAction.RESET)
    elif nxt.state is D:
        assert nxt.action is PumpAction.SHUTDOWN_WRITE and outcome is Outcome.EOF
    else:
        changed = any(
            interest(state, other) != interest(nxt.state, other)
            or interest(other, state) != interest(other, nxt.state)
            for other in STATES
        )
        assert (nxt.action is PumpAction.WATCH) == changed


@pytest.mark.parametrize(("reader", "writer"), list(itertools.product(STATES, STATES)))
def test_interest(reader: PumpState, writer: PumpState) -> None:
    r_reading = flags(reader)[0]
    w_blocked = flags(writer)[1]
    expected = (select.EPOLLIN if r_reading else 0) | (select.EPOLLOUT if w_blocked else 0)
    assert interest(reader, writer) == expected


@pytest.mark.parametrize(("events", "writer"), list(itertools.product(EVENT_MASKS, STATES)))
def test_flush_first(events: int, writer: PumpState) -> None:
    try_send = select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR
    assert flush_first(events, writer) == bool(events & try_send and flags(writer)[1])


def old_side(events: int, reader: PumpState, writer: PumpState) -> SideAction:
    """Session._on_client/_on_upstream after the flush, as they were."""
    reading, _blocked, done = flags(reader)
    writer_blocked = flags(writer)[1]
    gone = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR
    if reading:
        return SideAction.READ if events & gone else SideAction.NOTHING
    if events & (select.EPOLLHUP | select.EPOLLERR) and not writer_blocked:
        return SideAction.PEER_GONE if done else SideAction.PARK
    return SideAction.NOTHING


@pytest.mark.parametrize(
    ("events", "reader", "writer"), list(itertools.product(EVENT_MASKS, STATES, STATES))
)
def test_side_action(events: int, reader: PumpState, writer: PumpState) -> None:
    action = side_action(events, reader, writer)
    assert action is old_side(events, reader, writer)
    # And what it means: only a reading pump reads; a session ends on a hang-up only
    # when nothing is left to pass either way through that socket.
    if action is SideAction.READ:
        assert reader is R
    if action is SideAction.PEER_GONE:
        assert reader is D and writer is not B and events & (EPOLLHUP | EPOLLERR)


@pytest.mark.parametrize(("c2s", "s2c"), list(itertools.product(STATES, STATES)))
def test_after_pump_done(c2s: PumpState, s2c: PumpState) -> None:
    expected = SessionAction.CLOSE if (c2s, s2c) == (D, D) else SessionAction.WATCH
    assert after_pump_done(c2s, s2c) is expected


def test_no_sequence_of_outcomes_passes_eof_on_while_bytes_are_held() -> None:
    """Every sequence of up to seven outcomes a pump's I/O can produce, against a model
    of what it holds: BLOCKED exactly while it holds bytes, it reads only while it
    holds none, and the EOF goes on (SHUTDOWN_WRITE) only once everything went out."""
    sequences = 0
    for length in range(1, 8):
        for seq in itertools.product(OUTCOMES, repeat=length):
            state, holds = R, False
            for outcome in seq:
                if outcome not in POSSIBLE[state]:
                    break
                nxt = step(state, outcome)
                if outcome is Outcome.HELD:
                    holds = True
                elif outcome is Outcome.DRAINED:
                    holds = False
                if nxt.action is PumpAction.SHUTDOWN_WRITE:
                    assert not holds
                state = nxt.state
                if state is not D:
                    assert (state is B) == holds
                    assert (interest(state, D) == EPOLLIN) == (not holds)
            else:
                sequences += 1
    assert sequences > 1000


def test_module_is_pure() -> None:
    assert (pumpstate.__doc__ or "").startswith("Pure:")


@pytest.mark.parametrize("writer", STATES)
def test_the_shortcut_for_plain_readable_agrees_with_the_table(writer: PumpState) -> None:
    """stream.py answers a bare EPOLLIN on a READING pump's socket without asking the
    table (the per-chunk path); this is the table's own answer for every writer."""
    assert not flush_first(pumpstate.JUST_READABLE, writer)
    assert side_action(pumpstate.JUST_READABLE, R, writer) is SideAction.READ
