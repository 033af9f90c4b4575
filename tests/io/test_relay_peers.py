"""`udskit relay` as a user runs it, with clients and servers nobody here wrote:
curl, python's http.server, redis, socat; signals; 500 clients at once."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest

from tests.conftest import Peer, Peers, free_port, tcp_listening, wait_until

#: python's http.server on a unix socket (it only binds TCP by itself).
UNIX_HTTP = r"""
import http.server, socketserver, sys
class Handler(http.server.SimpleHTTPRequestHandler):
    def address_string(self):
        return "unix"
class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
Server(sys.argv[1], Handler).serve_forever()
"""

#: An echo server for the load test: asyncio, one task per client.
ECHO = r"""
import asyncio, sys
async def echo(reader, writer):
    while data := await reader.read(1 << 16):
        writer.write(data)
        await writer.drain()
    writer.close()
async def main():
    server = await asyncio.start_unix_server(echo, sys.argv[1], backlog=1024)
    await server.serve_forever()
asyncio.run(main())
"""


def _fds(pid: int) -> dict[str, str]:
    """A process's descriptors and what each names."""
    found = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            found[fd] = os.readlink(f"/proc/{pid}/fd/{fd}")
    return found


def start_relay(
    peers: Peers, *args: str, tcp_port: int | None = None, stdout: IO[bytes] | None = None
) -> Peer:
    wait_for = next((a.split(":", 1)[1] for a in args if a.startswith("unix-listen:")), None)
    abstract = next((a.split(":", 1)[1] for a in args if a.startswith("abstract-listen:")), None)
    target = wait_for or (f"@{abstract}" if abstract else None)
    listening = True if target else None
    if stdout is None:
        relay = peers.udskit("relay", *args, wait_for=target, listening=listening)
    else:
        relay = peers.udskit("relay", *args, wait_for=target, listening=listening, stdout=stdout)
    if tcp_port is not None:
        wait_until(lambda: tcp_listening(tcp_port), what=f"relay on port {tcp_port}")
    return relay


def _listens_at(path: Path) -> Callable[[], bool]:
    from udskit.inspect.lister import bound_socket_at
    from udskit.sockdiag import SocketState

    def check() -> bool:
        found = bound_socket_at(path)
        return found is not None and found.state is SocketState.LISTEN

    return check


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    (root / "hello.txt").write_text("hello from behind the relay\n")
    return root


def test_curl_over_tcp_reaches_http_server_on_unix_socket(
    peers: Peers, sockdir: Path, site: Path
) -> None:
    backend = sockdir / "web.sock"
    peers.start(sys.executable, "-c", UNIX_HTTP, backend, cwd=site, wait_for=backend)
    port = free_port()
    start_relay(peers, f"tcp-listen:127.0.0.1:{port}", f"unix:{backend}", tcp_port=port)
    result = peers.run("curl", "-sS", "--max-time", "20", f"http://127.0.0.1:{port}/hello.txt")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello from behind the relay\n"


@pytest.mark.parametrize("how", ["--unix-socket", "--abstract-unix-socket"])
def test_curl_over_unix_reaches_tcp_http_server(
    peers: Peers, sockdir: Path, site: Path, abstract_name: str, how: str
) -> None:
    port = free_port()
    peers.start(sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port), cwd=site)
    wait_until(lambda: tcp_listening(port), what="http.server")
    if how == "--unix-socket":
        front = str(sockdir / "front.sock")
        start_relay(peers, f"unix-listen:{front}", f"tcp:127.0.0.1:{port}")
    else:
        front = abstract_name[1:]
        start_relay(peers, f"abstract-listen:{front}", f"tcp:127.0.0.1:{port}")
    result = peers.run("curl", "-sS", "--max-time", "20", how, front, "http://x/hello.txt")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello from behind the relay\n"


def test_man_in_the_middle_with_one_relay(peers: Peers, sockdir: Path, site: Path) -> None:
    """The seed's set-up (mv the socket aside; socat UNIX-LISTEN -> TCP -> socat
    UNIX-CONNECT; tcpdump on the TCP hop) with one relay that shows the traffic."""
    app = sockdir / "app.sock"
    peers.start(sys.executable, "-c", UNIX_HTTP, app, cwd=site, wait_for=app)
    os.rename(app, f"{app}.orig")
    relay = start_relay(peers, "-vv", f"unix-listen:{app}", f"unix:{app}.orig")
    # The server's socket keeps the bound name app.sock after the rename, so the wait
    # above can see it before the relay listens: wait for the file at app.sock itself.
    wait_until(_listens_at(app), what="the relay to listen at app.sock")
    result = peers.run(
        "curl", "-sS", "--max-time", "20", "--unix-socket", app, "http://x/hello.txt"
    )
    assert result.stdout == b"hello from behind the relay\n", result.stderr
    wait_until(lambda: not _clients_open(relay), what="the connection to close")
    _out, err = relay.stop(signal.SIGTERM)
    assert relay.proc.returncode == 143
    log = err.decode()
    assert "-> " in log and "GET /hello.txt HTTP/1.1" in log  # the request, as seen
    assert "<- " in log and "HTTP/1.0 200 OK" in log  # the answer
    assert "(curl)" in log  # who the client was (SO_PEERCRED + /proc/PID/comm)
    assert not app.exists()  # the relay's socket file is gone; the original stays
    assert Path(f"{app}.orig").exists()


def _clients_open(relay: Peer) -> int:
    """Sockets the relay holds beyond its listener, from /proc/PID/fd."""
    return (
        sum(
            os.readlink(f"/proc/{relay.pid}/fd/{fd}").startswith("socket:")
            for fd in os.listdir(f"/proc/{relay.pid}/fd")
        )
        - 1
    )


def test_redis_cli_through_relay(peers: Peers, sockdir: Path) -> None:
    backend = sockdir / "redis.sock"
    peers.start(
        "redis-server",
        "--port",
        "0",
        "--unixsocket",
        backend,
        "--save",
        "",
        "--dir",
        sockdir,
        wait_for=backend,
    )
    front = sockdir / "front.sock"
    start_relay(peers, f"unix-listen:{front}", f"unix:{backend}")
    assert peers.run("redis-cli", "-s", front, "PING").stdout == b"PONG\n"
    assert peers.run("redis-cli", "-s", front, "SET", "k", "v" * 100000).stdout == b"OK\n"
    assert peers.run("redis-cli", "-s", front, "STRLEN", "k").stdout == b"100000\n"


def test_exec_and_stdio(peers: Peers, sockdir: Path) -> None:
    front = sockdir / "upper.sock"
    start_relay(peers, f"unix-listen:{front}", "exec:tr a-z A-Z")
    for _ in range(2):  # one command per client
        result = peers.udskit_run("relay", "-", f"unix:{front}", input=b"half-closed stdin\n")
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"HALF-CLOSED STDIN\n"


def test_socat_client_through_seqpacket_relay(peers: Peers, sockdir: Path) -> None:
    backend = sockdir / "seq.sock"
    peers.start(
        "socat",
        f"UNIX-LISTEN:{backend},type=5,fork",
        "EXEC:tr a-z A-Z",
        wait_for=backend,
    )
    front = sockdir / "front.sock"
    start_relay(peers, "--type", "seqpacket", f"unix-listen:{front}", f"unix:{backend}")
    result = peers.run("socat", "-t", "5", "-", f"UNIX-CONNECT:{front},type=5", input=b"seq\n")
    assert result.stdout == b"SEQ\n", result.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signals_remove_the_socket_file(peers: Peers, sockdir: Path, signum: int) -> None:
    front = sockdir / "front.sock"
    relay = start_relay(peers, f"unix-listen:{front}", f"unix:{sockdir}/none.sock")
    _out, err = relay.stop(signum)
    assert relay.proc.returncode == (130 if signum == signal.SIGINT else 143)
    assert not front.exists()
    assert b"Traceback" not in err


@pytest.mark.parametrize(
    ("args", "status", "words"),
    [
        (["tpc:1:2", "-"], 2, "unknown endpoint kind"),
        (["unix:/x", "unix-listen:/y"], 2, "only LEFT listens"),
        (["-", "unix:/nonexistent/dir/x.sock"], 1, "directory /nonexistent does not exist"),
        (["tcp-listen:8080", "unix:/x", "--allow-uid", "0"], 2, "need a unix listen side"),
    ],
)
def test_mistakes_get_one_line(peers: Peers, args: list[str], status: int, words: str) -> None:
    result = peers.udskit_run("relay", *args, input=b"")
    assert result.returncode == status
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and words in lines[0], lines


def test_allow_uid_by_peer_credentials(peers: Peers, sockdir: Path) -> None:
    """A client running as nobody is turned away unless its uid is allowed."""
    backend = sockdir / "echo.sock"
    peers.start(sys.executable, "-c", ECHO, backend, wait_for=backend)
    front = sockdir / "front.sock"
    relay = start_relay(
        peers,
        "-v",
        "--mode",
        "0666",
        "--allow-uid",
        "root",
        f"unix-listen:{front}",
        f"unix:{backend}",
    )
    as_root = peers.run("socat", "-t", "5", "-", f"UNIX-CONNECT:{front}", input=b"root\n")
    assert as_root.stdout == b"root\n"
    nobody = peers.run(
        *Peers.as_nobody("socat", "-t", "5", "-", f"UNIX-CONNECT:{front}"), input=b"nobody\n"
    )
    assert nobody.stdout == b""
    _out, err = relay.stop(signal.SIGTERM)
    log = err.decode()
    assert "refused" in log and "uid 65534" in log


def test_500_clients_at_once_lose_nothing_and_leak_nothing(
    peers: Peers, sockdir: Path, tmp_path: Path
) -> None:
    backend = sockdir / "echo.sock"
    peers.start(sys.executable, "-c", ECHO, backend, wait_for=backend)
    front = sockdir / "front.sock"
    log = tmp_path / "events.jsonl"

    def events(kind: str) -> list[dict[str, object]]:
        lines = log.read_text().split("\n")[:-1]  # whole lines only
        return [e for e in map(json.loads, lines) if e["event"] == kind]

    with open(log, "wb") as out:
        relay = start_relay(peers, "--json", f"unix-listen:{front}", f"unix:{backend}", stdout=out)
    # Its descriptors once it says it listens: a socket file that accepts connections
    # comes a little before (the directory lock is still held while its inode is checked).
    wait_until(lambda: events("listening") != [], what="the relay's listening event")
    fds_before = _fds(relay.pid)

    async def one(size: int = 1 << 20) -> bool:
        data = os.urandom(size)
        reader, writer = await asyncio.open_unix_connection(str(front), limit=1 << 20)

        async def send() -> None:
            writer.write(data)
            await writer.drain()
            writer.write_eof()

        sender = asyncio.create_task(send())
        got = hashlib.sha256()
        count = 0
        while chunk := await reader.read(1 << 20):
            got.update(chunk)
            count += len(chunk)
        await sender
        writer.close()
        await writer.wait_closed()
        return count == size and got.digest() == hashlib.sha256(data).digest()

    async def all_at_once() -> list[bool]:
        return list(await asyncio.gather(*(one() for _ in range(500))))

    results = asyncio.run(all_at_once())
    assert results.count(True) == 500
    wait_until(lambda: len(events("closed")) == 500, timeout=30, what="500 closed events")
    try:
        wait_until(lambda: _fds(relay.pid) == fds_before, what="the relay's descriptors as before")
    except AssertionError:
        left = {fd: to for fd, to in _fds(relay.pid).items() if fds_before.get(fd) != to}
        gone = {fd: to for fd, to in fds_before.items() if fd not in _fds(relay.pid)}
        inodes = {to.removeprefix("socket:[").rstrip("]") for to in left.values()}
        ss = subprocess.run(["ss", "-xaenp"], check=False, capture_output=True, text=True).stdout
        seen = [line for line in ss.splitlines() if any(f" {i} " in line for i in inodes)]
        raise AssertionError(f"the relay kept {left}, closed {gone}; ss -xaenp: {seen}") from None
    relay.stop(signal.SIGTERM)
    assert relay.proc.returncode == 143
    assert sorted(p.name for p in sockdir.iterdir()) == ["echo.sock"]


def test_json_events_name_the_client_and_the_mode(peers: Peers, sockdir: Path) -> None:
    backend = sockdir / "echo.sock"
    peers.start(sys.executable, "-c", ECHO, backend, wait_for=backend)
    front = sockdir / "front.sock"
    relay = start_relay(peers, "--json", f"unix-listen:{front}", f"unix:{backend}")
    peers.run("socat", "-t", "5", "-", f"UNIX-CONNECT:{front}", input=b"x\n")
    wait_until(lambda: _clients_open(relay) == 0, what="the connection to close")
    out, _err = relay.stop(signal.SIGTERM)
    events = [json.loads(line) for line in out.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[:3] == ["listening", "accepted", "connected"]
    assert events[2]["mode"] == "splice"
    assert events[1]["command"] == "socat"
