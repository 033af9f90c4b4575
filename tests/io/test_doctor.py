"""udskit doctor on broken situations built for real: each verdict names the true cause.

Every server here is a real program (socat, python, udskit listen) started through
`peers` and killed by PID at teardown; namespaces come from util-linux's unshare.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import UDSKIT, Peer, Peers, wait_until
from tests.io.test_safe_bind import make_stale
from udskit.inspect.owners import read_proc_net_unix

#: A listener that never calls accept(): its queue fills up. argv: PATH BACKLOG.
NEVER_ACCEPTS = (
    "import socket, sys, time\n"
    "s = socket.socket(socket.AF_UNIX)\n"
    "s.bind(sys.argv[1])\n"
    "s.listen(int(sys.argv[2]))\n"
    "time.sleep(300)\n"
)


def doctor(peers: Peers, *args: str | os.PathLike[str]) -> tuple[int, dict[str, Any]]:
    """Run `udskit doctor --json`; the exit status and {check name: check}."""
    out = peers.udskit_run("doctor", "--json", *args)
    assert b"Traceback" not in out.stderr, out.stderr
    document = json.loads(out.stdout.decode("utf-8"))  # strict UTF-8
    checks = {c["name"]: c for c in document["checks"]}
    assert document["works"] is (out.returncode == 0)
    return out.returncode, checks


def problems(checks: dict[str, Any]) -> list[str]:
    return [name for name, c in checks.items() if c["verdict"] == "problem"]


def test_healthy_socket_passes_and_the_server_sees_no_byte(peers: Peers, sockdir: Path) -> None:
    path = sockdir / "ok.sock"
    server = peers.udskit("listen", path, "--concurrent", wait_for=path, listening=True)
    status, checks = doctor(peers, path)
    assert status == 0
    assert problems(checks) == []
    assert checks["listener"]["verdict"] == "ok"
    assert checks["owner"]["found"].startswith(f"held by pid {server.pid} (")
    assert checks["connect"]["verdict"] == "ok"
    assert "closed without sending a byte" in checks["connect"]["found"]
    # The human form says so too, and exits 0.
    human = peers.udskit_run("doctor", path)
    assert human.returncode == 0
    assert human.stdout.decode().splitlines()[-1] == f"{path} works."
    out, _err = server.stop()
    assert out == b""  # udskit listen prints what clients send: nothing was sent


def test_stale_file(peers: Peers, sockdir: Path) -> None:
    path = sockdir / "stale.sock"
    make_stale(path)
    status, checks = doctor(peers, path)
    assert status == 1
    assert checks["listener"]["verdict"] == "problem"
    assert checks["listener"]["found"].startswith("stale socket file: nothing is bound to it")
    assert "left by uid 0 (root)" in checks["listener"]["found"]
    assert "ECONNREFUSED" in checks["connect"]["found"]
    assert checks["connect"]["fix"] == "see the listener check above"
    assert problems(checks) == ["listener", "connect"]
    assert path.exists()  # doctor never removes anything


def test_missing_directory(peers: Peers, sockdir: Path) -> None:
    status, checks = doctor(peers, sockdir / "nodir" / "deeper" / "x.sock")
    assert status == 1
    assert checks["path"]["found"] == f"directory {sockdir}/nodir does not exist"
    assert f"mkdir -p {sockdir}/nodir" in checks["path"]["fix"]
    assert "ENOENT" in checks["connect"]["found"]
    assert problems(checks) == ["path", "connect"]


def test_regular_file(peers: Peers, sockdir: Path) -> None:
    path = sockdir / "plain.sock"
    path.write_text("not a socket\n")
    status, checks = doctor(peers, path)
    assert status == 1
    assert checks["file"]["found"].startswith(f"{path} is a regular file, not a socket")
    assert checks["listener"]["verdict"] == "skipped"
    assert problems(checks) == ["file", "connect"]
    assert path.read_text() == "not a socket\n"


def test_directory_without_search_permission_for_nobody(peers: Peers, sockdir: Path) -> None:
    private = sockdir / "private"
    private.mkdir(mode=0o700)
    path = private / "s.sock"
    peers.udskit("listen", path, "--mode", "0666", "--concurrent", wait_for=path, listening=True)
    status, checks = doctor(peers, path, "--as-user", "nobody")
    assert status == 1
    assert checks["permissions"]["found"] == (
        f"uid 65534 (nobody) lacks search (x) permission on directory {private} "
        "(mode 0700, owner root:root): connect() fails with EACCES"
    )
    assert f"chmod o+x {private}" in checks["permissions"]["fix"]
    # The real connect ran as nobody and the kernel agreed.
    assert "connect as uid 65534 (nobody) failed" in checks["connect"]["found"]
    assert "EACCES" in checks["connect"]["found"]
    assert problems(checks) == ["permissions", "connect"]
    # Root may pass: the same address works for the user running doctor.
    assert doctor(peers, path)[0] == 0


def test_dgram_listener_asked_as_stream(peers: Peers, sockdir: Path) -> None:
    path = sockdir / "dgram.sock"
    peers.start("socat", f"UNIX-RECVFROM:{path},fork", "EXEC:cat", wait_for=path)
    status, checks = doctor(peers, path, "--type", "stream")
    assert status == 1
    assert checks["type"]["found"] == (
        "the socket is a datagram socket, asked for stream: connect() fails with EPROTOTYPE"
    )
    assert checks["type"]["fix"] == "use --type dgram"
    assert "EPROTOTYPE" in checks["connect"]["found"]
    assert problems(checks) == ["type", "connect"]
    # Without --type, doctor connects with the type that is there: a datagram
    # connect() only, nothing sent (socat would run cat for a datagram).
    status, checks = doctor(peers, path)
    assert status == 0
    assert checks["backlog"]["verdict"] == "skipped"
    assert checks["dgram-peer"]["verdict"] == "ok"
    assert "no datagram sent" in checks["connect"]["found"]


def test_dgram_send_test_gets_the_reply(peers: Peers, sockdir: Path) -> None:
    path = sockdir / "echo.sock"
    peers.udskit("listen", path, "--type", "dgram", "--echo", wait_for=path)
    status, checks = doctor(peers, path, "--send-test")
    assert status == 0
    assert "a 0-byte datagram was sent" in checks["connect"]["found"]
    assert "reply came back" in checks["connect"]["found"]


@pytest.fixture
def full_backlog(peers: Peers, sockdir: Path) -> Iterator[tuple[Path, Peer, int]]:
    """A listener with backlog 1 that never accepts, its queue filled by us."""
    path = sockdir / "full.sock"
    server = peers.start(
        sys.executable, "-c", NEVER_ACCEPTS, path, "1", wait_for=path, listening=True
    )
    fillers: list[socket.socket] = []
    try:
        while True:
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            fillers.append(client)
            try:
                client.connect(str(path))
            except BlockingIOError:
                break
        yield path, server, len(fillers) - 1
    finally:
        for client in fillers:
            client.close()


def _pending(path: Path) -> int:
    from udskit.inspect.lister import bound_socket_at

    sock = bound_socket_at(path)
    assert sock is not None and sock.recv_q is not None
    return sock.recv_q


def test_full_backlog(peers: Peers, full_backlog: tuple[Path, Peer, int]) -> None:
    path, server, queued = full_backlog
    assert _pending(path) == queued == 2  # the kernel takes backlog + 1 (unix_recvq_full)
    status, checks = doctor(peers, path)
    assert status == 1
    assert checks["backlog"]["found"].startswith(
        "the accept queue is full: 2 connections wait, the backlog is 1"
    )
    assert f"pid {server.pid} (python" in checks["backlog"]["fix"]
    assert "EAGAIN" in checks["connect"]["found"]
    assert problems(checks) == ["backlog", "connect"]
    assert _pending(path) == queued  # doctor added nothing to the queue


def _bound_in(pid: int, name: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/net/unix", "rb") as f:
            return any(line.endswith(b" @" + name) for line in f.read().splitlines())
    except OSError:
        return False


def test_abstract_name_only_in_another_network_namespace(peers: Peers, abstract_name: str) -> None:
    name = abstract_name[1:]
    socat = peers.start("unshare", "-n", "socat", f"ABSTRACT-LISTEN:{name},fork", "EXEC:cat")
    wait_until(lambda: _bound_in(socat.pid, name.encode()), what="socat in its netns")
    netns = os.readlink(f"/proc/{socat.pid}/ns/net")
    assert netns != os.readlink("/proc/self/ns/net")
    status, checks = doctor(peers, abstract_name)
    assert status == 1
    listener = checks["listener"]["found"]
    assert f"nothing is bound to {abstract_name} in this network namespace" in listener
    assert f"it is bound in {netns}, held by pid {socat.pid} (socat" in listener
    assert checks["namespace"]["verdict"] == "problem"
    assert (
        f"nsenter -t {socat.pid} -n -- udskit connect {abstract_name}"
        in (checks["namespace"]["fix"])
    )
    assert "ECONNREFUSED" in checks["connect"]["found"]


def test_socket_in_another_mount_namespace(peers: Peers) -> None:
    # A container's private /tmp: a tmpfs over /tmp, seen by the listener alone.
    path = f"/tmp/udskit-doctor-{os.getpid()}.sock"
    script = f"mount -t tmpfs private /tmp && exec socat UNIX-LISTEN:{path},fork EXEC:cat"
    socat = peers.start("unshare", "-m", "--propagation", "private", "sh", "-c", script)
    wait_until(
        lambda: any(e.name == path.encode() and e.listening for e in read_proc_net_unix()),
        what="socat in its mount namespace",
    )
    assert not os.path.exists(path)
    status, checks = doctor(peers, path)
    assert status == 1
    via = f"/proc/{socat.pid}/root{path}"
    assert checks["path"]["found"] == (
        f"no file {path} in this mount namespace; but pid {socat.pid} (socat, user root) "
        f"has it in its own mount namespace, reachable from here as {via}"
    )
    assert checks["namespace"]["verdict"] == "problem"
    assert "another mount namespace" in checks["namespace"]["found"]
    assert checks["listener"]["found"].startswith(
        f"not here, but in the mount namespace of pid {socat.pid} (socat"
    )
    assert "ENOENT" in checks["connect"]["found"]
    # The way doctor points at works.
    assert doctor(peers, via)[0] == 0


def test_odd_names_are_escaped_and_json_is_utf8(peers: Peers, sockdir: Path) -> None:
    raw = os.fsencode(sockdir) + b"/bad\xff\nname.sock"
    probe = socket.socket(socket.AF_UNIX)
    probe.bind(raw)
    probe.close()  # a stale file with a newline and a non-UTF-8 byte in its name
    out = peers.run(*UDSKIT, "doctor", os.fsdecode(raw))
    assert out.returncode == 1
    text = out.stdout.decode("utf-8")  # strict
    assert f"{sockdir}/bad\\xff\\x0aname.sock" in text
    assert all(line.isprintable() for line in text.splitlines())
    status, checks = doctor(peers, os.fsdecode(raw))
    assert status == 1 and "stale socket file" in checks["listener"]["found"]


def test_connected_datagram_receiver_refuses_other_senders(peers: Peers, sockdir: Path) -> None:
    path, other = sockdir / "picky.sock", sockdir / "other.sock"
    script = (
        "import socket, sys, time\n"
        "o = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); o.bind(sys.argv[2])\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind(sys.argv[1])\n"
        "s.connect(sys.argv[2])\n"
        "time.sleep(300)\n"
    )
    peers.start(sys.executable, "-c", script, path, other, wait_for=path)
    status, checks = doctor(peers, path)
    assert status == 1
    assert checks["dgram-peer"]["found"].startswith(
        f"the datagram socket is connect()ed to {other} (inode"
    )
    assert "EPERM" in checks["connect"]["found"]


def test_bad_address_exits_2(peers: Peers) -> None:
    out = peers.udskit_run("doctor", "@bad\\q")
    assert out.returncode == 2
    assert "bad escape in abstract name" in out.stdout.decode()
    usage = peers.udskit_run("doctor", "/tmp/x.sock", "--as-user", "no-such-user-here")
    assert usage.returncode == 2
    assert usage.stderr.decode() == "udskit doctor: no such user: 'no-such-user-here'\n"


def test_help_teaches(peers: Peers) -> None:
    out = subprocess.run([*UDSKIT, "doctor", "--help"], capture_output=True, check=True)
    text = out.stdout.decode()
    assert "examples:" in text and "exit statuses:" in text and "--as-user" in text
