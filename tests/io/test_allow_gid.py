"""--allow-gid admits members through a supplementary group (SO_PEERGROUPS), on listen
and on relay (the engine the dump proxy uses too); clients run as nobody by setpriv."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Peers


def _as_nobody_with(groups: str, *argv: str) -> list[str]:
    return ["setpriv", "--reuid", "65534", "--regid", "65534", "--groups", groups, *argv]


@pytest.fixture
def root() -> None:
    if os.geteuid() != 0:
        pytest.fail("needs root to run clients as nobody with chosen groups")


@pytest.mark.usefixtures("root")
def test_listen_allow_gid_matches_supplementary_groups(peers: Peers, sockdir: Path) -> None:
    path = sockdir / "g.sock"
    server = peers.udskit(
        "listen", str(path), "--echo", "--concurrent", "--mode", "0666", "--allow-gid", "24",
        wait_for=path, listening=True,
    )  # fmt: skip
    member = peers.run(
        *_as_nobody_with("4,24", "socat", "-t5", "-", f"UNIX-CONNECT:{path}"), input=b"in\n"
    )
    assert member.stdout == b"in\n"
    outsider = peers.run(
        *_as_nobody_with("4", "socat", "-t5", "-", f"UNIX-CONNECT:{path}"), input=b"x\n"
    )
    assert outsider.stdout == b""
    _out, err = server.stop()
    assert b"refused a client" in err and b"uid 65534 gid 65534" in err


@pytest.mark.usefixtures("root")
def test_relay_allow_gid_matches_supplementary_groups(peers: Peers, sockdir: Path) -> None:
    back = sockdir / "back.sock"
    front = sockdir / "front.sock"
    peers.udskit("listen", str(back), "--echo", "--concurrent", wait_for=back, listening=True)
    relay = peers.udskit(
        "relay", "-v", f"unix-listen:{front}", str(back), "--mode", "0666", "--allow-gid", "24",
        wait_for=front, listening=True,
    )  # fmt: skip
    member = peers.run(
        *_as_nobody_with("24", "socat", "-t5", "-", f"UNIX-CONNECT:{front}"), input=b"ok\n"
    )
    assert member.stdout == b"ok\n"
    outsider = peers.run(
        *_as_nobody_with("4", "socat", "-t5", "-", f"UNIX-CONNECT:{front}"), input=b"no\n"
    )
    assert outsider.stdout == b""
    _out, err = relay.stop()
    assert b"refused" in err


def test_setpriv_is_there(peers: Peers) -> None:
    peers.require("setpriv", "socat")
    assert (
        subprocess.run(["setpriv", "--version"], capture_output=True, check=False).returncode == 0
    )
