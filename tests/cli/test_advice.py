"""Advice that is true for the case at hand, not the generic 'is the server running?'."""

from __future__ import annotations

from tests.conftest import Peers


def test_a_stream_client_of_an_abstract_datagram_socket_is_told_the_type(
    peers: Peers, abstract_name: str
) -> None:
    peers.udskit("listen", abstract_name, "--type", "dgram", "--upper", wait_for=abstract_name)
    out = peers.udskit_run("send", abstract_name, "--type", "stream", "hi")
    (line,) = out.stderr.decode().splitlines()
    assert out.returncode == 1
    assert "is a datagram socket; use --type dgram" in line
    assert "is the server running" not in line


def test_binding_where_no_file_can_be_made_says_so(peers: Peers) -> None:
    out = peers.udskit_run("listen", "/proc/udskit-test.sock")
    (line,) = out.stderr.decode().splitlines()
    assert out.returncode == 1
    assert "/proc takes no new files" in line and "is the server running" not in line
