"""probe_liveness on real sockets: each row of its table that the kernel will produce."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import UDSKIT, Peers
from udskit.probe import Liveness, probe_liveness
from udskit.socktype import SocketType


def test_a_file_left_by_a_dead_server_is_stale(sockdir: Path) -> None:
    path = sockdir / "dead.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()
    assert probe_liveness(str(path)) is Liveness.STALE
    # A stream probe is refused too, but cannot tell this from a server not listening yet.
    assert probe_liveness(str(path), SocketType.STREAM) is Liveness.UNKNOWN


def test_a_stream_listener_is_live_and_sees_no_connection(peers: Peers, sockdir: Path) -> None:
    path = sockdir / "socat.sock"
    # socat prints every connection it accepts (-d -d); the probe must make none.
    socat = peers.start(
        "socat", "-d", "-d", f"UNIX-LISTEN:{path}", "EXEC:cat", wait_for=path, listening=True
    )
    assert probe_liveness(str(path)) is Liveness.LIVE  # EPROTOTYPE
    assert probe_liveness(path.as_posix().encode()) is Liveness.LIVE
    _out, err = socat.stop()
    assert b"accepting connection" not in err


def test_a_socket_bound_but_not_listening_yet_is_live(sockdir: Path) -> None:
    path = sockdir / "starting.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
        assert probe_liveness(str(path)) is Liveness.LIVE  # EPROTOTYPE, no listen needed
        assert probe_liveness(str(path), SocketType.STREAM) is Liveness.UNKNOWN


def test_a_seqpacket_listener_is_live(peers: Peers, sockdir: Path) -> None:
    path = sockdir / "seq.sock"
    peers.start("socat", f"UNIX-LISTEN:{path},type=5", "EXEC:cat", wait_for=path, listening=True)
    assert probe_liveness(str(path)) is Liveness.LIVE


def test_a_bound_datagram_socket_is_live(peers: Peers, sockdir: Path) -> None:
    path = sockdir / "dgram.sock"
    peers.start("socat", f"UNIX-RECVFROM:{path},fork", "EXEC:cat", wait_for=path)
    assert probe_liveness(str(path)) is Liveness.LIVE  # the connect succeeds


def test_a_datagram_socket_connected_elsewhere_is_live(sockdir: Path) -> None:
    path, other = sockdir / "busy.sock", sockdir / "other.sock"
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as busy,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as peer,
    ):
        peer.bind(str(other))
        busy.bind(str(path))
        busy.connect(str(other))
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        with probe:
            assert probe.connect_ex(str(path)) == errno.EPERM  # unix_may_send
        assert probe_liveness(str(path)) is Liveness.LIVE


def test_a_full_backlog_is_live_for_a_stream_probe(sockdir: Path) -> None:
    path = sockdir / "full.sock"
    clients: list[socket.socket] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(0)
        try:
            while True:  # fill the backlog (it never accepts)
                c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                c.setblocking(False)
                clients.append(c)
                err = c.connect_ex(str(path))
                if err == errno.EAGAIN:
                    break
                assert err == 0 and len(clients) < 100
            assert probe_liveness(str(path), SocketType.STREAM) is Liveness.LIVE
            assert probe_liveness(str(path)) is Liveness.LIVE
        finally:
            for c in clients:
                c.close()


def test_a_missing_path_is_gone(sockdir: Path) -> None:
    assert probe_liveness(str(sockdir / "none.sock")) is Liveness.GONE
    assert probe_liveness(str(sockdir / "no-dir" / "x.sock")) is Liveness.GONE


def test_a_regular_file_is_not_called_stale(sockdir: Path) -> None:
    path = sockdir / "plain"
    path.write_bytes(b"")  # connect() answers ECONNREFUSED here too
    assert probe_liveness(str(path)) is Liveness.UNKNOWN


def test_a_file_we_may_not_connect_to_is_unknown(peers: Peers, sockdir: Path) -> None:
    """EACCES: nobody may not write the root-owned 0600 file, dead or alive."""
    dead = sockdir / "dead.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(dead))
    s.close()
    os.chmod(dead, 0o600)
    code = (
        "import sys; from udskit.probe import probe_liveness; "
        "print(probe_liveness(sys.argv[1]).value)"
    )
    out = subprocess.run(
        Peers.as_nobody(sys.executable, "-c", code, str(dead)),
        capture_output=True,
        check=True,
        timeout=60,
    )
    assert out.stdout == b"unknown\n"
    # And so `udskit ls --stale` run by nobody does not list it; run by root, it does.
    as_nobody = peers.run(*Peers.as_nobody(*UDSKIT, "ls", "--stale", sockdir))
    assert as_nobody.returncode == 0 and str(dead).encode() not in as_nobody.stdout
    as_root = peers.udskit_run("ls", "--stale", sockdir)
    assert str(dead).encode() in as_root.stdout


def test_listen_never_replaces_a_file_it_may_not_probe(peers: Peers, sockdir: Path) -> None:
    """The same UNKNOWN in listen's safe bind: nobody is told, and the file stays."""
    dead = sockdir / "theirs.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(dead))
    s.close()
    os.chmod(dead, 0o600)
    out = peers.run(*Peers.as_nobody(*UDSKIT, "listen", dead))
    assert out.returncode == 1
    line = out.stderr.decode()
    assert line.count("\n") == 1, line
    assert "we may not check whether it is live" in line
    assert dead.exists()
