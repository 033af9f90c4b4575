"""One conformance check that every relay endpoint pair runs (as trio has one
`check_half_closeable_stream` for all its streams): `check_relay(pair, peers, workdir)`.

A `Pair` names LEFT and RIGHT of `udskit relay` and the far end behind RIGHT. The
relay runs as its own process (`udskit relay --json`, events to a file) so that its
descriptors can be read from /proc/PID/fd, and the checks depend on the pair's kind:

* stream (unix, abstract, tcp on 127.0.0.1, stdio, exec): 1 MiB each way at once,
  sha256 on both sides; half-close both ways round (the client finishes sending and
  then hears the whole reply; the server does); a reset by the server reaches the
  client as the end of its connection and is reported as a reset, and the relay
  serves the next client after it.
* records (seqpacket): the same, and every record arrives whole and alone.
* datagrams: every datagram arrives whole and alone, 1 MiB each way.
* always: after each connection the relay's descriptors are what they were before
  it (after the datagram check: plus the one association socket it keeps until it is
  idle); its commands are reaped; SIGTERM ends it with the documented status 143 and
  removes what it bound, and the directory holds only the far end's socket files.
  A relay of one connection (`-` on either side, exec: as LEFT) ends by itself, with
  status 0, once both directions have.

The far ends are programs nobody here wrote where they fit (socat as an echo server,
nc as a client, cat behind exec:) and otherwise `JUDGE`, a small server whose every
answer the check verifies.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import Peer, Peers, free_port, tcp_listening, wait_until

SIZE = 1 << 20
#: Record and datagram sizes whose boundaries must survive (plus SIZE in 64 KiB parts).
RECORD_SIZES = (1, 2, 100, 4095, 4096, 65536)
PART = 1 << 16


def payload(seed: str, size: int = SIZE) -> bytes:
    """Deterministic bytes that differ everywhere (a lost or doubled chunk shows)."""
    return hashlib.shake_256(seed.encode()).digest(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


#: The far end behind RIGHT. argv: KIND ADDRESS RESULTS_DIR. Each connection starts
#: with one mode byte: B (both send 1 MiB at once, each then shuts down writing), H
#: (the client's bytes come first: the server answers after their EOF), S (the
#: server's come first), E (echo every record), R (reset: close with unread bytes,
#: SO_LINGER 0 on TCP). It writes the sha256 of what it received to RESULTS_DIR/N.
JUDGE = r"""
import hashlib, os, select, socket, struct, sys, threading
kind, address, results = sys.argv[1], sys.argv[2], sys.argv[3]
SIZE = 1 << 20
server_bytes = hashlib.shake_256(b"server").digest(SIZE)
if kind == "tcp":
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", int(address)))
else:
    srv = socket.socket(socket.AF_UNIX,
                        socket.SOCK_SEQPACKET if kind == "seqpacket" else socket.SOCK_STREAM)
    srv.bind(b"\0" + address[1:].encode() if address.startswith("@") else address)
srv.listen(16)

def read_all(conn):
    h, n = hashlib.sha256(), 0
    while True:
        chunk = conn.recv(1 << 20)
        if not chunk:
            return h.hexdigest(), n
        h.update(chunk)
        n += len(chunk)

def serve(conn, number):
    mode = conn.recv(1)
    got = None
    if mode == b"B":
        def send():
            conn.sendall(server_bytes)
            conn.shutdown(socket.SHUT_WR)
        t = threading.Thread(target=send)
        t.start()
        got = read_all(conn)
        t.join()
    elif mode == b"H":
        got = read_all(conn)
        conn.sendall(server_bytes)
        conn.shutdown(socket.SHUT_WR)
    elif mode == b"S":
        conn.sendall(server_bytes)
        conn.shutdown(socket.SHUT_WR)
        got = read_all(conn)
    elif mode == b"E":
        h, n = hashlib.sha256(), 0
        while True:
            record = conn.recv(1 << 20)
            if not record:
                break
            h.update(record)
            n += len(record)
            conn.sendall(record)
        conn.shutdown(socket.SHUT_WR)
        got = h.hexdigest(), n
    elif mode == b"R":
        select.select([conn], [], [])  # more bytes are here: leave them unread
        if kind == "tcp":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        got = "reset", 0
    conn.close()
    tmp = os.path.join(results, f".{number}")
    with open(tmp, "w") as f:
        f.write(f"{got[0]} {got[1]}\n")
    os.rename(tmp, os.path.join(results, str(number)))

number = 0
while True:
    conn, _ = srv.accept()
    number += 1
    threading.Thread(target=serve, args=(conn, number), daemon=True).start()
"""

#: A datagram echo server: each datagram goes back to its sender as it came.
DGRAM_ECHO = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
while True:
    data, sender = s.recvfrom(1 << 20)
    s.sendto(data, sender)
"""


@dataclass(frozen=True)
class Pair:
    """One LEFT/RIGHT pair. In `left`/`right`, {front}, {back}, {port}, {back_port},
    {name} are filled in per run; `far` says what serves RIGHT: "judge", "socat-echo",
    "exec" (RIGHT runs the command itself), "dgram-echo"."""

    name: str
    kind: str  # "stream", "records" or "datagrams"
    left: str
    right: str
    far: str = "judge"
    judge_kind: str = "unix"  # what JUDGE listens on: unix, seqpacket or tcp
    client: str = "python"  # "nc": the client of the echo check is OpenBSD nc
    options: tuple[str, ...] = ()
    resets: bool = True  # the far end can reset (not cat behind exec:)


@dataclass
class Run:
    """A pair made concrete: addresses, the relay process, its events."""

    pair: Pair
    workdir: Path
    front: str
    client_address: str | tuple[str, int]
    results: Path
    events_path: Path
    relay: Peer | None = None
    far_files: set[str] = field(default_factory=set)
    connections: int = 0

    def events(self) -> list[dict[str, object]]:
        text = self.events_path.read_text()
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    def ended(self) -> list[dict[str, object]]:
        return [e for e in self.events() if e["event"] in ("closed", "reset")]

    def result(self, number: int) -> tuple[str, int]:
        path = self.results / str(number)
        wait_until(path.exists, what=f"the far end's result for connection {number}")
        digest, count = path.read_text().split()
        return digest, int(count)


def fds_of(pid: int) -> dict[int, str]:
    """What each of a process's descriptors is (readlink of /proc/PID/fd/N)."""
    found = {}
    for entry in os.listdir(f"/proc/{pid}/fd"):
        try:
            found[int(entry)] = os.readlink(f"/proc/{pid}/fd/{entry}")
        except FileNotFoundError:
            continue  # closed while we looked
    return found


def children_of(pid: int) -> set[int]:
    kids: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            kids |= {int(k) for k in f.read().split()}
    return kids


def start_far_end(pair: Pair, peers: Peers, workdir: Path, uniq: str) -> tuple[str, str]:
    """Start what serves RIGHT; returns (back, back_port) for the RIGHT template."""
    back = str(workdir / "back.sock")
    port = ""
    if pair.far == "judge":
        if pair.judge_kind == "tcp":
            port = str(free_port())
            peers.start(sys.executable, "-c", JUDGE, "tcp", port, workdir / "results")
            wait_until(lambda: tcp_listening(int(port)), what=f"the judge on port {port}")
        else:
            address = f"@{uniq}-back" if "{name}" in pair.right else back
            peers.start(
                sys.executable,
                "-c",
                JUDGE,
                pair.judge_kind,
                address,
                workdir / "results",
                wait_for=address,
                listening=True,
            )
    elif pair.far == "socat-echo":
        peers.start("socat", f"UNIX-LISTEN:{back},fork", "EXEC:cat", wait_for=back, listening=True)
    elif pair.far == "dgram-echo":
        peers.start(sys.executable, "-c", DGRAM_ECHO, back, wait_for=back, listening=False)
    return back, port


def open_run(pair: Pair, peers: Peers, workdir: Path) -> Run:
    uniq = f"udskit-conf-{os.getpid()}-{pair.name}"
    (workdir / "results").mkdir()
    back, back_port = start_far_end(pair, peers, workdir, uniq)
    front = str(workdir / "front.sock")
    port = free_port()
    fields = {"front": front, "port": port, "back": back, "back_port": back_port}
    left = pair.left.format(**fields, name=f"{uniq}-front")
    right = pair.right.format(**fields, name=f"{uniq}-back")
    client_address: str | tuple[str, int]
    if left.startswith("tcp-listen:"):
        client_address = ("127.0.0.1", port)
    elif left.startswith(("abstract-listen:", "seqpacket:abstract-listen:")):
        client_address = f"\0{uniq}-front"
    else:
        client_address = front
    run = Run(pair, workdir, front, client_address, workdir / "results", workdir / "events.jsonl")
    run.far_files = {p.name for p in workdir.iterdir()}
    if "-" in (left, right) or left.startswith("exec:"):
        return run  # a relay of one connection: started by check_one_shot
    with open(run.events_path, "wb") as events:
        run.relay = peers.udskit("relay", "--json", *pair.options, left, right, stdout=events)
    wait_until(lambda: any(e["event"] == "listening" for e in run.events()), what="the relay")
    if isinstance(client_address, tuple):
        wait_until(lambda: tcp_listening(port), what=f"the relay on port {port}")
    return run


def connect(run: Run) -> socket.socket:
    address = run.client_address
    if isinstance(address, tuple):
        sock = socket.create_connection(address, timeout=60)
    else:
        kind = socket.SOCK_SEQPACKET if run.pair.kind == "records" else socket.SOCK_STREAM
        sock = socket.socket(socket.AF_UNIX, kind)
        sock.settimeout(60)
        sock.connect(address)
    run.connections += 1
    return sock


def send_and_shut(sock: socket.socket, data: bytes) -> None:
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)


def read_to_eof(sock: socket.socket) -> bytes:
    parts = []
    while chunk := sock.recv(1 << 20):
        parts.append(chunk)
    return b"".join(parts)


def settled(run: Run, baseline: dict[int, str]) -> None:
    """Every connection so far has ended, and the relay holds what it held before."""
    assert run.relay is not None
    pid = run.relay.pid
    wait_until(
        lambda: len(run.ended()) == run.connections, what=f"{run.connections} connections ended"
    )
    wait_until(lambda: fds_of(pid) == baseline, what="the relay's descriptors as before")
    wait_until(lambda: not children_of(pid), what="the relay's commands reaped")


# -- the checks ----------------------------------------------------------------------------
def check_both_ways(run: Run) -> None:
    """1 MiB each way at once; each side shuts down writing when done, reads on."""
    mine = payload("client")
    with connect(run) as sock:
        sender = threading.Thread(target=send_and_shut, args=(sock, b"B" + mine))
        sender.start()
        got = read_to_eof(sock)
        sender.join()
    assert sha(got) == sha(payload("server")) and len(got) == SIZE
    assert run.result(run.connections) == (sha(mine), SIZE)


def check_client_half_closes_first(run: Run) -> None:
    """The client sends everything and shuts down writing; only then does the server
    answer, so its 1 MiB crosses a relay that has already passed one EOF on."""
    mine = payload("client-first")
    with connect(run) as sock:
        sock.sendall(b"H" + mine)
        sock.shutdown(socket.SHUT_WR)
        got = read_to_eof(sock)
    assert sha(got) == sha(payload("server"))
    assert run.result(run.connections) == (sha(mine), SIZE)


def check_server_half_closes_first(run: Run) -> None:
    """The server sends everything and shuts down writing; the client reads to EOF and
    only then sends its 1 MiB up the direction still open."""
    mine = payload("server-first")
    with connect(run) as sock:
        sock.sendall(b"S")
        got = read_to_eof(sock)
        assert sha(got) == sha(payload("server"))
        sock.sendall(mine)
        sock.shutdown(socket.SHUT_WR)
        assert read_to_eof(sock) == b""
    assert run.result(run.connections) == (sha(mine), SIZE)


def check_reset(run: Run) -> None:
    """The server closes with bytes unread (ECONNRESET for unix peers, RST over TCP):
    the client's connection ends without a byte of reply, the relay reports a reset,
    and the next client is served as usual."""
    with connect(run) as sock:
        sock.sendall(b"R")
        sock.sendall(b"x" * 4096)
        try:
            got = read_to_eof(sock)
        except ConnectionResetError:
            got = b""
    assert got == b""
    assert run.result(run.connections) == ("reset", 0)
    wait_until(lambda: len(run.ended()) == run.connections, what="the reset reported")
    assert run.ended()[-1]["event"] == "reset", run.ended()[-1]
    (check_records if run.pair.kind == "records" else check_both_ways)(run)


def check_records(run: Run) -> None:
    """Each record arrives whole and alone, both ways, 1 MiB in 64 KiB records too."""
    big = payload("records")
    records = [payload(f"r{n}", n) for n in RECORD_SIZES]
    records += [big[i : i + PART] for i in range(0, SIZE, PART)]
    echoed: list[bytes] = []
    with connect(run) as sock:

        def send() -> None:
            sock.send(b"E")
            for record in records:
                assert sock.send(record) == len(record)
            sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        while record := sock.recv(1 << 20):
            echoed.append(record)
        sender.join()
    assert [len(r) for r in echoed] == [len(r) for r in records]
    assert echoed == records
    assert run.result(run.connections) == (sha(b"".join(records)), sum(map(len, records)))


def check_echo(run: Run) -> None:
    """1 MiB to an echo (socat EXEC:cat, or cat behind exec:) and back, the client
    shutting down writing when done: the echo ends only on that EOF."""
    mine = payload("echo")
    if run.pair.client == "nc":
        address = run.client_address
        argv = ["nc", "-N"]
        argv += [address[0], str(address[1])] if isinstance(address, tuple) else ["-U", address]
        source = run.workdir / "echo.in"
        source.write_bytes(mine)
        with source.open("rb") as stdin:
            got = _run_client(argv, stdin)
        run.connections += 1
    else:
        with connect(run) as sock:
            sender = threading.Thread(target=send_and_shut, args=(sock, mine))
            sender.start()
            got = read_to_eof(sock)
            sender.join()
    assert len(got) == SIZE and sha(got) == sha(mine)


def _run_client(argv: list[str], stdin: object) -> bytes:
    import subprocess

    done = subprocess.run(argv, stdin=stdin, capture_output=True, timeout=120, check=False)  # type: ignore[call-overload]
    assert done.returncode == 0, done.stderr
    out: bytes = done.stdout
    return out


def check_datagrams(run: Run) -> None:
    """Each datagram comes back whole and alone, in order, 1 MiB each way."""
    big = payload("datagrams")
    grams = [payload(f"d{n}", n) for n in RECORD_SIZES]
    grams += [big[i : i + PART] for i in range(0, SIZE, PART)]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(run.workdir / "client.sock"))
        sock.settimeout(60)
        echoed: list[bytes] = []

        def receive() -> None:
            while len(echoed) < len(grams):
                echoed.append(sock.recv(1 << 20))

        receiver = threading.Thread(target=receive)
        receiver.start()
        for gram in grams:
            assert sock.sendto(gram, run.front) == len(gram)
        receiver.join()
    assert [len(g) for g in echoed] == [len(g) for g in grams]
    assert echoed == grams
    os.unlink(run.workdir / "client.sock")


#: The client as a command behind LEFT exec:, its stdin and stdout one socket: sends
#: mode B and 1 MiB, shuts down writing, and records the sha256 of the reply in argv[1].
#: A relay of one connection sends its commands SIGTERM as soon as both directions
#: have ended (Relay.close -> _stop_children, then 2 s of grace), which can land
#: between our EOF and the write of the result: the client waits that out.
EXEC_CLIENT = r"""
import hashlib, signal, socket, sys, threading
signal.signal(signal.SIGTERM, signal.SIG_IGN)
sock = socket.socket(fileno=1)
def send():
    sock.sendall(b"B" + hashlib.shake_256(b"exec").digest(1 << 20))
    sock.shutdown(socket.SHUT_WR)
t = threading.Thread(target=send)
t.start()
h = hashlib.sha256()
while chunk := sock.recv(1 << 20):
    h.update(chunk)
t.join()
open(sys.argv[1], "w").write(h.hexdigest())
"""


def check_one_shot(run: Run, peers: Peers) -> None:
    """A relay of one connection: `-` on either side (the relay's stdin and stdout are
    the client) or a command as LEFT; 1 MiB both ways at once, then the relay ends by
    itself with status 0."""
    import subprocess

    pair = run.pair
    back = str(run.workdir / "back.sock")
    left = pair.left.format(back=back, back_port="", name="")
    right = pair.right.format(back=back, back_port="", name="")
    mine = payload("exec" if left.startswith("exec:") else "stdio")
    if left.startswith("exec:"):
        script = run.workdir / "client.py"
        script.write_text(EXEC_CLIENT)
        out = run.workdir / "exec.out"
        left = f"exec:exec {sys.executable} {script} {out}"  # the leader: see EXEC_CLIENT
        relay = peers.udskit("relay", *pair.options, left, right)
        assert relay.wait(120) == 0, relay.stop()[1]
        assert out.read_text() == sha(payload("server"))
        script.unlink()
        out.unlink()
    else:
        relay = peers.udskit(
            "relay", *pair.options, left, right, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        got, err = relay.proc.communicate(b"B" + mine, timeout=120)
        assert relay.proc.returncode == 0, err
        assert sha(got) == sha(payload("server"))
    assert run.result(1) == (sha(mine), SIZE)


# -- the whole check -----------------------------------------------------------------------
def check_relay(pair: Pair, peers: Peers, workdir: Path) -> None:
    run = open_run(pair, peers, workdir)
    if "-" in (pair.left, pair.right) or pair.left.startswith("exec:"):
        check_one_shot(run, peers)
        assert {p.name for p in workdir.iterdir()} == run.far_files
        return
    assert run.relay is not None
    pid = run.relay.pid
    baseline = fds_of(pid)
    checks: list[Callable[[Run], None]]
    if pair.kind == "datagrams":
        checks = [check_datagrams]
    elif pair.far in ("socat-echo", "exec"):
        checks = [check_echo, check_echo]
    elif pair.kind == "records":
        checks = [check_records, check_reset]
    else:
        checks = [check_both_ways, check_client_half_closes_first, check_server_half_closes_first]
        if pair.resets:
            checks.append(check_reset)
    for check in checks:
        check(run)
        if pair.kind == "datagrams":
            # One association (its own upstream socket) stays until it has been idle
            # for --dgram-idle: exactly one descriptor more, a socket.
            extra = set(fds_of(pid).items()) - set(baseline.items())
            assert len(extra) == 1 and next(iter(extra))[1].startswith("socket:"), extra
            assert set(baseline.items()) <= set(fds_of(pid).items())
        else:
            settled(run, baseline)
    run.relay.send_signal(signal.SIGTERM)
    assert run.relay.wait(30) == 128 + signal.SIGTERM, run.relay.stop()[1]  # documented: 143
    left = {p.name for p in workdir.iterdir()} - {"events.jsonl", "echo.in"}
    assert left == run.far_files - {"events.jsonl"}, f"left behind: {left - run.far_files}"
