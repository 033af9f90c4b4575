"""The command line in-process (Env over byte buffers), against real servers."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

from tests.conftest import UDSKIT, Peers
from udskit.cli import main
from udskit.cli.env import Env, ExitStatus


def run(argv: list[str], stdin: bytes = b"") -> tuple[int, bytes, str]:
    out, err = io.BytesIO(), io.StringIO()
    status = main(argv, Env(stdin=io.BytesIO(stdin), stdout=out, stderr=err))
    return status, out.getvalue(), err.getvalue()


def test_send_and_connect_in_process(peers: Peers, sockdir: Path) -> None:
    path = str(sockdir / "ucase")
    peers.start("socat", f"UNIX-RECVFROM:{path},fork", "EXEC:tr a-z A-Z", wait_for=path)
    status, out, err = run(["send", path, "--type", "dgram", "in", "process"])
    assert (status, out, err) == (ExitStatus.OK, b"IN\nPROCESS\n", "")
    status, out, _ = run(["connect", path, "--type", "dgram"], stdin=b"line one\nline two\n")
    assert status == ExitStatus.OK
    assert sorted(out.splitlines()) == [b"LINE ONE", b"LINE TWO"]


def test_listen_count_in_process_with_nc(peers: Peers, sockdir: Path) -> None:
    path = sockdir / "count.sock"
    client = peers.start(
        "sh",
        "-c",
        f"while [ ! -S {path} ]; do sleep 0.01; done; printf 'from nc' | nc -N -U {path}",
    )
    status, out, err = run(["listen", str(path), "--count", "1"])
    client.wait()
    assert (status, out, err) == (ExitStatus.OK, b"from nc", "")
    assert not path.exists()


def test_errors_in_process_are_one_line(sockdir: Path) -> None:
    status, out, err = run(["connect", str(sockdir / "missing.sock")])
    assert status == ExitStatus.FAILED and out == b""
    assert err.startswith("udskit connect: connect ") and err.count("\n") == 1


def test_entry_point_help_lists_exit_statuses() -> None:
    result = subprocess.run([*UDSKIT, "--help"], capture_output=True, check=True)
    text = result.stdout.decode()
    for needle in ("exit statuses:", "130", "143", "@name", "listen", "relay", "dump", "ls"):
        assert needle in text
    for command in ("listen", "connect", "send"):
        sub = subprocess.run([*UDSKIT, command, "--help"], capture_output=True, check=True)
        assert b"examples:" in sub.stdout
