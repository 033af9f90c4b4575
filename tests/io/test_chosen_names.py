"""Names the kernel chooses (a TCP port 0, an autobound abstract name) are printed at
start, and a client that uses what was printed reaches the service."""

from __future__ import annotations

import re
import socket
import sys
from pathlib import Path

import pytest

from tests.conftest import Peer, Peers, wait_until
from tests.io.test_dump import ECHO_SERVER
from udskit.address import parse_address


def first_line(peer: Peer, pattern: str) -> re.Match[str]:
    """Read the peer's stderr until a line matches `pattern` (bounded by the peer's end)."""
    assert peer.proc.stderr is not None
    seen = []
    while line := peer.proc.stderr.readline().decode(errors="replace"):
        seen.append(line)
        if match := re.search(pattern, line):
            return match
    raise AssertionError(f"no line like {pattern!r} in {seen}")


def echo_server(peers: Peers, sockdir: Path) -> Path:
    sock = sockdir / "echo.sock"
    peers.start(sys.executable, "-c", ECHO_SERVER, sock, "stream", wait_for=sock)
    return sock


def test_relay_prints_the_tcp_port_it_was_given(peers: Peers, sockdir: Path) -> None:
    upstream = echo_server(peers, sockdir)
    relay = peers.udskit("relay", "tcp-listen:0", f"unix:{upstream}")
    port = int(first_line(relay, r"listening on tcp-listen:127\.0\.0\.1:(\d+)$").group(1))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(b"ping")
        assert client.recv(100) == b"PING"  # the test server answers in upper case


@pytest.mark.parametrize("notation", ["abstract-listen:@", "seqpacket:abstract-listen:@"])
def test_relay_prints_the_autobound_name(peers: Peers, sockdir: Path, notation: str) -> None:
    kind = "seqpacket" if notation.startswith("seqpacket") else "stream"
    upstream = sockdir / "echo.sock"
    peers.start(sys.executable, "-c", ECHO_SERVER, upstream, kind, wait_for=upstream)
    prefix = "seqpacket:" if kind == "seqpacket" else ""
    relay = peers.udskit("relay", notation, f"{prefix}unix:{upstream}")
    printed = first_line(relay, r"listening on (?:seqpacket:)?abstract-listen:(@\S+)$").group(1)
    address = parse_address(printed)
    sock_type = socket.SOCK_SEQPACKET if kind == "seqpacket" else socket.SOCK_STREAM
    with socket.socket(socket.AF_UNIX, sock_type) as client:
        client.settimeout(10)
        client.connect(address.to_sockaddr())
        client.sendall(b"ping")
        assert client.recv(100) == b"PING"  # the test server answers in upper case


def test_dump_listen_prints_the_autobound_name(peers: Peers, sockdir: Path) -> None:
    upstream = echo_server(peers, sockdir)
    dump = peers.udskit("dump", "--listen", "@", upstream)
    printed = first_line(dump, r"capturing clients of (@\S+),").group(1)
    address = parse_address(printed)
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(10)
        client.connect(address.to_sockaddr())
        client.sendall(b"ping")
        assert client.recv(100) == b"PING"  # the test server answers in upper case
    dump.send_signal(2)
    assert dump.wait(30) == 130
    wait_until(lambda: dump.proc.poll() is not None)
