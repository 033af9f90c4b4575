"""The one errno table of a liveness probe, on every (probe type, errno) pair."""

from __future__ import annotations

import errno

import pytest

from udskit.probe import LIVENESS_TABLE, Liveness, judge_liveness
from udskit.socktype import SocketType

EVERY_ERR = [0, *sorted(errno.errorcode)]


def expected(probe: SocketType, err: int, is_socket: bool) -> Liveness:
    """The table written out as rules, independently of LIVENESS_TABLE."""
    if err in (errno.ENOENT, errno.ENOTDIR):
        return Liveness.GONE
    if err == errno.EPROTOTYPE:
        return Liveness.LIVE  # something of another type is bound
    if probe is SocketType.DGRAM:
        if err in (0, errno.EPERM):
            return Liveness.LIVE
        if err == errno.ECONNREFUSED and is_socket:
            return Liveness.STALE
        return Liveness.UNKNOWN
    if err in (0, errno.EAGAIN):
        return Liveness.LIVE  # accepted, or a full backlog
    return Liveness.UNKNOWN  # ECONNREFUSED included: maybe bound but not listening yet


@pytest.mark.parametrize("probe", list(SocketType), ids=lambda t: t.value)
def test_every_errno_of_every_probe(probe: SocketType) -> None:
    for err in EVERY_ERR:
        for is_socket in (True, False):
            got = judge_liveness(probe, err, is_socket=is_socket)
            name = errno.errorcode.get(err, "0")
            assert got is expected(probe, err, is_socket), (probe, name, is_socket)


def test_only_a_refused_datagram_probe_on_a_socket_file_proves_stale() -> None:
    stale = [
        (probe, err, is_socket)
        for probe in SocketType
        for err in EVERY_ERR
        for is_socket in (True, False)
        if judge_liveness(probe, err, is_socket=is_socket) is Liveness.STALE
    ]
    assert stale == [(SocketType.DGRAM, errno.ECONNREFUSED, True)]


def test_permission_denied_is_never_proof() -> None:
    for probe in SocketType:
        assert judge_liveness(probe, errno.EACCES) is Liveness.UNKNOWN


def test_every_row_says_why() -> None:
    for (probe, err), (_verdict, why) in LIVENESS_TABLE.items():
        assert len(why) > 20, (probe, err)
