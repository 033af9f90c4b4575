"""A server with many failing clients says so in a few lines, not one line per client."""

from __future__ import annotations

import contextlib
import signal
import socket
from pathlib import Path

from tests.conftest import Peers

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
