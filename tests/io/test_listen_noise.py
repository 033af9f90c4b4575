"""A server with many failing clients says so in a few lines, not one line per client."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
from pathlib import Path

from tests.conftest import UDSKIT, Peers

CLIENTS = 300


def test_reset_clients_are_counted_not_listed(peers: Peers, sockdir: Path) -> None:
    path = sockdir / "noisy.sock"
    server = peers.udskit("listen", path, "--echo", "--concurrent", wait_for=path)
    for _ in range(CLIENTS):
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))
            # Send until the server's queue is full, then leave without reading: the
            # server has echo to send to a closed peer, so each one fails (EPIPE).
            client.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while True:
                    client.send(b"x" * 65536)
    server.send_signal(signal.SIGINT)
    assert server.wait(30) == 130
    _out, err = server.stop()
    lines = err.decode().splitlines()
    failed = [line for line in lines if "a client failed:" in line]
    assert failed, lines  # at least one client did fail, and was explained once
    assert len(lines) <= 3 * len(failed) + 2, lines  # first, a few milestones, a total
    totals = [line for line in lines if "clients failed in all:" in line]
    counted = sum(int(line.split("listen: ")[1].split()[0]) for line in totals)
    assert counted + len(failed) - len(totals) <= CLIENTS
    assert all(line.startswith("udskit listen: ") for line in lines), lines


def test_a_refused_client_is_told_why_it_got_nothing(peers: Peers, sockdir: Path) -> None:
    path = sockdir / "picky.sock"
    peers.udskit("listen", path, "--echo", "--allow-uid", "0", "--mode", "0666", wait_for=path)
    # stdin stays open: the request has not ended when the server turns nobody away.
    client = peers.start(*peers.as_nobody(*UDSKIT, "connect", path), stdin=subprocess.PIPE)
    status = client.wait(30)
    _out, err = client.stop()
    assert status == 1, err
    (line,) = err.decode().splitlines()
    assert "closed the connection before the request ended" in line
    assert "--allow-uid" in line
