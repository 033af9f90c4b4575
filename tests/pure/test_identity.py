"""Whose identity a forwarded connection carries: every input of the decision."""

from __future__ import annotations

import itertools

import pytest

from udskit.identity import (
    CAP_SETGID,
    CAP_SETUID,
    IdentityPlan,
    can_switch,
    decide_identity,
    others_may_connect,
    parse_cap_eff,
)


@pytest.mark.parametrize(
    ("switch", "others", "allow"), list(itertools.product([False, True], repeat=3))
)
def test_decide_identity_on_all_inputs(switch: bool, others: bool, allow: bool) -> None:
    plan = decide_identity(can_switch=switch, others=others, allow_change=allow)
    if switch:
        expected = IdentityPlan.CARRY  # never worse than carrying
    elif not others:
        expected = IdentityPlan.SAME
    else:
        expected = IdentityPlan.CHANGE if allow else IdentityPlan.REFUSE
    assert plan is expected


def test_capabilities() -> None:
    both = (1 << CAP_SETUID) | (1 << CAP_SETGID)
    assert can_switch(both, True)
    assert not can_switch(both, False)  # a user namespace with setgroups denied
    assert not can_switch(1 << CAP_SETUID, True)
    assert not can_switch(1 << CAP_SETGID, True)
    assert parse_cap_eff("Name:\tx\nCapEff:\t000001ffffffffff\n") == 0x1FFFFFFFFFF
    assert parse_cap_eff("") == 0


@pytest.mark.parametrize(
    ("mode", "owner", "me", "others"),
    [
        (None, None, 1000, True),  # abstract: anyone in the namespace
        (0o777, 1000, 1000, True),
        (0o770, 1000, 1000, True),
        (0o700, 1000, 1000, False),
        (0o755, 1000, 1000, False),
        (0o700, 0, 1000, True),  # someone else's socket, writable by its owner
        (0o500, 0, 1000, False),  # nobody may write it (root still can: a downgrade)
    ],
)
def test_who_may_connect(mode: int | None, owner: int | None, me: int, others: bool) -> None:
    assert others_may_connect(mode, owner, me) is others
