"""Every invalid value a careless script could pass: one line on stderr, the documented
exit status, no traceback, nothing left behind; and the boundary values that are valid
still work against a real server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import UDSKIT, Peers, wait_until

# (argv after `udskit`, a piece of the one line that must explain it)
INVALID: list[tuple[list[str], str]] = [
    (["send", "{sock}", "--timeout", "-1", "a"], "must be more than 0"),
    (["send", "{sock}", "--timeout", "0", "a"], "must be more than 0"),
    (["send", "{sock}", "--timeout", "nan", "a"], "finite number of seconds"),
    (["send", "{sock}", "--timeout", "inf", "a"], "finite number of seconds"),
    (["send", "{sock}", "--timeout", "86400.5", "a"], "more than the maximum"),
    (["send", "{sock}", "--timeout", "soon", "a"], "not a number of seconds"),
    (["send", "{sock}", "--reply-size", "99999999999", "a"], "more than the maximum"),
    (["send", "{sock}", "--reply-size", "67108865", "a"], "more than the maximum"),
    (["send", "{sock}", "--reply-size", "0", "a"], "must be positive"),
    (["connect", "{sock}", "--wait", "-0.5"], "must be 0"),
    (["connect", "{sock}", "--buffer", "5000000000"], "more than the maximum"),
    (["listen", "{sock}", "--buffer", "99999999999"], "more than the maximum"),
    (["listen", "{sock}", "--buffer", "5000000000"], "more than the maximum"),
    (["listen", "{sock}", "--buffer", "-3"], "must be positive"),
    (["listen", "{sock}", "--mode", "07777"], "setuid, setgid and sticky"),
    (["listen", "{sock}", "--mode", "01000"], "setuid, setgid and sticky"),
    (["listen", "{sock}", "--mode", "0999"], "not an octal mode"),
    (["listen", "{sock}", "-c", "0"], "must be positive"),
    (["dump", "{sock}", "--grace", "nan"], "finite number of seconds"),
    (["dump", "{sock}", "--grace", "inf"], "finite number of seconds"),
    (["dump", "{sock}", "--grace", "-1"], "must be 0"),
    (["dump", "{sock}", "-c", "0"], "must be positive"),
    (["dump", "{sock}", "--snaplen", "-1"], "must be positive"),
    (["dump", "{sock}", "-w", "-", "-A"], "writes the capture to standard output"),
    (["dump", "{sock}", "--uid", "no-such-user-here"], "no such user"),
    (["dump", "{sock}", "-Q", "sideways"], "invalid choice"),
    (["connect", "@"], "a client connects to a name"),
    (["send", "@", "hi"], "a client connects to a name"),
    (["connect", "*"], "a client connects to a name"),
    (["demo", "--outdir", "/proc/x/y"], "cannot create it"),
    (["bench", "--duration", "nan"], "--duration"),
    (["bench", "--rounds", "0"], "--rounds"),
]


@pytest.mark.parametrize(("argv", "why"), INVALID, ids=[" ".join(a) for a, _ in INVALID])
def test_an_invalid_value_is_one_line_and_exit_2(
    peers: Peers, sockdir: Path, argv: list[str], why: str
) -> None:
    sock = sockdir / "never.sock"
    args = [a.format(sock=sock) for a in argv]
    before = sorted(os.listdir(sockdir))
    out = peers.udskit_run(*args, timeout=30)
    err = out.stderr.decode()
    assert out.returncode == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"udskit {args[0]}: ") and why in lines[0], lines[0]
    assert sorted(os.listdir(sockdir)) == before  # nothing created, nothing removed


def test_the_boundary_values_are_accepted(peers: Peers, sockdir: Path) -> None:
    sock = sockdir / "edge.sock"
    peers.udskit(
        "listen",
        sock,
        "--type",
        "dgram",
        "--echo",
        "--buffer",
        "67108864",
        "--mode",
        "0777",
        wait_for=sock,
    )
    # A datagram socket is bound (and waited for) before its mode is opened up: the
    # file is born 0000 and chmodded once its inode is checked.
    wait_until(lambda: os.stat(sock).st_mode & 0o7777 == 0o777, what="mode 0777")
    out = peers.udskit_run(
        "send",
        sock,
        "--type",
        "dgram",
        "--timeout",
        "86400",
        "--reply-size",
        "67108864",
        "edge",
    )
    assert (out.returncode, out.stdout) == (0, b"edge\n"), out.stderr.decode()
    out = peers.udskit_run("send", sock, "--type", "dgram", "--timeout", "0.001", "x")
    assert "Traceback" not in out.stderr.decode()


def test_usage_errors_are_listed_in_help() -> None:
    import subprocess

    out = subprocess.run([*UDSKIT, "--help"], capture_output=True, check=False)
    text = out.stdout.decode()
    assert out.returncode == 0
    for status in ("0", "1", "2", "129", "130", "143"):
        assert f"\n  {status} " in text
