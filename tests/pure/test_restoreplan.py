"""The dump's takeover and restore decisions, for every combination of facts.

A small model carries each plan out on names (PATH, HIDDEN, STAGING) and checks what
must hold whatever an attacker put where: nobody else's file is touched, the original
never loses its last name, "restored" is true exactly when the original ends at PATH,
and the record is dropped only when nothing of the dump is left."""

from __future__ import annotations

import itertools

import pytest

from udskit.capture.restoreplan import (
    RestoreFacts,
    Seen,
    Start,
    StartFacts,
    Step,
    Watch,
    plan_restore,
    plan_start,
    plan_watch,
    stat_start_time,
)

ALL = list(Seen)
COMBINATIONS = [
    RestoreFacts(path, hidden, staging, running, keep)
    for path, hidden, staging, running, keep in itertools.product(
        ALL, ALL, ALL, (False, True), (False, True)
    )
    # Only the original and the proxy can be the dump's: HIDDEN never holds the proxy.
    if hidden is not Seen.PROXY
]


def carry_out(facts: RestoreFacts, steps: tuple[Step, ...]) -> tuple[dict[str, Seen], bool]:
    names = {"path": facts.path, "hidden": facts.hidden, "staging": facts.staging}
    forgotten = False
    for step in steps:
        if step is Step.PUT_BACK:
            assert names["hidden"] is Seen.ORIGINAL and names["path"] is Seen.PROXY
            names["path"], names["hidden"] = Seen.ORIGINAL, Seen.MISSING
        elif step is Step.PUT_BACK_KEEP:
            assert names["hidden"] is Seen.ORIGINAL and names["path"] is Seen.PROXY
            names["path"] = Seen.ORIGINAL
        elif step is Step.LINK_BACK:
            assert names["hidden"] is Seen.ORIGINAL and names["path"] is Seen.MISSING
            names["path"] = Seen.ORIGINAL
        elif step is Step.RESCUE_STAGING:
            assert names["staging"] is Seen.ORIGINAL
            assert names["path"] in (Seen.PROXY, Seen.MISSING)
            names["path"], names["staging"] = Seen.ORIGINAL, Seen.MISSING
        elif step is Step.DROP_HIDDEN:
            assert names["hidden"] is Seen.ORIGINAL and names["path"] is Seen.ORIGINAL
            names["hidden"] = Seen.MISSING
        elif step is Step.DROP_STAGING:
            assert names["staging"] in (Seen.PROXY, Seen.ORIGINAL)
            if names["staging"] is Seen.ORIGINAL:
                assert names["path"] is Seen.ORIGINAL  # never the original's last name
            names["staging"] = Seen.MISSING
        elif step is Step.DROP_PROXY_AT_PATH:
            assert names["path"] is Seen.PROXY
            names["path"] = Seen.MISSING
        elif step is Step.FORGET:
            forgotten = True
    return names, forgotten


@pytest.mark.parametrize("facts", COMBINATIONS, ids=str)
def test_every_plan_keeps_the_rules(facts: RestoreFacts) -> None:
    plan = plan_restore(facts)
    if facts.other_dump_running:
        assert plan.refused and plan.steps == () and not plan.restored
        return
    assert not plan.refused
    before = {"path": facts.path, "hidden": facts.hidden, "staging": facts.staging}
    after, forgotten = carry_out(facts, plan.steps)
    # Somebody else's file is never touched.
    for name, seen in before.items():
        if seen is Seen.OTHER:
            assert after[name] is Seen.OTHER, name
    # The original never loses its last name.
    if Seen.ORIGINAL in before.values():
        assert Seen.ORIGINAL in after.values()
        # ... and ends at PATH whenever PATH was ours or empty.
        if facts.path in (Seen.PROXY, Seen.MISSING, Seen.ORIGINAL):
            assert after["path"] is Seen.ORIGINAL
    assert plan.restored == (after["path"] is Seen.ORIGINAL)
    # The dead proxy's file never stays at PATH.
    assert after["path"] is not Seen.PROXY
    if facts.keep_hidden:
        assert not forgotten
        if facts.hidden is Seen.ORIGINAL:
            assert after["hidden"] is Seen.ORIGINAL  # clients still come through it
    else:
        ours = {Seen.ORIGINAL, Seen.PROXY}
        leftover = after["hidden"] in ours or after["staging"] in ours
        # The record goes exactly when nothing of the dump is left beside PATH.
        assert forgotten == (not leftover)
    # Everything in the way is reported.
    if facts.path is Seen.OTHER and Seen.ORIGINAL in (facts.hidden, facts.staging):
        assert "path-other" in plan.reasons
    if facts.staging is Seen.OTHER:
        assert "staging-other" in plan.reasons


def test_the_usual_cases() -> None:
    taken = RestoreFacts(Seen.PROXY, Seen.ORIGINAL, Seen.MISSING)
    assert plan_restore(taken).steps == (Step.PUT_BACK, Step.FORGET)
    running = RestoreFacts(Seen.PROXY, Seen.ORIGINAL, Seen.MISSING, keep_hidden=True)
    assert plan_restore(running).steps == (Step.PUT_BACK_KEEP,)
    linked_only = RestoreFacts(Seen.ORIGINAL, Seen.ORIGINAL, Seen.PROXY)
    assert plan_restore(linked_only).steps == (Step.DROP_HIDDEN, Step.DROP_STAGING, Step.FORGET)
    planted = RestoreFacts(Seen.PROXY, Seen.OTHER, Seen.MISSING)
    plan = plan_restore(planted)
    assert plan.steps == (Step.DROP_PROXY_AT_PATH, Step.FORGET) and not plan.restored
    assert plan.reasons == ("hidden-other",)


@pytest.mark.parametrize(
    ("facts", "decision"),
    [
        (StartFacts(True, True, True, True, True), Start.RUNNING),
        (StartFacts(True, False, True, True, True), Start.KILLED),
        (StartFacts(False, False, False, False, False), Start.MISSING),
        (StartFacts(False, False, True, False, False), Start.NOT_SOCKET),
        (StartFacts(False, False, True, True, False), Start.STALE),
        (StartFacts(False, False, True, True, True), Start.GO),
    ],
)
def test_start_goes_by_this_users_record_only(facts: StartFacts, decision: Start) -> None:
    assert plan_start(facts) is decision


# -- the watchdog -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("dismissed", "exited", "expected"),
    [
        (False, False, Watch.WAIT),  # the dump runs
        (False, True, Watch.RESTORE),  # killed: nobody else will put it back
        (True, False, Watch.LEAVE),  # the dump restored, and is on its way out
        (True, True, Watch.LEAVE),  # restored and exited: the path is not ours any more
    ],
)
def test_the_watchdog_restores_only_after_a_death_without_a_word(
    dismissed: bool, exited: bool, expected: Watch
) -> None:
    assert plan_watch(dismissed=dismissed, dump_exited=exited) is expected


STAT = b"4242 (udskit dump) S 1 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 0 0"


def test_a_start_time_is_read_after_the_last_parenthesis() -> None:
    assert stat_start_time(STAT) == "987654"
    tricky = STAT.replace(b"(udskit dump)", b"(a) R 1 2 (b)")  # comm is the process's
    assert stat_start_time(tricky) == "987654"


@pytest.mark.parametrize("state", [b"Z", b"X"])
def test_an_exited_process_has_no_start_time(state: bytes) -> None:
    """A kill -9'd dump is a zombie until reaped: its record is a dead dump's."""
    assert stat_start_time(STAT.replace(b") S ", b") " + state + b" ")) == ""


def test_a_short_stat_line_is_no_process() -> None:
    assert stat_start_time(b"4242 (x) S 1 2") == ""
