"""The control-message codec against the kernel's layout (socket.CMSG_SPACE is libc's)."""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from udskit.cmsg import (
    MSG_CTRUNC,
    SCM_CREDENTIALS,
    SCM_MAX_FD,
    SCM_PIDFD,
    SCM_RIGHTS,
    SCM_SECURITY,
    SOL_SOCKET,
    Ucred,
    cmsg_len,
    cmsg_space,
    decode_ancillary,
    decode_groups,
    decode_rights,
    decode_ucred,
    encode_credentials,
    encode_rights,
    receive_space,
)


def test_constants_are_the_kernels() -> None:
    assert SOL_SOCKET == socket.SOL_SOCKET
    assert SCM_RIGHTS == socket.SCM_RIGHTS
    assert SCM_CREDENTIALS == socket.SCM_CREDENTIALS
    assert int(socket.MSG_CTRUNC) == MSG_CTRUNC


@given(st.integers(min_value=0, max_value=4096))
def test_sizes_match_libc(n: int) -> None:
    assert cmsg_space(n) == socket.CMSG_SPACE(n)
    assert cmsg_len(n) == socket.CMSG_LEN(n)


def test_receive_space_counts_each_part() -> None:
    assert receive_space(3) == socket.CMSG_SPACE(12)
    assert receive_space(0) == 0
    both = receive_space(2, credentials=True, pidfd=True)
    assert both == socket.CMSG_SPACE(8) + socket.CMSG_SPACE(12) + socket.CMSG_SPACE(4)


@given(st.lists(st.integers(min_value=0, max_value=2**31 - 1), min_size=1, max_size=SCM_MAX_FD))
def test_rights_round_trip(fds: list[int]) -> None:
    level, kind, data = encode_rights(fds)
    assert (level, kind) == (SOL_SOCKET, SCM_RIGHTS)
    assert decode_rights(data) == tuple(fds)


def test_rights_refuses_too_many_and_negative() -> None:
    with pytest.raises(ValueError, match="253"):
        encode_rights(list(range(SCM_MAX_FD + 1)))
    with pytest.raises(ValueError, match="-1"):
        encode_rights([3, -1])
    with pytest.raises(ValueError):
        encode_rights([])


def test_a_cut_rights_payload_keeps_whole_numbers() -> None:
    data = struct.pack("=3i", 5, 6, 7)
    assert decode_rights(data[:10]) == (5, 6)


def test_credentials_round_trip() -> None:
    _level, kind, data = encode_credentials(42, 1000, 100)
    assert kind == SCM_CREDENTIALS
    assert decode_ucred(data) == Ucred(42, 1000, 100)
    with pytest.raises(ValueError):
        decode_ucred(data[:8])


def test_groups() -> None:
    assert decode_groups(struct.pack("=3I", 4, 24, 65534)) == (4, 24, 65534)
    assert decode_groups(b"") == ()


def test_decode_everything_at_once() -> None:
    items = [
        encode_credentials(1, 2, 3),
        (SOL_SOCKET, SCM_PIDFD, struct.pack("=i", 9)),
        encode_rights([10, 11]),
        encode_rights([12]),
        (SOL_SOCKET, SCM_SECURITY, b"unconfined\0"),
        (41, 50, b"x"),
    ]
    got = decode_ancillary(items, MSG_CTRUNC)
    assert got.fds == (10, 11, 12)
    assert got.credentials == Ucred(1, 2, 3)
    assert got.pidfd == 9
    assert got.security_label == b"unconfined"
    assert got.truncated
    assert got.unknown == ((41, 50),)
    assert got.opened == (10, 11, 12, 9)


def test_nothing_decodes_to_nothing() -> None:
    got = decode_ancillary([])
    assert got.opened == () and got.credentials is None and not got.truncated
