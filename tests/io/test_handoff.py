"""Listener hand-off between unrelated processes, under load from curl, and its failures."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, Peer, Peers, free_port, tcp_listening, wait_until
from udskit import HandoffError
from udskit.address import UnixAddress, parse_address
from udskit.ancillary import fd_count
from udskit.handoff import ListenerInfo, take_listeners
from udskit.probe import is_bound

HTTP_SERVER = str(ROOT / "tests" / "data" / "plain_http_server.py")
#: How long the client loops run (bounded, as the issue asks).
LOAD_SECONDS = 5.0


class CurlLoop:
    """curl, one request after another, for LOAD_SECONDS; keeps every outcome."""

    def __init__(self, *target: str) -> None:
        self.target = list(target)
        self.outcomes: list[tuple[int, str, str]] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.started = threading.Event()

    def _run(self) -> None:
        deadline = time.monotonic() + LOAD_SECONDS
        while time.monotonic() < deadline:
            self.run_once()
            self.started.set()

    def run_once(self) -> None:
        """One request, its outcome kept."""
        proc = subprocess.run(
            ["curl", "-sS", "--fail", "--max-time", "30", *self.target],
            capture_output=True,
            timeout=30,
            check=False,
        )
        self.outcomes.append((proc.returncode, proc.stdout.decode(), proc.stderr.decode()))

    def start(self) -> CurlLoop:
        self.thread.start()
        return self

    def join(self) -> None:
        self.thread.join(60)

    @property
    def failures(self) -> list[tuple[int, str, str]]:
        return [o for o in self.outcomes if o[0] != 0]

    def names(self) -> list[str]:
        """The backend names in answer order, repeats collapsed."""
        seen: list[str] = []
        for _code, body, _err in self.outcomes:
            name = body.split(" ")[0]
            if not seen or seen[-1] != name:
                seen.append(name)
        return seen


def _backend(peers: Peers, name: str, path: Path) -> Peer:
    return peers.start(sys.executable, HTTP_SERVER, name, str(path), wait_for=path, listening=True)


def test_relay_handoff_under_load_refuses_nobody(peers: Peers, sockdir: Path) -> None:
    """Two curl loops (over a socket file and over TCP 127.0.0.1) run for 5 s while a
    second pair of relays takes the listeners from the first: no request fails, the
    answers switch from backend A to backend B, and the first relays exit by themselves."""
    peers.require("curl")
    a, b = sockdir / "a.sock", sockdir / "b.sock"
    _backend(peers, "A", a)
    _backend(peers, "B", b)
    front = sockdir / "front.sock"
    port = free_port()
    ctl_unix, ctl_tcp = sockdir / "unix.ctl", sockdir / "tcp.ctl"
    lefts = (f"unix-listen:{front}", f"tcp-listen:127.0.0.1:{port}")
    controls = (ctl_unix, ctl_tcp)
    old = [
        peers.udskit("relay", left, str(a), "--handoff", str(ctl), wait_for=ctl)
        for left, ctl in zip(lefts, controls, strict=True)
    ]
    wait_until(lambda: tcp_listening(port), what="the TCP relay")
    loops = [
        CurlLoop("--unix-socket", str(front), "http://front/").start(),
        CurlLoop(f"http://127.0.0.1:{port}/").start(),
    ]
    for loop in loops:
        assert loop.started.wait(10)
    time.sleep(1.5)  # some requests to A first (the outcome is checked, not the timing)
    new = [
        peers.udskit("relay", left, str(b), "--handoff", str(ctl), "--must-take")
        for left, ctl in zip(lefts, controls, strict=True)
    ]
    for relay in old:
        assert relay.wait(30) == 0  # drained and exited on its own
    for loop in loops:
        loop.join()
    for loop in loops:
        assert loop.failures == [], loop.failures[:3]
        assert loop.names() == ["A", "B"], loop.names()
        assert len(loop.outcomes) > 10
    for relay in old:
        _out, err = relay.stop()
        assert b"handed the listeners to pid" in err
    assert front.exists()  # the new relay's now, not removed by the old one
    for relay in new:
        assert relay.proc.poll() is None
        relay.stop(signal.SIGTERM)
    assert not front.exists() and not ctl_unix.exists()


def test_listen_handoff_hands_over_an_echo_server(peers: Peers, sockdir: Path) -> None:
    path = sockdir / "echo.sock"
    ctl = f"@udskit-test-{os.getpid()}-listen-handoff"
    first = peers.udskit("listen", str(path), "--echo", "--concurrent", "--handoff", ctl)
    wait_until(lambda: is_bound(path_address(path), listening=True), what="the first listener")
    wait_until(lambda: is_bound(path_address(ctl), listening=True), what="the control socket")
    assert peers.run("socat", "-t5", "-", f"UNIX-CONNECT:{path}", input=b"one\n").stdout == b"one\n"
    second = peers.udskit("listen", str(path), "--echo", "--handoff", ctl, "--must-take")
    assert first.wait(30) == 0
    _out, err = first.stop()
    assert b"handed the listeners" in err
    assert peers.run("socat", "-t5", "-", f"UNIX-CONNECT:{path}", input=b"two\n").stdout == b"two\n"
    second.stop(signal.SIGTERM)
    assert not path.exists()


def path_address(path: str | Path) -> UnixAddress:
    return parse_address(str(path))


def test_nobody_offering_is_one_clear_line(peers: Peers, sockdir: Path) -> None:
    ctl = sockdir / "nobody.ctl"
    with pytest.raises(HandoffError, match="nobody offers listeners on") as caught:
        take_listeners(str(ctl), [ListenerInfo("unix", "stream", str(sockdir / "x.sock"))])
    assert "\n" not in str(caught.value)
    result = peers.udskit_run(
        "relay", f"unix-listen:{sockdir / 'x.sock'}", "unix:/nonexistent", "--handoff",
        str(ctl), "--must-take",
    )  # fmt: skip
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 1
    assert len(lines) == 1 and "nobody offers listeners on" in lines[0], lines
    assert not (sockdir / "x.sock").exists()


def test_an_offer_of_the_wrong_type_is_refused_and_nothing_leaks(
    peers: Peers, sockdir: Path
) -> None:
    path = sockdir / "seq.sock"
    ctl = sockdir / "seq.ctl"
    old = peers.udskit(
        "listen", str(path), "--type", "seqpacket", "--echo", "--handoff", str(ctl), wait_for=ctl
    )
    before = fd_count()
    with pytest.raises(HandoffError, match="as a seqpacket socket, not stream") as caught:
        take_listeners(str(ctl), [ListenerInfo("unix", "stream", str(path))])
    assert "\n" not in str(caught.value)
    assert fd_count() == before  # the descriptors that came with the offer were closed
    result = peers.udskit_run("listen", str(path), "--handoff", str(ctl), "--must-take")
    assert result.returncode == 1
    assert len(result.stderr.decode().splitlines()) == 1, result.stderr
    # The old server keeps serving, and its socket file is still there.
    assert old.proc.poll() is None
    reply = peers.udskit_run(
        "send", str(path), "--type", "seqpacket", "--timeout", "30", "still here"
    )
    assert reply.stdout == b"still here\n"


def test_a_different_user_may_not_take_the_listeners(peers: Peers, sockdir: Path) -> None:
    """An abstract control name has no permissions; the offerer checks the peer's uid."""
    if os.geteuid() != 0:
        pytest.fail("needs root to run a client as nobody")
    path = sockdir / "mine.sock"
    ctl = f"@udskit-test-{os.getpid()}-uid-check"
    old = peers.udskit("listen", str(path), "--echo", "--handoff", ctl, wait_for=path)
    wait_until(lambda: is_bound(path_address(ctl), listening=True), what="the control socket")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = peers.run(
        *peers.as_nobody(
            sys.executable, "-m", "udskit", "listen", str(sockdir / "other.sock"), "--handoff",
            ctl, "--must-take",
        ),
        env=env,
    )  # fmt: skip
    assert result.returncode == 1
    assert b"refused" in result.stderr
    assert old.proc.poll() is None


def test_the_library_moves_the_very_socket(sockdir: Path) -> None:
    """offer_listeners in one thread, take_listeners here: the same kernel socket (one
    inode) changes hands, and before_release runs before the taker goes on."""
    from udskit import offer_listeners
    from udskit.endpoints import open_listener

    ctl = sockdir / "lib.ctl"
    released = threading.Event()
    with open_listener(sockdir / "lib.sock") as listener:
        inode = os.fstat(listener.fileno()).st_ino
        offering = threading.Thread(
            target=offer_listeners, args=(str(ctl), [listener.sock]),
            kwargs={"before_release": released.set}, daemon=True,
        )  # fmt: skip
        offering.start()
        wait_until(lambda: is_bound(path_address(ctl), listening=True), what="the offer")
        [taken] = take_listeners(str(ctl), [ListenerInfo("unix", "stream", str(listener.address))])
        offering.join(10)
        with taken:
            assert released.is_set() and not offering.is_alive()
            assert os.fstat(taken.fileno()).st_ino == inode
            assert not ctl.exists()  # the control address is free for the taker


def test_datagram_handoff_is_refused_in_one_line(peers: Peers, sockdir: Path) -> None:
    result = peers.udskit_run(
        "listen", str(sockdir / "d.sock"), "--type", "dgram", "--handoff", str(sockdir / "c")
    )
    assert result.returncode == 2
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and "not datagrams" in lines[0], lines
    assert not (sockdir / "d.sock").exists()
