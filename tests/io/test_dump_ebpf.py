"""`udskit dump --engine ebpf` against real peers whose connections were open BEFORE the
capture started: socat on an abstract name, a socketpair between a parent and its
child, redis-cli --pipe into redis-server, curl against an HTTP server on a pathname
socket. Each direction's captured bytes must hash to what the peers sent, every
chunk must carry the right client pid, nobody may reconnect, and tshark must read
the file. Every process is started through `peers` (killed by PID at teardown).

Skipped, with the reason, only where the kernel or the machine cannot run BPF at all.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from tests.conftest import Peer, Peers
from udskit.capture.events import EventKind
from udskit.capture.pcapng import decode_events
from udskit.tap import Direction

#: Bytes each way in the big transfers (the issue asks for 50 MiB).
MIB = 1 << 20
BIG = int(os.environ.get("UDSKIT_EBPF_TEST_MIB", "50")) * MIB


@pytest.fixture(scope="module")
def ebpf() -> None:
    """Skip (saying exactly why) where BPF cannot run; everything else must pass."""
    from udskit.capture.bpf_loader import BpfProgram, BpfUnavailable

    try:
        BpfProgram(lambda _raw: None).close()
    except BpfUnavailable as exc:
        pytest.skip(f"eBPF cannot run on this machine: {exc}")


def wait_for(predicate: object, timeout: float = 15.0, what: str = "condition") -> None:
    import time

    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def connections_of(address: str) -> list[tuple[int, int | None]]:
    """(inode, peer inode) of the connected sockets that carry `address` (accepted)."""
    from udskit.address import parse_address
    from udskit.inspect.lister import dump_unix_sockets
    from udskit.sockdiag import Show, SocketState

    wanted = parse_address(address)
    found = []
    for info in dump_unix_sockets(Show.NAME | Show.PEER | Show.VFS):
        if info.state is SocketState.CONNECTED and info.address == wanted:
            found.append((info.inode, info.peer_inode))
    return found


class Dump:
    """`udskit dump --engine ebpf ...` as a subprocess, ready once it says so."""

    def __init__(self, peers: Peers, *args: str | os.PathLike[str]) -> None:
        # -B 262144: a 256 MiB ring holds a whole 50 MiB-each-way transfer even when
        # the busy machine gives the reader no CPU for a while (losses fail the test).
        self.peer: Peer = peers.udskit("dump", "--engine", "ebpf", "-B", "262144", *args)
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_for(
            lambda: self._ready.is_set() or self.peer.proc.poll() is not None,
            timeout=60,
            what="udskit dump to start",
        )
        assert self._ready.is_set(), f"udskit dump exited: {self.lines}"

    def _read(self) -> None:
        assert self.peer.proc.stderr is not None
        for raw in self.peer.proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            if "Ctrl-C to stop" in line:
                self._ready.set()

    def stop(self) -> tuple[int, str]:
        proc = self.peer.proc
        os.kill(self.peer.pid, signal.SIGINT)
        assert proc.stdout is not None and proc.stderr is not None
        out = proc.stdout.read()
        status = proc.wait(120)
        self._reader.join(30)
        print("\n".join(self.lines))  # shown by pytest when the test fails
        proc.stdout.close()
        proc.stderr.close()
        lost = [x for x in self.lines if "WARNING" in x or "dropped" in x or "without" in x]
        assert not lost, lost
        return status, out.decode(errors="replace")


def streams(pcap: Path) -> dict[int, dict[Direction, bytes]]:
    """conn -> direction -> every byte recorded that way, from the pcapng file."""
    got: dict[int, dict[Direction, bytearray]] = {}
    for event in decode_events(pcap.read_bytes()):
        if event.kind is EventKind.DATA:
            assert event.direction is not None
            assert not event.truncated, f"a chunk was cut: {event.length} > {len(event.data)}"
            got.setdefault(event.conn, {Direction.C2S: bytearray(), Direction.S2C: bytearray()})
            got[event.conn][event.direction] += event.data
    return {conn: {d: bytes(b) for d, b in dirs.items()} for conn, dirs in got.items()}


def clients(pcap: Path) -> dict[int, set[int | None]]:
    """conn -> the client pids its events name."""
    found: dict[int, set[int | None]] = {}
    for event in decode_events(pcap.read_bytes()):
        found.setdefault(event.conn, set()).add(event.client.pid)
    return found


def close_stdin(peer: Peer) -> None:
    """EOF for the peer; forgotten by Popen so that communicate() at teardown still
    closes stdout and stderr (it gives up on a closed stdin)."""
    assert peer.proc.stdin is not None
    peer.proc.stdin.close()
    peer.proc.stdin = None


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


# -- socat on an abstract name -----------------------------------------------------------------
def test_socat_pair_on_an_abstract_name_open_before_the_capture(
    peers: Peers, tmp_path: Path, ebpf: None
) -> None:
    name = f"@udskit-ebpf-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    peers.start("socat", "-t", "30", f"ABSTRACT-LISTEN:{name[1:]}", "EXEC:cat", wait_for=name)
    client = peers.start(
        "socat", "-t", "30", "-", f"ABSTRACT-CONNECT:{name[1:]}", stdin=subprocess.PIPE
    )
    wait_for(lambda: len(connections_of(name)) == 1, what="socat to connect")
    pcap = tmp_path / "socat.pcapng"
    dump = Dump(peers, "-w", pcap, name)

    data = payload(BIG, 1)
    assert client.proc.stdin is not None and client.proc.stdout is not None

    def feed() -> None:
        assert client.proc.stdin is not None
        client.proc.stdin.write(data)
        close_stdin(client)

    writer = threading.Thread(target=feed)
    writer.start()
    echoed = hashlib.sha256()
    while chunk := client.proc.stdout.read(1 << 16):
        echoed.update(chunk)
    writer.join()
    assert client.proc.wait(60) == 0
    status, _ = dump.stop()

    assert status == 130, dump.lines
    assert echoed.hexdigest() == sha(data)
    got = streams(pcap)
    assert list(got) == [1], "one connection, seen once"
    assert sha(got[1][Direction.C2S]) == sha(data)
    assert sha(got[1][Direction.S2C]) == sha(data)
    assert clients(pcap)[1] == {client.pid}


# -- a socketpair between a parent and its child ----------------------------------------------
SOCKETPAIR = """\
import hashlib, json, os, random, socket, sys, threading, time
size, go = int(sys.argv[1]), sys.argv[2]
a, b = socket.socketpair()
child = os.fork()
if child == 0:
    a.close(); s, role = b, "child"
else:
    b.close(); s, role = a, "parent"
def say(**fields):  # one write(2) per line: parent and child share stdout
    os.write(1, (json.dumps(fields) + "\\n").encode())
say(role=role, pid=os.getpid(), inode=os.fstat(s.fileno()).st_ino)
while not os.path.exists(go):
    time.sleep(0.01)
data = random.Random(role).randbytes(size)
threading.Thread(target=s.sendall, args=(data,)).start()
got, h = 0, hashlib.sha256()
while got < size:
    chunk = s.recv(1 << 16)
    h.update(chunk); got += len(chunk)
say(role=role, sent=hashlib.sha256(data).hexdigest(), received=h.hexdigest())
if child:
    os.waitpid(child, 0)
"""


@pytest.mark.parametrize("by", ["--inode", "--pid"])
def test_socketpair_between_parent_and_child(
    peers: Peers, tmp_path: Path, ebpf: None, by: str
) -> None:
    go = tmp_path / "go"
    pair = peers.start(sys.executable, "-c", SOCKETPAIR, str(BIG), str(go))
    assert pair.proc.stdout is not None
    hello = [json.loads(pair.proc.stdout.readline()) for _ in range(2)]
    parent = next(h for h in hello if h["role"] == "parent")
    pcap = tmp_path / "pair.pcapng"
    dump = Dump(peers, "-w", pcap, by, str(parent["inode" if by == "--inode" else "pid"]))
    go.touch()
    done = [json.loads(line) for line in pair.proc.stdout]
    assert pair.proc.wait(60) == 0
    status, _ = dump.stop()

    assert status == 130, dump.lines
    sums = {d["role"]: d for d in done}
    assert sums["parent"]["received"] == sums["child"]["sent"]
    got = streams(pcap)
    assert list(got) == [1]
    # The inode given is the "client" side: what the parent sends is C2S.
    assert sha(got[1][Direction.C2S]) == sums["parent"]["sent"]
    assert sha(got[1][Direction.S2C]) == sums["child"]["sent"]
    assert clients(pcap)[1] == {parent["pid"]}


# -- redis-cli --pipe into redis-server --------------------------------------------------------
def redis_server(peers: Peers, sockdir: Path) -> Path:
    path = sockdir / "redis.sock"
    peers.start(
        "redis-server",
        "--port",
        "0",
        "--unixsocket",
        path,
        "--save",
        "",
        "--appendonly",
        "no",
        wait_for=path,
        listening=True,
    )
    return path


def connections_received(peers: Peers, path: Path) -> int:
    """redis's count of accepted connections (this query's own included)."""
    out = peers.run("redis-cli", "-s", path, "INFO", "stats").stdout.decode()
    line = next(x for x in out.splitlines() if x.startswith("total_connections_received:"))
    return int(line.split(":")[1])


def resp_set(key: bytes, value: bytes) -> bytes:
    parts = [b"SET", key, value]
    return b"*3\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def test_redis_cli_pipe_open_before_the_capture_and_a_new_client(
    peers: Peers, sockdir: Path, tmp_path: Path, ebpf: None
) -> None:
    path = redis_server(peers, sockdir)
    accepted_before = connections_received(peers, path)
    pipe = peers.start("redis-cli", "-s", path, "--pipe", stdin=subprocess.PIPE)
    address = str(path)
    wait_for(lambda: len(connections_of(address)) == 1, what="redis-cli to connect")
    pcap = tmp_path / "redis.pcapng"
    dump = Dump(peers, "-w", pcap, path)

    value = payload(64 * 1024, 2)
    commands = BIG // len(value)
    sent = b"".join(resp_set(b"key:%d" % i, value) for i in range(commands))
    assert pipe.proc.stdin is not None
    pipe.proc.stdin.write(sent)
    close_stdin(pipe)
    assert pipe.proc.wait(120) == 0
    out = pipe.proc.stdout.read().decode() if pipe.proc.stdout else ""
    assert f"replies: {commands}" in out, out
    # A client that connects after the start is seen too (accept(2) is watched).
    assert peers.run("redis-cli", "-s", path, "PING").stdout == b"PONG\n"
    status, _ = dump.stop()
    accepted_after = connections_received(peers, path)

    assert status == 130, dump.lines
    assert accepted_after == accepted_before + 3, "pipe, PING, INFO: nobody reconnected"
    got = streams(pcap)
    pids = clients(pcap)
    piped = next(c for c, dirs in got.items() if len(dirs[Direction.C2S]) >= len(sent))
    # redis-cli --pipe sends our bytes, then an ECHO of its own to know when to stop.
    assert sha(got[piped][Direction.C2S][: len(sent)]) == sha(sent)
    assert got[piped][Direction.S2C].startswith(b"+OK\r\n" * commands)
    assert pids[piped] == {pipe.pid}
    pings = [c for c, dirs in got.items() if dirs[Direction.C2S].endswith(b"PING\r\n")]
    assert len(pings) == 1 and got[pings[0]][Direction.S2C] == b"+PONG\r\n"


# -- curl against an HTTP server on a pathname socket ------------------------------------------
HTTP_SERVER = """\
import hashlib, json, os, socket, struct, sys, time
path, go = sys.argv[1], sys.argv[2]
srv = socket.socket(socket.AF_UNIX)
srv.bind(path)
srv.listen(8)
c, _ = srv.accept()
def cred():
    return struct.unpack("3i", c.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
first = cred()
buf, sent, received, counting = b"", hashlib.sha256(), hashlib.sha256(), False
def send(data):
    c.sendall(data)
    if counting:
        sent.update(data)
while True:
    while b"\\r\\n\\r\\n" not in buf:
        chunk = c.recv(1 << 16)
        if not chunk:
            print(json.dumps({"first": first, "last": cred(), "sent": sent.hexdigest(),
                              "received": received.hexdigest()}), flush=True)
            sys.exit(0)
        buf += chunk
        if counting:
            received.update(chunk)
    head, buf = buf.split(b"\\r\\n\\r\\n", 1)
    method, target = head.split(b" ")[:2]
    length = 0
    for line in head.split(b"\\r\\n")[1:]:
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    while len(buf) < length:
        chunk = c.recv(1 << 16)
        buf += chunk
        if counting:
            received.update(chunk)
    body, buf = buf[:length], buf[length:]
    if target == b"/wait":
        while not os.path.exists(go):
            time.sleep(0.01)
        counting = True
        reply = b"ready"
    elif target.startswith(b"/blob/"):
        n = int(target[6:])
        reply = bytes(range(256)) * (n // 256)
    else:
        reply = hashlib.sha256(body).hexdigest().encode()
    send(b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(reply))
    send(reply)
"""


def test_curl_keepalive_on_a_pathname_socket_and_tshark_dissects_it(
    peers: Peers, sockdir: Path, tmp_path: Path, ebpf: None
) -> None:
    path = sockdir / "http.sock"
    go = tmp_path / "go"
    server = peers.start(sys.executable, "-c", HTTP_SERVER, path, go, wait_for=path)
    upload = tmp_path / "up.bin"
    size = min(BIG, 16 * MIB)  # tshark reassembles every byte: keep its share modest
    upload.write_bytes(payload(size, 3))
    base = "http://localhost"
    curl = peers.start(
        "curl", "-sS", "--unix-socket", path, "-o", "/dev/null", f"{base}/wait",
        "--next", "--unix-socket", path, "-o", "/dev/null", "--data-binary", f"@{upload}",
        f"{base}/upload",
        "--next", "--unix-socket", path, "-o", tmp_path / "blob", f"{base}/blob/{size}",
    )  # fmt: skip
    wait_for(lambda: len(connections_of(str(path))) == 1, what="curl to connect")
    pcap = tmp_path / "http.pcapng"
    dump = Dump(peers, "-w", pcap, path)
    go.touch()
    assert curl.proc.wait(60) == 0
    assert server.proc.stdout is not None
    seen = json.loads(server.proc.stdout.readline())
    status, _ = dump.stop()

    assert status == 130, dump.lines
    assert seen["first"] == seen["last"] == curl.pid, "the server sees curl, unchanged"
    got = streams(pcap)
    assert list(got) == [1]
    # What the server received and sent once the capture ran.
    assert sha(got[1][Direction.C2S]) == seen["received"]
    assert sha(got[1][Direction.S2C]) == seen["sent"]
    assert clients(pcap)[1] == {curl.pid}
    # curl hung up first; the server then exited without close(2): still one close.
    closes = [e.direction for e in decode_events(pcap.read_bytes()) if e.kind is EventKind.CLOSE]
    assert closes == [Direction.C2S]
    result = peers.run(
        "tshark", "-r", pcap, "-Y", "http.request", "-T", "fields", "-e", "http.request.uri"
    )
    assert result.returncode == 0, result.stderr
    uris = result.stdout.decode().split()
    assert uris == ["/upload", f"/blob/{size}"]


# -- mid-stream: connections met in their middle still dissect -------------------------------
GRPC_PEER = Path(__file__).parent.parent / "data" / "grpc_peer.py"


def tshark_fields(peers: Peers, pcap: Path, display: str, field: str) -> list[str]:
    result = peers.run("tshark", "-r", pcap, "-Y", display, "-T", "fields", "-e", field)
    assert result.returncode == 0, result.stderr
    return result.stdout.decode().split()


def test_grpc_call_on_a_channel_open_before_the_capture_is_dissected(
    peers: Peers, sockdir: Path, tmp_path: Path, ebpf: None
) -> None:
    path = sockdir / "grpc.sock"
    peers.start(sys.executable, GRPC_PEER, "server", path, wait_for=path, listening=True)
    client = peers.start(sys.executable, GRPC_PEER, "client", path, stdin=subprocess.PIPE)
    assert client.proc.stdin is not None and client.proc.stdout is not None
    assert client.proc.stdout.readline() == b"said before\n"  # the channel is up
    pcap = tmp_path / "grpc.pcapng"
    dump = Dump(peers, "-w", pcap, path)
    client.proc.stdin.write(b"Shout\nSay\n")
    client.proc.stdin.flush()
    assert client.proc.stdout.readline() == b"HELLO SHOUT!\n"
    assert client.proc.stdout.readline() == b"said hello Say\n"
    status, _ = dump.stop()

    assert status == 130, dump.lines
    # HPACK state from before the capture is lost: `Say`, first called before it,
    # is sent as an index into that state; `Shout` is new, sent as a literal.
    paths = tshark_fields(peers, pcap, "http2.header", "http2.headers.path")
    assert paths == ["/udskit.test.Echo/Shout"]
    comments = tshark_fields(peers, pcap, 'frame.comment contains "synthetic=1"', "frame.number")
    assert len(comments) == 1, "one synthetic preface"
    # `udskit dump -r` shows only what was sent: no preface that nobody sent.
    sent = streams(pcap)[1][Direction.C2S]
    assert not sent.startswith(b"PRI * HTTP/2.0")
    assert b"/udskit.test.Echo/Shout" in sent


HTTP1_CLIENT = """\
import os, socket, sys, time
path, go = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX)
s.connect(path)
s.sendall(b"POST /upload HTTP/1.1\\r\\nContent-Length: 128\\r\\n\\r\\n" + b"a" * 64)
print("half", flush=True)
for part in (b"b", b"c"):
    while not os.path.exists(go + part.decode()):
        time.sleep(0.01)
    s.sendall(part * 32)
    print(part.decode(), flush=True)
def reply():
    head = b""
    while b"\\r\\n\\r\\n" not in head:
        head += s.recv(1)
    n = int(head.split(b"Content-Length: ")[1].split(b"\\r\\n")[0])
    got = b""
    while len(got) < n:
        got += s.recv(n - len(got))
    return got
reply()
s.sendall(b"GET /blob/512 HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
print(len(reply()), flush=True)
"""


def test_http1_met_inside_a_request_body_is_dissected_from_the_next_request(
    peers: Peers, sockdir: Path, tmp_path: Path, ebpf: None
) -> None:
    path = sockdir / "http.sock"
    go = tmp_path / "go"
    peers.start(sys.executable, "-c", HTTP_SERVER, path, tmp_path / "never", wait_for=path)
    client = peers.start(sys.executable, "-c", HTTP1_CLIENT, path, go)
    assert client.proc.stdout is not None
    assert client.proc.stdout.readline() == b"half\n"
    pcap = tmp_path / "http.pcapng"
    dump = Dump(peers, "-w", pcap, path)
    # The server has been blocked in recv(2) since before the capture: what that call
    # returns (the b's) is still recorded, as the capture's first chunk, from the
    # middle of a request body; the c's follow.
    Path(f"{go}b").touch()
    assert client.proc.stdout.readline() == b"b\n"  # sent: in the queue, or read
    wait_for(lambda: queued_at_server(str(path)) == 0, what="the server to read")
    Path(f"{go}c").touch()
    assert client.proc.stdout.readline() == b"c\n"
    assert client.proc.stdout.readline() == b"512\n"
    status, _ = dump.stop()

    assert status == 130, dump.lines
    assert tshark_fields(peers, pcap, "http.request", "http.request.uri") == ["/blob/512"]
    assert tshark_fields(peers, pcap, "http.response", "http.response.code") == ["200", "200"]
    sent = streams(pcap)[1][Direction.C2S]
    assert sent.startswith(b"b" * 32 + b"c" * 32 + b"GET /blob/512 HTTP/1.1")


def queued_at_server(address: str) -> int | None:
    """Bytes waiting in the receive queue of the server's end of `address`'s one
    connection."""
    from udskit.address import parse_address
    from udskit.inspect.lister import dump_unix_sockets
    from udskit.sockdiag import Show, SocketState

    wanted = parse_address(address)
    for info in dump_unix_sockets(Show.NAME | Show.RQLEN):
        if info.state is SocketState.CONNECTED and info.address == wanted:
            return info.recv_q
    return None


# -- filters, as ptcpdump has them -------------------------------------------------------------
def ready_dump(peers: Peers, *args: str | os.PathLike[str]) -> Peer:
    """`udskit dump ARGS` (no -B: the proxy engine takes none), once it has started."""
    dump = peers.udskit("dump", *args)
    assert dump.proc.stderr is not None
    lines: list[str] = []
    while not any("Ctrl-C to stop" in line for line in lines):
        raw = dump.proc.stderr.readline()
        assert raw, f"udskit dump exited: {lines}"
        lines.append(raw.decode())
    return dump


def ping_as_python(path: Path) -> socket.socket:
    """A client of another name, left connected."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(str(path))
    s.sendall(b"PING\r\n")
    assert s.recv(100) == b"+PONG\r\n"
    return s


def socat_client(peers: Peers, path: Path, *, as_nobody: bool = False) -> Peer:
    """A client that stays connected while the test talks through it."""
    argv = ["socat", "-", f"UNIX-CONNECT:{path}"]
    return peers.start(*(peers.as_nobody(*argv) if as_nobody else argv), stdin=subprocess.PIPE)


def ask(client: Peer, command: bytes, reply: bytes) -> None:
    assert client.proc.stdin is not None and client.proc.stdout is not None
    client.proc.stdin.write(command)
    client.proc.stdin.flush()
    assert client.proc.stdout.read(len(reply)) == reply


@pytest.mark.parametrize("engine", ["proxy", "ebpf"])
def test_pname_direction_and_count_piped_into_tshark(
    peers: Peers, sockdir: Path, engine: str, ebpf: None
) -> None:
    path = redis_server(peers, sockdir)
    dump = ready_dump(
        peers, "--engine", engine, "--pname=socat", "-Q", "in", "-c", "2", "-w", "-", path
    )
    other = ping_as_python(path)  # another command name: not recorded, not counted
    client = socat_client(peers, path)
    ask(client, resp_set(b"k", b"v"), b"+OK\r\n")
    ask(client, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", b"$1\r\nv\r\n")
    assert dump.proc.stdout is not None
    pcapng = dump.proc.stdout.read()
    assert dump.proc.wait(30) == 0, "-c 2 reached: done"
    other.close()
    # What `udskit dump -w - | tshark -r -` gets.
    result = peers.run("tshark", "-r", "-", "-Y", "resp", input=pcapng)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert len(lines) == 2, lines
    assert "SET k v" in lines[0] and "GET k" in lines[1]


def test_uid_and_out_keep_only_replies_to_that_users_clients(
    peers: Peers, sockdir: Path, ebpf: None
) -> None:
    os.chmod(sockdir, 0o755)
    path = sockdir / "redis.sock"
    peers.start("redis-server", "--port", "0", "--unixsocket", path, "--unixsocketperm", "777",
                "--save", "", "--appendonly", "no", wait_for=path, listening=True)  # fmt: skip
    dump = ready_dump(peers, "--engine", "ebpf", "--uid", "nobody", "-Q", "out", "--json", path)
    other = ping_as_python(path)  # root's
    client = socat_client(peers, path, as_nobody=True)
    ask(client, b"ECHO for-nobody\r\n", b"$10\r\nfor-nobody\r\n")
    os.kill(dump.pid, signal.SIGINT)
    out, _ = dump.proc.communicate(timeout=30)
    other.close()
    events = [json.loads(line) for line in out.decode().splitlines()]
    data = [e for e in events if e["event"] == "data"]
    nobody = _nobody_ids()[0]
    assert {e["uid"] for e in events} == {nobody}
    assert [e["direction"] for e in data] == ["s2c"]
    assert data[0]["command"] == "socat"


# -- sendmmsg/recvmmsg, sendfile/splice ----------------------------------------------------------
MMSG = """\
import ctypes, json, os, socket, sys, time
libc = ctypes.CDLL(None, use_errno=True)
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
class msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.POINTER(iovec)), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]
class mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", msghdr), ("len", ctypes.c_uint)]
keep = []
def vector(messages):
    vec = (mmsghdr * len(messages))()
    for m, parts in zip(vec, messages):
        iovs = (iovec * len(parts))()
        for iov, part in zip(iovs, parts):
            buf = ctypes.create_string_buffer(part, len(part))
            keep.append(buf)
            iov.base, iov.len = ctypes.addressof(buf), len(part)
        keep.append(iovs)
        m.hdr.iov, m.hdr.iovlen = iovs, len(parts)
    return vec
def sendmmsg(s, messages):
    assert libc.sendmmsg(s.fileno(), vector(messages), len(messages), 0) == len(messages)
def recvmmsg(s, n):
    vec = vector([[bytes(100)] for _ in range(n)])
    got = libc.recvmmsg(s.fileno(), vec, n, 0x10000, None)  # MSG_WAITFORONE
    assert got > 0, ctypes.get_errno()
    return [ctypes.string_at(m.hdr.iov[0].base, m.len) for m in vec[:got]]
go = sys.argv[1]
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
print(json.dumps({"inode": os.fstat(a.fileno()).st_ino}), flush=True)
while not os.path.exists(go):
    time.sleep(0.01)
sendmmsg(a, [[b"one"], [b"tw", b"o!"], [b"three"]])
got = []
while len(got) < 3:
    got += recvmmsg(b, 3)
sendmmsg(b, [[b"back-1"], [b"back-2"]])
echoed = []
while len(echoed) < 2:
    echoed += recvmmsg(a, 2)
print(json.dumps({"b": [g.decode() for g in got], "a": [e.decode() for e in echoed]}), flush=True)
"""


def test_sendmmsg_and_recvmmsg_are_one_chunk_per_message(
    peers: Peers, tmp_path: Path, ebpf: None
) -> None:
    go = tmp_path / "go"
    pair = peers.start(sys.executable, "-c", MMSG, go)
    assert pair.proc.stdout is not None
    inode = json.loads(pair.proc.stdout.readline())["inode"]
    dump = ready_dump(peers, "--engine", "ebpf", "--json", "--inode", str(inode))
    go.touch()
    done = json.loads(pair.proc.stdout.readline())
    assert done == {"b": ["one", "two!", "three"], "a": ["back-1", "back-2"]}
    os.kill(dump.pid, signal.SIGINT)
    out, _ = dump.proc.communicate(timeout=30)
    data = [json.loads(line) for line in out.decode().splitlines()]
    chunks = [(e["direction"], base64.b64decode(e["data"])) for e in data if e["event"] == "data"]
    assert chunks == [
        ("c2s", b"one"),
        ("c2s", b"two!"),
        ("c2s", b"three"),
        ("s2c", b"back-1"),
        ("s2c", b"back-2"),
    ]


SENDFILE_SERVER = """\
import os, socket, sys, time
path, blob, go = sys.argv[1], sys.argv[2], sys.argv[3]
srv = socket.socket(socket.AF_UNIX)
srv.bind(path)
srv.listen(1)
while not os.path.exists(go):  # accept(2) after the capture started: see the test
    time.sleep(0.01)
c, _ = srv.accept()
assert c.recv(100) == b"send"
with open(blob, "rb") as f:
    assert os.sendfile(c.fileno(), f.fileno(), 0, 1000) == 1000
r, w = os.pipe()
os.write(w, b"s" * 500)
assert os.splice(r, c.fileno(), 500) == 500
c.sendall(b"end")
c.recv(100)
"""


def test_sendfile_and_splice_are_seen_with_their_length(
    peers: Peers, sockdir: Path, tmp_path: Path, ebpf: None
) -> None:
    path = sockdir / "files.sock"
    blob = tmp_path / "blob"
    blob.write_bytes(b"f" * 1000)
    go = tmp_path / "go"
    peers.start(sys.executable, "-c", SENDFILE_SERVER, path, blob, go, wait_for=path)
    dump = ready_dump(peers, "--engine", "ebpf", "--json", path)
    # A call in progress when the capture starts is not seen (its entry was not):
    # the server accepts only now, so that its accept(2) starts watching the client.
    go.touch()
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(b"send")
        got = b""
        while not got.endswith(b"end"):
            got += s.recv(4096)
    assert got == b"f" * 1000 + b"s" * 500 + b"end"
    os.kill(dump.pid, signal.SIGINT)
    out, _ = dump.proc.communicate(timeout=30)
    data = [json.loads(line) for line in out.decode().splitlines()]
    chunks = [(e["direction"], e["length"], e["data"]) for e in data if e["event"] == "data"]
    # The file's and the pipe's bytes never pass through the server's memory: their
    # length is recorded, and they are marked as cut (nothing captured).
    assert chunks[:4] == [
        ("c2s", 4, base64.b64encode(b"send").decode()),
        ("s2c", 1000, ""),
        ("s2c", 500, ""),
        ("s2c", 3, base64.b64encode(b"end").decode()),
    ]


# -- failures ----------------------------------------------------------------------------------
def test_without_root_one_line_and_auto_falls_back(peers: Peers, sockdir: Path) -> None:
    name = f"@udskit-ebpf-nobody-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    result = peers.run(*peers.as_nobody(sys.executable, "-m", "udskit", "dump", "--engine",
                                        "ebpf", name))  # fmt: skip
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode == 1
    assert len(lines) == 1 and "needs root" in lines[0] and "--engine proxy" in lines[0]
    # --inode only eBPF can do: auto does not fall back to something else.
    result = peers.run(*peers.as_nobody(sys.executable, "-m", "udskit", "dump", "--engine",
                                        "auto", "--inode", "1"))  # fmt: skip
    assert result.returncode == 1 and "needs root" in result.stderr.decode()


def test_auto_without_root_captures_through_the_proxy(peers: Peers, sockdir: Path) -> None:
    os.chown(sockdir, *_nobody_ids())
    path = sockdir / "echo.sock"
    peers.start(*peers.as_nobody("socat", f"UNIX-LISTEN:{path},fork", "EXEC:cat"), wait_for=path)
    dump = peers.start(
        *peers.as_nobody(sys.executable, "-m", "udskit", "dump", "--engine", "auto", "-A", path)
    )
    lines: list[str] = []
    assert dump.proc.stderr is not None
    while not any("Ctrl-C to stop" in line for line in lines):
        raw = dump.proc.stderr.readline()
        assert raw, f"udskit dump exited: {lines}"
        lines.append(raw.decode())
    assert "engine proxy, as eBPF cannot run here" in lines[0] and "root" in lines[0]
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(b"through the proxy\n")
        assert s.recv(100) == b"through the proxy\n"
    os.kill(dump.pid, signal.SIGINT)
    out, _ = dump.proc.communicate(timeout=30)
    assert "through the proxy" in out.decode()


def _nobody_ids() -> tuple[int, int]:
    import grp
    import pwd

    return pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid


# -- udskit dump -- CMD ------------------------------------------------------------------------
def test_dump_runs_a_command_and_captures_its_children_and_exits_as_it_did(
    peers: Peers, sockdir: Path, tmp_path: Path, ebpf: None
) -> None:
    from udskit.cli.dump import _HTTP_SERVER

    path = sockdir / "http.sock"
    peers.start(sys.executable, "-c", _HTTP_SERVER, path, wait_for=path)
    pcap = tmp_path / "cmd.pcapng"
    script = f"curl -sS --unix-socket {path} http://localhost/hello; exit 7"
    result = peers.udskit_run("dump", "--engine", "ebpf", "-w", pcap, "--", "sh", "-c", script)
    assert result.returncode == 7, result.stderr
    assert result.stdout == b"hello from /hello\n"  # curl's own output, untouched
    events = list(decode_events(pcap.read_bytes()))
    to_server = [e for e in events if e.kind is EventKind.DATA and e.path == str(path)]
    # The reply may come in one read or several, as curl's reads fall.
    asked = b"".join(e.data for e in to_server if e.direction is Direction.C2S)
    answered = b"".join(e.data for e in to_server if e.direction is Direction.S2C)
    assert to_server[0].direction is Direction.C2S
    assert asked.startswith(b"GET /hello HTTP/1.1\r\n") and asked.endswith(b"\r\n\r\n")
    assert answered.startswith(b"HTTP/1.0 200 OK\r\n")
    assert answered.endswith(b"hello from /hello\n")
    assert {e.client.command for e in to_server} == {"curl"}, "sh's child, curl, is seen"
    uris = peers.run("tshark", "-r", pcap, "-Y", "http.request", "-T", "fields", "-e",
                     "http.request.uri").stdout.split()  # fmt: skip
    assert uris == [b"/hello"]


def test_a_missing_command_is_one_line_and_127(peers: Peers, ebpf: None) -> None:
    result = peers.udskit_run("dump", "--engine", "ebpf", "--", "no-such-program-here")
    assert result.returncode == 127
    assert "cannot run 'no-such-program-here': No such file or directory" in result.stderr.decode()


# -- who a short-lived client is -----------------------------------------------------------------
def json_events(dump: Peer) -> list[dict[str, object]]:
    """Stop `udskit dump --json` (SIGINT) and read every event it printed."""
    os.kill(dump.pid, signal.SIGINT)
    out, err = dump.proc.communicate(timeout=60)
    assert dump.proc.returncode == 130, err.decode(errors="replace")  # stopped by Ctrl-C
    return [json.loads(line) for line in out.decode().splitlines()]


def test_short_lived_clients_of_two_users_each_keep_their_own_identity(
    peers: Peers, sockdir: Path, ebpf: None
) -> None:
    """redis closes the end of a client that has gone and accepts the next client under
    the same descriptor number: who connected must come from that connection, not from
    whatever the number names once the capture gets to it."""
    os.chmod(sockdir, 0o755)
    path = sockdir / "redis.sock"
    peers.start("redis-server", "--port", "0", "--unixsocket", path, "--unixsocketperm", "777",
                "--save", "", "--appendonly", "no", wait_for=path, listening=True)  # fmt: skip
    dump = ready_dump(peers, "--engine", "ebpf", "--json", path)
    nobody = _nobody_ids()[0]
    truth: dict[int, tuple[int, str]] = {}  # pid -> (uid, what it said)
    for i in range(40):
        word = f"client-{i}-of-{'nobody' if i % 2 else 'root'}"
        argv = ["redis-cli", "-s", str(path), "ECHO", word]
        client = peers.start(*(peers.as_nobody(*argv) if i % 2 else argv))
        out, _ = client.proc.communicate(timeout=30)
        assert out.strip() == word.encode()
        truth[client.pid] = (nobody if i % 2 else 0, word)
    by_conn: dict[object, list[dict[str, object]]] = {}
    for event in json_events(dump):
        by_conn.setdefault(event["conn"], []).append(event)
    seen: dict[int, tuple[int, str]] = {}
    for events in by_conn.values():
        # One identity per connection; the command name read in the kernel while the
        # client waited for its reply (it is gone before user space looks).
        (who,) = {(e["pid"], e["uid"]) for e in events}
        assert {e["command"] for e in events} == {"redis-cli"}, events
        sent = b"".join(
            base64.b64decode(str(e["data"]))
            for e in events
            if e["event"] == "data" and e["direction"] == "c2s"
        )
        assert isinstance(who[0], int) and isinstance(who[1], int), (who, sent)
        assert who[0] not in seen, f"two connections say they are pid {who[0]}"
        seen[who[0]] = (who[1], sent.decode())
    for pid, (uid, word) in truth.items():
        assert pid in seen, f"the connection of pid {pid} ({word}) is missing or misnamed"
        assert seen[pid][0] == uid, (pid, word, seen[pid])
        assert word in seen[pid][1], (pid, word, seen[pid])


def test_two_captures_of_one_socket_at_once_both_see_everything(
    peers: Peers, sockdir: Path, ebpf: None
) -> None:
    """Each capture loads its own program, maps and ring buffer: a second one of the
    same socket sees the connection open before both and a new one, as the first does."""
    path = redis_server(peers, sockdir)
    held = ping_as_python(path)  # open before both captures
    first = ready_dump(peers, "--engine", "ebpf", "--json", path)
    second = ready_dump(peers, "--engine", "ebpf", "--json", path)
    held.sendall(b"ECHO held-open\r\n")
    assert held.recv(100) == b"$9\r\nheld-open\r\n"
    held.close()
    new = peers.run("redis-cli", "-s", path, "ECHO", "connected-later")
    assert new.stdout.strip() == b"connected-later"
    views = []
    for dump in (first, second):
        sent: dict[object, bytes] = {}
        for event in json_events(dump):
            if event["event"] == "data" and event["direction"] == "c2s":
                sent[event["conn"]] = sent.get(event["conn"], b"") + base64.b64decode(
                    str(event["data"])
                )
        views.append(sorted(sent.values()))
    assert views[0] == views[1]
    assert len(views[0]) == 2, views[0]
    assert any(b"held-open" in data for data in views[0])
    assert any(b"connected-later" in data for data in views[0])


# -- calls already in progress when the capture starts --------------------------------------------
def blocked_in(pid: int, names: tuple[str, ...]) -> bool:
    """Whether `pid`'s main thread sleeps in one of the syscalls named (x86_64 or
    aarch64 numbers), as /proc/PID/syscall says."""
    import platform

    numbers = {
        "x86_64": {"read": 0, "accept": 43, "accept4": 288},
        "aarch64": {"read": 63, "accept": 202, "accept4": 242},
    }.get(platform.machine())
    if numbers is None:
        pytest.skip(f"no syscall numbers for {platform.machine()} in this test")
    try:
        first = Path(f"/proc/{pid}/syscall").read_text().split()[0]
    except (OSError, IndexError):
        return False
    return first.lstrip("-").isdigit() and int(first) in {numbers[n] for n in names}


def test_a_server_blocked_in_accept_at_the_start_has_its_connection_seen(
    peers: Peers, sockdir: Path, ebpf: None
) -> None:
    """nc -lU sleeps in accept(2) when the capture starts: that accept's return must
    still watch the new connection (it entered before the program ran)."""
    path = sockdir / "nc.sock"
    server = peers.start("nc", "-lU", path, wait_for=path, listening=True)
    wait_for(lambda: blocked_in(server.pid, ("accept", "accept4")), what="nc in accept")
    dump = ready_dump(peers, "--engine", "ebpf", "--json", path)
    client = peers.start("nc", "-U", path, stdin=subprocess.PIPE)
    assert client.proc.stdin is not None and server.proc.stdout is not None
    client.proc.stdin.write(b"hello through a waiting accept\n")
    client.proc.stdin.flush()
    assert server.proc.stdout.readline() == b"hello through a waiting accept\n"
    close_stdin(client)
    events = json_events(dump)
    sent = b"".join(
        base64.b64decode(str(e["data"]))
        for e in events
        if e["event"] == "data" and e["direction"] == "c2s"
    )
    assert sent == b"hello through a waiting accept\n", events
    assert {e["pid"] for e in events} == {client.pid}


def test_a_reader_blocked_in_read_at_the_start_has_its_first_bytes_seen(
    peers: Peers, ebpf: None
) -> None:
    """socat gives cat a socketpair as stdin and stdout; cat sleeps in read(2) when
    the capture of its socket starts. The bytes that read returns are the first of
    the capture, not lost because the call began before it."""
    socat = peers.start("socat", "-", "EXEC:cat", stdin=subprocess.PIPE)
    cat_pid: list[int] = []

    def cat_waits() -> bool:
        children = Path(f"/proc/{socat.pid}/task/{socat.pid}/children").read_text().split()
        cat_pid[:] = [int(c) for c in children]
        return bool(cat_pid) and blocked_in(cat_pid[0], ("read",))

    wait_for(cat_waits, what="cat in read")
    dump = ready_dump(peers, "--engine", "ebpf", "--json", "--pid", str(cat_pid[0]))
    assert socat.proc.stdin is not None and socat.proc.stdout is not None
    socat.proc.stdin.write(b"first line, read by a call older than the capture\n")
    socat.proc.stdin.flush()
    assert socat.proc.stdout.readline() == b"first line, read by a call older than the capture\n"
    events = json_events(dump)
    close_stdin(socat)
    got: dict[str, bytes] = {"c2s": b"", "s2c": b""}
    for e in events:
        if e["event"] == "data":
            got[str(e["direction"])] += base64.b64decode(str(e["data"]))
    # cat's end is the one held by the pid: what it reads goes s2c, what it writes c2s.
    line = b"first line, read by a call older than the capture\n"
    assert got == {"s2c": line, "c2s": line}, events
