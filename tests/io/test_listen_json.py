"""listen --json: one JSON event per line for everything a server does, judged by jq
(an outside judge of strict JSON), with real clients: socat, nc -U, and Python
clients run as user nobody, over stream, datagram and seqpacket sockets."""

from __future__ import annotations

import base64
import json
import os
import pwd
import signal
import sys
from pathlib import Path

import pytest

from tests.conftest import Peer, Peers, wait_until

NOBODY = pwd.getpwnam("nobody")

#: A client that connects (argv[1], type argv[2]), sends each remaining argument as a
#: message and reads every reply until the server closes; prints them one per line.
CLIENT = """\
import socket, sys
kind = {"stream": socket.SOCK_STREAM, "seqpacket": socket.SOCK_SEQPACKET}[sys.argv[2]]
s = socket.socket(socket.AF_UNIX, kind)
s.settimeout(30)
s.connect(sys.argv[1])
for message in sys.argv[3:]:
    s.sendall(message.encode())
    if kind == socket.SOCK_SEQPACKET:
        print(s.recv(1000).decode())
s.shutdown(socket.SHUT_WR)
while data := s.recv(1000):
    print(data.decode())
"""


RESETTING_CLIENT = """\
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(30)
s.connect(sys.argv[1])
s.sendall(b"x")
s.recv(1, socket.MSG_PEEK)  # the echo has arrived, and stays unread
s.close()
"""


def jq(peers: Peers, out: bytes, program: str = ".") -> list[dict[str, object]]:
    judged = peers.run("jq", "-c", program, input=out)
    assert judged.returncode == 0, judged.stderr.decode()
    return [json.loads(line) for line in judged.stdout.splitlines()]


def listen(peers: Peers, address: Path | str, *args: str) -> Peer:
    listening = None if "dgram" in args else True
    return peers.udskit("listen", "--json", *args, address, wait_for=address, listening=listening)


def finished(server: Peer) -> tuple[bytes, str]:
    status = server.wait(60)
    out, err = server.stop()
    assert status == 0, err.decode()
    return out, err.decode()


def data_of(events: list[dict[str, object]]) -> bytes:
    return b"".join(base64.b64decode(str(e["data"])) for e in events if e["event"] == "data")


def test_stream_clients_socat_and_nc(peers: Peers, sockdir: Path) -> None:
    path = sockdir / "print.sock"
    server = listen(peers, path, "--count", "2")
    binary = bytes(range(256))  # not UTF-8: base64 only
    # Not -u: socat waits for the server's close, so it is still there to be named.
    assert peers.run("socat", "-", f"UNIX-CONNECT:{path}", input=binary).returncode == 0
    assert peers.run("nc", "-U", "-N", path, input="héllo\n".encode()).returncode == 0
    out, _err = finished(server)
    events = jq(peers, out)
    assert events[0] == {
        "event": "listening",
        "type": "stream",
        "address": str(path),
        "pid": server.pid,
        "replaced_stale": False,
    }
    accepted = jq(peers, out, 'select(.event=="accepted") | [.connection, .command, .uid]')
    assert accepted == [[1, "socat", os.getuid()], [2, "nc", os.getuid()]]  # type: ignore[comparison-overlap]
    first = [e for e in events if e.get("connection") == 1]
    assert data_of(first) == binary
    assert all("text" not in e for e in first if e["event"] == "data")
    second = [e for e in events if e.get("connection") == 2 and e["event"] == "data"]
    assert "".join(str(e["text"]) for e in second) == "héllo\n"
    closed = jq(peers, out, 'select(.event=="closed") | [.connection, .bytes]')
    assert closed == [[1, 256], [2, len("héllo\n".encode())]]  # type: ignore[comparison-overlap]
    assert events[-1] == {
        "event": "stopped",
        "reason": "count",
        "connections": 2,
        "messages": len([e for e in events if e["event"] == "data"]),
        "bytes": 256 + 7,
        "refused": 0,
        "failed": 0,
    }


def test_another_users_client_is_named_and_refused_by_allow_uid(
    peers: Peers, sockdir: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("runs a client as user nobody: needs root")
    path = sockdir / "guarded.sock"
    server = listen(peers, path, "--echo", "--mode", "0666", "--allow-uid", "root", "--count", "1")
    refused = peers.run(*peers.as_nobody(sys.executable, "-c", CLIENT, path, "stream", "hi"))
    assert refused.stdout == b""  # turned away: no echo
    served = peers.run(*peers.as_nobody(sys.executable, "-c", CLIENT, path, "stream", "x"))
    assert served.stdout == b""
    echoed = peers.run("socat", "-", f"UNIX-CONNECT:{path}", input=b"root\n")
    assert echoed.stdout == b"root\n"
    out, err = finished(server)
    events = jq(peers, out, 'select(.event!="listening")')
    refusals = [e for e in events if e["event"] == "refused"]
    assert len(refusals) == 2
    for event in refusals:
        assert (event["uid"], event["gid"], event["groups"]) == (NOBODY.pw_uid, NOBODY.pw_gid, [])
        assert isinstance(event["pid"], int)
    accepted = [e for e in events if e["event"] == "accepted"]
    assert [(e["uid"], e["command"]) for e in accepted] == [(0, "socat")]
    assert data_of(events) == b"root\n"
    assert events[-1]["refused"] == 2 and events[-1]["connections"] == 1
    assert err.count("refused a client") == 2  # and the person at the terminal hears of it


def test_seqpacket_echo_concurrent_from_another_user(peers: Peers, sockdir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("runs a client as user nobody: needs root")
    path = sockdir / "seq.sock"
    server = listen(peers, path, "--type", "seqpacket", "--upper", "--concurrent", "--mode", "0666")
    client = peers.run(
        *peers.as_nobody(sys.executable, "-c", CLIENT, path, "seqpacket", "one", "two")
    )
    assert client.stdout == b"ONE\nTWO\n", client.stderr.decode()
    # The server runs until Ctrl-C: the client has its replies, so the data events
    # were written (each before its reply was sent).
    server.send_signal(signal.SIGINT)
    assert server.wait(60) == 130
    out, _err = server.stop()
    events = jq(peers, out)
    accepted = [e for e in events if e["event"] == "accepted"]
    assert [(e["uid"], e["gid"]) for e in accepted] == [(NOBODY.pw_uid, NOBODY.pw_gid)]
    records = jq(peers, out, 'select(.event=="data") | .text')
    assert records == ["one", "two"]  # type: ignore[comparison-overlap]
    assert events[-1]["event"] == "stopped" and events[-1]["reason"] == "interrupted"


def test_datagrams_carry_their_senders_address_and_credentials(peers: Peers, sockdir: Path) -> None:
    path = sockdir / "dgram.sock"
    client = sockdir / "client.sock"
    server = listen(peers, path, "--type", "dgram", "--upper", "--count", "2")
    sent = peers.run("socat", "-t", "1", "-", f"UNIX-SENDTO:{path},bind={client}", input=b"first")
    assert sent.stdout == b"FIRST", sent.stderr.decode()
    replies = peers.udskit_run("send", "--type", "dgram", path, "second")
    assert replies.stdout == b"SECOND\n"
    out, _err = finished(server)
    events = jq(peers, out, 'select(.event=="data")')
    assert [e["text"] for e in events] == ["first", "second"]
    assert events[0]["sender"] == str(client)
    assert str(events[1]["sender"]).startswith("@")  # udskit send autobinds
    assert all(e["uid"] == os.getuid() and isinstance(e["pid"], int) for e in events)
    assert "connection" not in events[0]


def test_a_reader_that_goes_away_stops_the_server_quietly(peers: Peers, sockdir: Path) -> None:
    path = sockdir / "head.sock"
    out_read, out_write = os.pipe()
    try:
        server = peers.udskit(
            "listen",
            "--json",
            path,
            "--concurrent",
            wait_for=path,
            listening=True,
            stdout=out_write,
        )
    finally:
        os.close(out_write)
    with os.fdopen(out_read, "rb") as reader:
        assert b'"listening"' in reader.readline()
    # The reader is gone (`| head -1`): the next event cannot be written.
    peers.run("socat", "-u", "-", f"UNIX-CONNECT:{path}", input=b"x")
    wait_until(lambda: server.proc.poll() is not None, what="the server to stop")
    _out, err = server.stop()
    assert server.proc.returncode == 0, err.decode()
    assert b"Traceback" not in err
    assert not path.exists()


def test_a_client_that_fails_is_closed_with_its_error_and_counted(
    peers: Peers, sockdir: Path
) -> None:
    path = sockdir / "echo.sock"
    server = listen(peers, path, "--echo", "--count", "2")
    # A client that leaves with the echo unread in its queue: the kernel resets the
    # connection (unix_release_sock), and the server's next read fails.
    reset = peers.run(sys.executable, "-c", RESETTING_CLIENT, path)
    assert reset.returncode == 0, reset.stderr.decode()
    assert peers.run("socat", "-", f"UNIX-CONNECT:{path}", input=b"ok\n").stdout == b"ok\n"
    out, err = finished(server)
    closed = jq(peers, out, 'select(.event=="closed")')
    assert "error" in closed[0] and "error" not in closed[1]
    assert str(closed[0]["error"]) in err  # the same words as the line for people
    stopped = jq(peers, out, 'select(.event=="stopped")')
    assert stopped[0]["failed"] == 1 and stopped[0]["connections"] == 2


def test_exec_connections_are_accepted_and_closed(peers: Peers, sockdir: Path) -> None:
    path = sockdir / "exec.sock"
    server = listen(peers, path, "--exec", "tr a-z A-Z", "--count", "1")
    assert peers.run("nc", "-U", "-N", path, input=b"shout\n").stdout == b"SHOUT\n"
    out, _err = finished(server)
    kinds = jq(peers, out, ".event")
    assert kinds == ["listening", "accepted", "closed", "stopped"]  # type: ignore[comparison-overlap]
