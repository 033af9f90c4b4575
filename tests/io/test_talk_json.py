"""connect --json and send --json: one JSON event per message, with the server's
credentials, read by jq (an outside judge of strict JSON)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from tests.conftest import Peers


def events(peers: Peers, out: bytes) -> list[dict[str, object]]:
    judged = peers.run("jq", "-c", ".", input=out)
    assert judged.returncode == 0, judged.stderr.decode()
    return [json.loads(line) for line in judged.stdout.splitlines()]


def test_connect_json_names_the_server_and_carries_the_bytes(peers: Peers, sockdir: Path) -> None:
    path = sockdir / "echo.sock"
    server = peers.start("socat", f"UNIX-LISTEN:{path},fork", "EXEC:cat", wait_for=path)
    payload = bytes(range(256))  # not text: the data field carries it exactly
    out = peers.udskit_run("connect", "--json", path, input=payload)
    assert out.returncode == 0, out.stderr.decode()
    got = events(peers, out.stdout)
    assert got[0]["event"] == "connected" and got[0]["address"] == str(path)
    assert got[0]["uid"] == os.getuid() and isinstance(got[0]["pid"], int)
    assert got[0]["pid"] in _tree(server.pid)  # socat's fork child holds the connection
    data = b"".join(base64.b64decode(str(e["data"])) for e in got if e["event"] == "data")
    assert data == payload and got[-1] == {"event": "closed"}


def test_send_json_one_reply_event_per_datagram(peers: Peers, sockdir: Path) -> None:
    path = sockdir / "upper.sock"
    peers.start("socat", f"UNIX-RECVFROM:{path},fork", "EXEC:tr a-z A-Z", wait_for=path)
    out = peers.udskit_run("send", "--json", "--type", "dgram", path, "one", "two")
    assert out.returncode == 0, out.stderr.decode()
    got = events(peers, out.stdout)
    assert got[0] == {"event": "connected", "type": "dgram", "address": str(path)}
    replies = [(e["message"], base64.b64decode(str(e["data"]))) for e in got[1:]]
    assert replies == [(1, b"ONE"), (2, b"TWO")]
    assert all(e["truncated"] is False for e in got[1:])


def _tree(pid: int) -> set[int]:
    """pid and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            # Bytes: a comm is any bytes (another test's process is named with 0xff).
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except OSError:
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        current = todo.pop()
        found.add(current)
        todo.extend(children.get(current, []))
    return found
