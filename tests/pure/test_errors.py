"""Error messages: one line naming the operation, the address, the errno and a fix."""

from __future__ import annotations

import errno

from udskit.errors import PeerClosed, SocketError, UdskitError, describe, socket_error


def test_message_names_operation_address_errno_and_hint() -> None:
    text = describe("connect", "/run/a.sock", errno.ECONNREFUSED)
    assert text.startswith("connect /run/a.sock: connection refused (ECONNREFUSED): ")
    assert "stale" in text and "udskit ls --stale" in text
    assert "\n" not in text


def test_specific_detail_wins_over_generic_hint() -> None:
    text = describe("connect", "/x", errno.EPROTOTYPE, "/x is a datagram socket; use --type dgram")
    assert (
        text
        == "connect /x: wrong socket type (EPROTOTYPE): /x is a datagram socket; use --type dgram"
    )


def test_peer_gone_is_its_own_class() -> None:
    err = socket_error("send", "@x", errno.EPIPE)
    assert isinstance(err, PeerClosed) and isinstance(err, SocketError)
    assert isinstance(err, UdskitError) and isinstance(err, OSError)
    assert err.errno == errno.EPIPE
    assert not isinstance(socket_error("send", "@x", errno.EAGAIN), PeerClosed)
