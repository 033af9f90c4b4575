"""Hostile names through every output: a process whose name (comm) and socket path hold a
newline, ESC sequences and a byte that is not UTF-8. No raw control byte may reach
stdout or stderr of any command; printed addresses paste back into `udskit connect`;
every JSON line passes a strict parser and jq."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import Peers
from tests.io.test_dump import start_dump, wait_for

#: 15 bytes at most (TASK_COMM_LEN - 1): a forged line, a clear-screen, a byte not UTF-8.
COMM = b'e"v\n\x1b[2J\xff'
NAME = b"x\n\x1b[1m\xfe.sock"

HOSTILE_SERVER = """\
import os, socket, sys
with open("/proc/self/comm", "wb") as f:
    f.write(bytes.fromhex(sys.argv[2]))
srv = socket.socket(socket.AF_UNIX)
srv.bind(os.fsencode(sys.argv[1]))
srv.listen(16)
while True:
    c, _ = srv.accept()
    while data := c.recv(65536):
        c.sendall(data.upper())
    c.close()
"""

HOSTILE_CLIENT = """\
import os, socket, sys
with open("/proc/self/comm", "wb") as f:
    f.write(bytes.fromhex(sys.argv[2]))
s = socket.socket(socket.AF_UNIX)
s.connect(os.fsencode(sys.argv[1]))
s.sendall(b"hello")
print(s.recv(100).decode())
"""

_CONTROL = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]|\xc2[\x80-\x9f]")


def assert_clean(what: str, data: bytes) -> None:
    """No control byte but newline and tab, no C1 control, and valid UTF-8."""
    found = _CONTROL.search(data)
    assert found is None, f"{what}: raw control byte {found.group()!r} in {data!r}"
    data.decode("utf-8")  # strict


def assert_json_lines(peers: Peers, what: str, data: bytes, *, document: bool = False) -> None:
    for line in [data] if document else data.splitlines():
        json.loads(line.decode("utf-8"))  # strict UTF-8, strict JSON
    jq = peers.run("jq", "-c", ".", input=data)
    assert jq.returncode == 0, f"{what}: jq says {jq.stderr!r}"


def run_all(peers: Peers, *args: str | os.PathLike[str]) -> subprocess.CompletedProcess[bytes]:
    result = peers.udskit_run(*args)
    assert_clean(f"udskit {' '.join(map(str, args))} stdout", result.stdout)
    assert_clean(f"udskit {' '.join(map(str, args))} stderr", result.stderr)
    return result


def client(peers: Peers, path: bytes) -> bytes:
    return peers.run(sys.executable, "-c", HOSTILE_CLIENT, os.fsdecode(path), COMM.hex()).stdout


def test_hostile_comm_and_path_through_every_output(
    peers: Peers, sockdir: Path, tmp_path: Path
) -> None:
    path = os.fsencode(sockdir) + b"/" + NAME
    peers.start(sys.executable, "-c", HOSTILE_SERVER, os.fsdecode(path), COMM.hex(), wait_for=None)
    wait_for(lambda: os.path.lexists(path), what="the hostile server's socket")
    assert client(peers, path) == b"HELLO\n"

    # ls: the table, -c, --json; the printed address pastes back into connect.
    table = run_all(peers, "ls", f"{sockdir}/*")
    assert b"\\x1b[2J" in table.stdout and b"\\x0a" in table.stdout
    run_all(peers, "ls", "-c", f"{sockdir}/*")
    listing = run_all(peers, "ls", "--json", f"{sockdir}/*")
    assert_json_lines(peers, "ls --json", listing.stdout, document=True)
    document = json.loads(listing.stdout)
    sockets = document if isinstance(document, list) else document["sockets"]
    owners = [o for s in sockets for o in s.get("processes") or []]
    assert {base64.b64decode(o["command_b64"]) for o in owners if "command_b64" in o} == {COMM}
    printed = {s["address"] for s in sockets if s.get("state") == "listen"}
    assert len(printed) == 1
    (address,) = printed
    pasted = run_all(peers, "connect", address)  # stdin is empty: connects and ends
    assert pasted.returncode == 0

    # EADDRINUSE: the holder's name in the error line.
    in_use = run_all(peers, "listen", address)
    assert in_use.returncode == 1 and b"\\x1b[2J" in in_use.stderr

    # dump: live lines and JSON, a pcapng file, and reading it back.
    pcap = tmp_path / "hostile.pcapng"
    for args in (["--json"], ["-w", str(pcap), "--print"]):
        dump = start_dump(peers, Path(os.fsdecode(path)), *args)
        assert client(peers, path) == b"HELLO\n"
        os.kill(dump.pid, signal.SIGINT)
        out, err = dump.proc.communicate(timeout=60)
        assert dump.proc.returncode == 130, err
        assert_clean(f"dump {args} stdout", out)
        assert_clean(f"dump {args} stderr", err)
        if args == ["--json"]:
            assert_json_lines(peers, "dump --json", out)
            records = [json.loads(line) for line in out.splitlines()]
            assert {r["path"] for r in records} == {address}  # ls and dump agree
            assert {base64.b64decode(r["command_b64"]) for r in records} == {COMM}
    read_back = run_all(peers, "dump", "-r", pcap)
    assert b"\\x1b[2J" in read_back.stdout
    read_json = run_all(peers, "dump", "-r", pcap, "--json")
    assert_json_lines(peers, "dump -r --json", read_json.stdout)
    assert {json.loads(line)["path"] for line in read_json.stdout.splitlines()} == {address}

    # relay -v and listen -v: a hostile client's name in their log lines.
    front = sockdir / "front.sock"
    relay = peers.udskit("relay", "-v", f"unix-listen:{front}", address, stdout=subprocess.PIPE)
    wait_for(front.exists, what="the relay's socket")
    assert client(peers, os.fsencode(front)) == b"HELLO\n"
    os.kill(relay.pid, signal.SIGINT)
    out, err = relay.proc.communicate(timeout=30)
    assert_clean("relay -v stdout", out)
    assert_clean("relay -v stderr", err)
    assert b"\\x1b[2J" in out + err

    echo = sockdir / "echo.sock"
    listen = peers.udskit("listen", "-v", "--echo", echo, stdout=subprocess.PIPE)
    wait_for(echo.exists, what="the listener's socket")
    client(peers, os.fsencode(echo))
    os.kill(listen.pid, signal.SIGINT)
    out, err = listen.proc.communicate(timeout=30)
    assert_clean("listen -v stdout", out)
    assert_clean("listen -v stderr", err)
    assert b"\\x1b[2J" in err
