"""The filters of `udskit dump` as plain rules: --pid, --pname, --uid and -Q."""

from __future__ import annotations

import pytest

from udskit.capture.engine import selection_for
from udskit.capture.events import ClientInfo, Direction, Flow, Selection

CURL = ClientInfo(4242, 1000, 1000, "curl")
LONG = ClientInfo(4243, 0, 0, "a-very-long-nam")  # comm keeps 15 bytes


def test_no_filter_keeps_everything() -> None:
    sel = Selection()
    assert sel.wants(CURL) and sel.wants(ClientInfo())
    assert sel.keeps(CURL, Direction.C2S) and sel.keeps(CURL, Direction.S2C)


def test_pid_pname_and_uid_each_narrow() -> None:
    assert Selection(pid=4242).wants(CURL) and not Selection(pid=1).wants(CURL)
    assert Selection(pname="curl").wants(CURL) and not Selection(pname="cur").wants(CURL)
    assert Selection(uid=1000).wants(CURL) and not Selection(uid=0).wants(CURL)
    assert not Selection(uid=0).wants(ClientInfo()), "an unknown client passes no filter"
    assert not Selection(pname="curl", uid=0).wants(CURL), "filters combine with and"


def test_pname_matches_the_kernels_15_byte_comm() -> None:
    assert Selection(pname="a-very-long-name-indeed").wants(LONG)
    assert Selection(pname="a-very-long-nam").wants(LONG)


@pytest.mark.parametrize(
    ("flow", "kept"), [(Flow.IN, Direction.C2S), (Flow.OUT, Direction.S2C), (None, None)]
)
def test_direction_is_seen_from_the_server_of_addr(flow: Flow | None, kept: Direction) -> None:
    sel = Selection(flow=flow)
    for d in Direction:
        assert sel.keeps(CURL, d) == (kept is None or d is kept)


def test_direction_seen_from_a_pid_depends_on_which_end_it_holds() -> None:
    sel = selection_for(Selection(flow=Flow.IN), pid=4242)
    assert sel.pid is None, "without ADDR, --pid is the target, not a filter"
    assert sel.keeps(CURL, Direction.S2C) and not sel.keeps(CURL, Direction.C2S)  # client
    server_end = ClientInfo(77, 0, 0, "its-client")  # PID is the server: c2s comes in
    assert sel.keeps(server_end, Direction.C2S) and not sel.keeps(server_end, Direction.S2C)


@pytest.mark.parametrize("target", [{"inode": 5}, {"command": ["curl"]}])
def test_direction_of_an_inode_or_a_command_is_the_client_ends(target: dict[str, object]) -> None:
    sel = selection_for(Selection(flow=Flow.OUT, pid=9), **target)  # type: ignore[arg-type]
    assert sel.pid == 9, "with a target, --pid stays a filter"
    assert sel.keeps(CURL, Direction.C2S) and not sel.keeps(CURL, Direction.S2C)


def test_with_an_address_pid_stays_a_filter() -> None:
    sel = selection_for(Selection(pid=4242, flow=Flow.IN), address="/run/x.sock", pid=4242)
    assert sel == Selection(pid=4242, flow=Flow.IN)
