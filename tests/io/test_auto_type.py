"""Without --type, connect, send and relay's connect side use the type bound at the
address (read from sock_diag, no connection made); an explicit --type that does not
match still fails with the EPROTOTYPE message."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Peers


@pytest.mark.parametrize("sock_type", ["dgram", "seqpacket"])
def test_send_without_type_gets_the_reply(peers: Peers, sockdir: Path, sock_type: str) -> None:
    path = sockdir / f"{sock_type}.sock"
    peers.udskit(
        "listen", path, "--type", sock_type, "--echo", wait_for=path, listening=sock_type != "dgram"
    )
    out = peers.udskit_run("send", path, "hello")
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"hello\n"


def test_send_to_socat_datagram_server_without_type(peers: Peers, sockdir: Path) -> None:
    path = sockdir / "socat-dgram.sock"
    peers.start("socat", f"UNIX-RECVFROM:{path},fork", "EXEC:tr a-z A-Z", wait_for=path)
    out = peers.udskit_run("send", path, "hello")
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"HELLO\n"


def test_send_to_socat_seqpacket_server_without_type(peers: Peers, sockdir: Path) -> None:
    path = sockdir / "socat-seq.sock"
    peers.start(
        "socat",
        f"UNIX-LISTEN:{path},type=5,fork",
        "EXEC:cat",
        wait_for=path,
        listening=True,
    )
    out = peers.udskit_run("send", path, "one", "two")
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"one\ntwo\n"


def test_connect_without_type_on_a_datagram_server(peers: Peers, sockdir: Path) -> None:
    path = sockdir / "upper.sock"
    peers.udskit("listen", path, "--type", "dgram", "--upper", wait_for=path)
    out = peers.udskit_run("connect", path, "--wait", "2", input=b"line one\nline two\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"LINE ONE\nLINE TWO\n"


def test_an_explicit_type_that_does_not_match_still_fails(peers: Peers, sockdir: Path) -> None:
    path = sockdir / "dgram.sock"
    peers.udskit("listen", path, "--type", "dgram", "--echo", wait_for=path)
    out = peers.udskit_run("send", path, "--type", "stream", "hello")
    assert out.returncode == 1
    assert out.stderr.decode() == (
        f"udskit send: connect {path}: wrong socket type (EPROTOTYPE): {path} is a datagram "
        f"socket; use --type dgram (`udskit doctor {path}` explains more)\n"
    )


def test_relay_connect_side_takes_the_bound_type(peers: Peers, sockdir: Path) -> None:
    back = sockdir / "back.sock"
    front = sockdir / "front.sock"
    peers.udskit("listen", back, "--type", "seqpacket", "--upper", wait_for=back, listening=True)
    peers.udskit("relay", f"unix-listen:{front}", back, wait_for=front, listening=True)
    out = peers.udskit_run("send", front, "--type", "seqpacket", "through", "relay")
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"THROUGH\nRELAY\n"


def test_relay_datagram_upstream_without_type(peers: Peers, sockdir: Path) -> None:
    back = sockdir / "dback.sock"
    front = sockdir / "dfront.sock"
    peers.start("socat", f"UNIX-RECVFROM:{back},fork", "EXEC:tr a-z A-Z", wait_for=back)
    peers.udskit("relay", f"unix-listen:{front}", back, wait_for=front)
    out = peers.udskit_run("send", front, "datagram")
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"DATAGRAM\n"
