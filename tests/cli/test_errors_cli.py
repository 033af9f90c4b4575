"""Every error a user can cause: provoked for real, one line, the right advice, no traceback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from tests.conftest import UDSKIT, Peers
from tests.io.test_safe_bind import make_stale


def one_line(result: subprocess.CompletedProcess[bytes]) -> str:
    text = result.stderr.decode()
    assert "Traceback" not in text
    assert text.count("\n") == 1, f"expected one line, got: {text!r}"
    return text.rstrip("\n")


def test_enoent_names_the_missing_directory(peers: Peers, sockdir: Path) -> None:
    out = peers.udskit_run("connect", sockdir / "nodir" / "x.sock")
    assert out.returncode == 1
    assert one_line(out) == (
        f"udskit connect: connect {sockdir}/nodir/x.sock: no such file (ENOENT): "
        f"directory {sockdir}/nodir does not exist; create it or fix the path "
        f"(`udskit doctor {sockdir}/nodir/x.sock` explains more)"
    )


def test_enoent_when_only_the_socket_is_missing(peers: Peers, sockdir: Path) -> None:
    out = peers.udskit_run("send", sockdir / "gone.sock", "--type", "dgram", "x")
    assert "its directory exists); is the server running?" in one_line(out)


def test_econnrefused_on_a_stale_file(peers: Peers, sockdir: Path) -> None:
    path = sockdir / "stale.sock"
    make_stale(path)
    out = peers.udskit_run("connect", path)
    assert out.returncode == 1
    line = one_line(out)
    assert "connection refused (ECONNREFUSED)" in line
    assert "a stale file left by a dead server" in line


def test_econnrefused_on_an_abstract_name(peers: Peers, abstract_name: str) -> None:
    line = one_line(peers.udskit_run("connect", abstract_name))
    assert f"nothing is bound to {abstract_name} in this network namespace" in line


def test_eacces_on_the_socket_file_as_nobody(peers: Peers, sockdir: Path) -> None:
    path = sockdir / "root-only.sock"
    peers.udskit("listen", path, "--mode", "0600", wait_for=path, listening=True)
    out = peers.run(*peers.as_nobody(*UDSKIT, "connect", path))
    assert out.returncode == 1
    assert one_line(out) == (
        f"udskit connect: connect {path}: permission denied (EACCES): uid 65534 (nobody) "
        f"lacks write permission on socket file {path} (mode 0600, owner root:root), which "
        "connect needs; have the server grant it (`udskit listen --mode 0660 --group "
        f"GROUP`) or run as an allowed user (`udskit doctor {path}` explains more)"
    )


def test_eacces_on_a_private_directory_as_nobody(peers: Peers, sockdir: Path) -> None:
    private = sockdir / "private"
    private.mkdir(mode=0o700)
    path = private / "s.sock"
    peers.udskit("listen", path, wait_for=path, listening=True)
    line = one_line(peers.run(*peers.as_nobody(*UDSKIT, "connect", path)))
    assert f"lacks search (x) permission on directory {private} (mode 0700" in line


def test_eacces_when_binding_in_a_directory_nobody_may_not_write(
    peers: Peers, sockdir: Path
) -> None:
    line = one_line(peers.run(*peers.as_nobody(*UDSKIT, "listen", sockdir / "x.sock")))
    assert line.startswith(f"udskit listen: listen {sockdir}/x.sock: permission denied (EACCES)")
    assert f"lacks write permission on directory {sockdir} (mode 0755, owner root:root)" in line
    assert "use an abstract name" in line


def test_eprototype_names_the_real_type(peers: Peers, sockdir: Path) -> None:
    path = sockdir / "dgram.sock"
    peers.start("socat", f"UNIX-RECVFROM:{path},fork", "EXEC:cat", wait_for=path)
    out = peers.udskit_run("connect", path, "--type", "stream")
    assert one_line(out) == (
        f"udskit connect: connect {path}: wrong socket type (EPROTOTYPE): {path} is a "
        f"datagram socket; use --type dgram (`udskit doctor {path}` explains more)"
    )
    seq = one_line(peers.udskit_run("send", path, "--type", "seqpacket", "x"))
    assert "is a datagram socket; use --type dgram" in seq


def test_eaddrinuse_on_abstract_names_the_owner(peers: Peers, abstract_name: str) -> None:
    socat = peers.start(
        "socat",
        f"ABSTRACT-LISTEN:{abstract_name[1:]},fork",
        "EXEC:cat",
        wait_for=abstract_name,
        listening=True,
    )
    line = one_line(peers.udskit_run("listen", abstract_name))
    assert f"{abstract_name} is already bound by pid {socat.pid} (socat)" in line


def test_emsgsize_says_the_limit(peers: Peers, sockdir: Path) -> None:
    path = sockdir / "big.sock"
    peers.udskit("listen", path, "--type", "dgram", wait_for=path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        sndbuf = s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    size = sndbuf + 100_000
    out = peers.udskit_run("connect", path, "--type", "dgram", input=b"x" * size + b"\n")
    assert out.returncode == 1
    assert one_line(out) == (
        f"udskit connect: send {path}: message too long (EMSGSIZE): {size} bytes do not fit "
        f"in one datagram here (SO_SNDBUF is {sndbuf} bytes); send smaller messages or "
        "raise SO_SNDBUF"
    )


def test_eagain_when_the_receiver_queue_is_full(peers: Peers, sockdir: Path) -> None:
    path = sockdir / "full.sock"
    # A real receiver that never reads: socat stopped with SIGSTOP.
    socat = peers.start("socat", "-u", f"UNIX-RECV:{path}", "OPEN:/dev/null", wait_for=path)
    socat.send_signal(signal.SIGSTOP)
    try:
        with open("/proc/sys/net/unix/max_dgram_qlen") as f:
            qlen = int(f.read())
        messages = [f"m{i}" for i in range(qlen + 50)]
        out = peers.udskit_run(
            "send", path, "--type", "dgram", "--no-reply", "--timeout", "0.5", *messages
        )
    finally:
        socat.send_signal(signal.SIGCONT)
    assert out.returncode == 1
    line = one_line(out)
    assert "resource temporarily unavailable (EAGAIN)" in line
    assert f"the receiver's queue is full (net.unix.max_dgram_qlen is {qlen})" in line


def test_peer_going_away_mid_stream(peers: Peers, sockdir: Path) -> None:
    path = sockdir / "short.sock"
    peers.udskit("listen", path, "--exec", "head -c 10 >/dev/null", wait_for=path, listening=True)
    out = peers.udskit_run("connect", path, input=os.urandom(8 * 1024 * 1024))
    assert out.returncode == 1
    line = one_line(out)
    assert "(EPIPE)" in line or "(ECONNRESET)" in line
    assert "the peer closed the connection" in line


def test_path_too_long(peers: Peers) -> None:
    path = "/tmp/" + "x" * 120
    out = peers.udskit_run("connect", path)
    assert out.returncode == 2
    assert one_line(out) == (
        "udskit connect: path too long for sun_path: 125 bytes, the limit is 107 (108 with "
        "the NUL); use a shorter path, or chdir to its directory and use a relative name"
    )


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["connect", "@bad\\q"], "bad escape in abstract name"),
        (["listen", "*"], "cannot listen on an unnamed address"),
        (["listen", "@x", "--mode", "0600"], "apply to socket files; @x is abstract"),
        (["listen", "/tmp/x.sock", "--mode", "999"], "not an octal mode"),
        (["listen", "/tmp/x.sock", "--owner", "no-such-user-here"], "no such user"),
        (["send", "/tmp/x.sock", "--type", "bogus", "m"], "invalid choice"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_is_usage_status_2(peers: Peers, argv: list[str], expected: str) -> None:
    out = peers.udskit_run(*argv)
    assert out.returncode == 2
    assert expected in one_line(out)


def test_owner_change_refused_leaves_no_file(peers: Peers, sockdir: Path) -> None:
    open_dir = sockdir / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    path = open_dir / "x.sock"
    for _attempt in range(2):  # the second must not trip over a leftover of the first
        line = one_line(peers.run(*peers.as_nobody(*UDSKIT, "listen", path, "--owner", "root")))
        assert "operation not permitted (EPERM)" in line
        assert "needs root (CAP_CHOWN)" in line
        assert not path.exists()


def test_stream_send_gives_up_after_timeout(peers: Peers, sockdir: Path) -> None:
    path = sockdir / "mute.sock"
    # A real server that reads and never answers nor closes.
    peers.start("socat", f"UNIX-LISTEN:{path},fork", "EXEC:sleep 30", wait_for=path, listening=True)
    out = peers.udskit_run("send", path, "--timeout", "0.5", "hello")
    assert out.returncode == 1
    assert "did not close the connection within 0.5 s" in one_line(out)
