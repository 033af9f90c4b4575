"""udskit doctor in-process (Env over byte buffers): exit statuses and both output forms."""

from __future__ import annotations

import io
import json
import socket
from pathlib import Path

import pytest

from tests.conftest import Peers
from udskit.cli import main
from udskit.cli.env import Env, ExitStatus
from udskit.doctor import CHECK_NAMES, doctor


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.BytesIO(), io.StringIO()
    status = main(argv, Env(stdin=io.BytesIO(), stdout=out, stderr=err))
    return status, out.getvalue().decode("utf-8"), err.getvalue()


def test_exit_0_on_a_nc_listener_and_1_once_it_is_gone(peers: Peers, sockdir: Path) -> None:
    path = sockdir / "nc.sock"
    nc = peers.start("nc", "-lU", path, wait_for=path, listening=True)
    status, out, err = run(["doctor", str(path)])
    assert (status, err) == (ExitStatus.OK, "")
    assert out.splitlines()[-1] == f"{path} works."
    assert f"held by pid {nc.pid} (nc" in out
    nc.stop()  # OpenBSD nc leaves its socket file behind: a stale file
    status, out, _ = run(["doctor", str(path), "--json"])
    assert status == ExitStatus.FAILED
    document = json.loads(out)
    assert [c["name"] for c in document["checks"]] == list(CHECK_NAMES)
    verdicts = {c["name"]: c["verdict"] for c in document["checks"]}
    assert verdicts["listener"] == verdicts["connect"] == "problem"


def test_library_and_command_line_agree(sockdir: Path) -> None:
    path = sockdir / "lib.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as server:
        server.bind(str(path))
        server.listen(1)
        diagnosis = doctor(str(path))
        assert diagnosis.connected
        assert diagnosis.check("type").found.startswith("the socket is seqpacket")
        status, out, _ = run(["doctor", str(path), "--json", "--type", "stream"])
    assert status == ExitStatus.FAILED
    problems = [c["name"] for c in json.loads(out)["checks"] if c["verdict"] == "problem"]
    assert problems == ["type", "connect"]


def test_bad_address_is_a_usage_error(sockdir: Path) -> None:
    status, out, _ = run(["doctor", "@bad\\q"])
    assert status == ExitStatus.USAGE
    assert "bad escape in abstract name" in out
    with pytest.raises(SystemExit) as exited:  # argparse exits on bad options
        run(["doctor", str(sockdir / "x.sock"), "--type", "bogus"])
    assert exited.value.code == ExitStatus.USAGE
