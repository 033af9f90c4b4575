"""`udskit dump` on real sockets with real clients: curl, redis-cli, redis-benchmark,
and tshark reading what we wrote. Every process is started through `peers` (killed by
PID at teardown)."""

from __future__ import annotations

import base64
import collections
import hashlib
import json
import os
import pwd
import random
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import UDSKIT, Peer, Peers, postgres_program
from udskit.capture.events import EventKind
from udskit.capture.pcapng import decode_events
from udskit.capture.proxy import dump_record, leftover_names
from udskit.cli.dump import _HTTP_SERVER
from udskit.tap import Direction

HASH_SERVER = """\
import hashlib, socket, sys, threading
srv = socket.socket(socket.AF_UNIX)
srv.bind(sys.argv[1])
srv.listen(1024)
def serve(c):
    h = hashlib.sha256()
    while data := c.recv(1 << 20):
        h.update(data)
    c.sendall(h.hexdigest().encode())
    c.close()
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

ECHO_SERVER = """\
import socket, sys, threading
kind = {"stream": socket.SOCK_STREAM, "dgram": socket.SOCK_DGRAM,
        "seqpacket": socket.SOCK_SEQPACKET}[sys.argv[2]]
name = sys.argv[1]
srv = socket.socket(socket.AF_UNIX, kind)
srv.bind("\\0" + name[1:] if name.startswith("@") else name)
if kind == socket.SOCK_DGRAM:
    while True:
        data, peer = srv.recvfrom(1 << 20)
        if peer:
            srv.sendto(data.upper(), peer)
srv.listen(128)
def serve(c):
    while data := c.recv(1 << 20):
        c.sendall(data.upper())
    c.close()
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


def wait_for(predicate: object, timeout: float = 15.0, what: str = "condition") -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def start_dump(peers: Peers, path: Path, *args: str, stdout: int | None = None) -> Peer:
    """Start `udskit dump ARGS PATH` and wait until the proxy is in the original's place."""
    before = os.lstat(path).st_ino
    dump = peers.udskit(
        "dump",
        "--engine",
        "proxy",
        *args,
        path,
        stdout=stdout if stdout is not None else subprocess.PIPE,
    )

    def taken_over() -> bool:
        if dump.proc.poll() is not None:
            err = dump.proc.stderr.read().decode() if dump.proc.stderr else ""
            raise AssertionError(f"udskit dump exited {dump.proc.returncode}: {err}")
        try:
            return os.lstat(path).st_ino != before
        except FileNotFoundError:
            raise AssertionError(f"{path} vanished during the takeover") from None

    wait_for(taken_over, what="udskit dump to take over")
    return dump


def stop_dump(dump: Peer, signum: int = signal.SIGINT) -> tuple[int, str, str]:
    os.kill(dump.pid, signum)
    out, err = dump.proc.communicate(timeout=60)
    return dump.proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def assert_restored(path: Path, inode: int) -> None:
    """The original is at PATH, and nothing of the dump is left: no hidden or staging
    name next to it, no state record."""
    assert os.lstat(path).st_ino == inode, "the original socket file is not back"
    assert leftover_names(str(path)) == []
    assert dump_record(str(path)) is None


def dump_names(path: Path) -> list[str]:
    """The dump's hidden and staging names next to PATH (random: found by prefix)."""
    return leftover_names(str(path))


def tshark(peers: Peers, pcap: Path, *args: str) -> list[str]:
    result = peers.run("tshark", "-r", pcap, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.decode().splitlines()


def redis(peers: Peers, sockdir: Path) -> Path:
    path = sockdir / "redis.sock"
    peers.start(
        "redis-server",
        "--port",
        "0",
        "--unixsocket",
        path,
        "--unixsocketperm",
        "660",
        "--save",
        "",
        "--appendonly",
        "no",
        wait_for=path,
        listening=True,
    )
    return path


def ping(path: Path) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(b"PING\r\n")
        return s.recv(100)


# -- real clients, and tshark as the judge -----------------------------------------------------
def test_curl_through_dump_and_tshark_reads_it(peers: Peers, sockdir: Path, tmp_path: Path) -> None:
    sock = sockdir / "http.sock"
    peers.start(sys.executable, "-c", _HTTP_SERVER, sock, wait_for=sock, listening=True)
    original = os.lstat(sock).st_ino
    pcap = tmp_path / "http.pcapng"
    dump = start_dump(peers, sock, "-w", str(pcap), "--print")
    for uri in ("/hello", "/api/items?id=7"):
        got = peers.run("curl", "-sS", "--unix-socket", sock, f"http://localhost{uri}")
        assert got.stdout == f"hello from {uri}\n".encode(), got.stderr
    status, out, err = stop_dump(dump)
    assert status == 130, err
    assert_restored(sock, original)
    assert "(curl) c2s" in out and "(curl) open" in out and "(server closed first)" in out
    assert "2 connections" in err or "on 2 connections" in err
    uris = tshark(peers, pcap, "-Y", "http.request", "-T", "fields", "-e", "http.request.uri")
    assert uris == ["/hello", "/api/items?id=7"]
    comments = set(tshark(peers, pcap, "-T", "fields", "-e", "frame.comment"))
    assert all('command="curl"' in c and f'path="{sock}"' in c for c in comments)
    # and back through our own printers
    text = peers.udskit_run("dump", "-r", pcap, "-A")
    assert text.returncode == 0
    assert "GET /api/items?id=7 HTTP/1.1" in text.stdout.decode()
    lines = peers.udskit_run("dump", "-r", pcap, "--json").stdout.decode().splitlines()
    records = [json.loads(x) for x in lines]
    assert {r["event"] for r in records} == {"open", "data", "close"}
    assert all(r["command"] == "curl" for r in records)


def test_redis_cli_and_benchmark_through_dump(peers: Peers, sockdir: Path, tmp_path: Path) -> None:
    sock = redis(peers, sockdir)
    mode_before = os.lstat(sock)
    pcap = tmp_path / "redis.pcapng"
    dump = start_dump(peers, sock, "--no-watchdog", "-w", str(pcap))
    during = os.lstat(sock)
    assert (during.st_mode, during.st_uid, during.st_gid) == (
        mode_before.st_mode,
        mode_before.st_uid,
        mode_before.st_gid,
    )
    assert peers.run("redis-cli", "-s", sock, "SET", "greeting", "hello").stdout == b"OK\n"
    assert peers.run("redis-cli", "-s", sock, "GET", "greeting").stdout == b"hello\n"
    bench = peers.run(
        "redis-benchmark", "-s", sock, "-t", "set,get", "-n", "2000", "-c", "10", "-q"
    )
    assert bench.returncode == 0 and b"requests per second" in bench.stdout
    status, _out, err = stop_dump(dump, signal.SIGTERM)
    assert status == 143, err
    assert_restored(sock, mode_before.st_ino)
    commands = tshark(peers, pcap, "-Y", "resp", "-T", "fields", "-e", "_ws.col.Info")
    assert any("SET greeting hello" in c for c in commands)
    assert any("GET greeting" in c for c in commands)
    comments = "\n".join(tshark(peers, pcap, "-T", "fields", "-e", "frame.comment"))
    assert 'command="redis-cli"' in comments and 'command="redis-benchmark"' in comments


# -- nothing lost ---------------------------------------------------------------------------------
def test_hundred_clients_a_mebibyte_each_every_byte_delivered_and_recorded(
    peers: Peers, sockdir: Path, tmp_path: Path
) -> None:
    sock = sockdir / "hash.sock"
    peers.start(sys.executable, "-c", HASH_SERVER, sock, wait_for=sock, listening=True)
    original = os.lstat(sock).st_ino
    pcap = tmp_path / "many.pcapng"
    dump = start_dump(peers, sock, "--no-watchdog", "-w", str(pcap))
    sent: dict[int, str] = {}
    replies: dict[int, str] = {}
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            data = random.Random(i).randbytes(1 << 20)
            sent[i] = hashlib.sha256(data).hexdigest()
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(120)
                s.connect(str(sock))
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
                reply = b""
                while chunk := s.recv(4096):
                    reply += chunk
                replies[i] = reply.decode()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors, errors[:3]
    assert replies == sent, "the server did not receive exactly what each client sent"
    status, _out, err = stop_dump(dump)
    assert status == 130, err
    assert_restored(sock, original)
    c2s: dict[int, hashlib._Hash] = collections.defaultdict(hashlib.sha256)
    s2c: dict[int, bytes] = collections.defaultdict(bytes)
    recorded_bytes = 0
    for ev in decode_events(pcap.read_bytes()):
        if ev.kind is EventKind.DATA:
            # A writer starved of CPU past BACKLOG_BYTES records lengths only, and says so.
            assert not ev.truncated, f"a chunk was recorded as its length only: {err}"
            recorded_bytes += ev.length
            if ev.direction is Direction.C2S:
                c2s[ev.conn].update(ev.data)
            else:
                s2c[ev.conn] += ev.data
    assert len(c2s) == 100
    recorded = sorted(h.hexdigest() for h in c2s.values())
    assert recorded == sorted(sent.values())
    for conn, digest in c2s.items():
        assert s2c[conn].decode() == digest.hexdigest()
    assert recorded_bytes == 100 * (1 << 20) + 100 * 64


# -- putting the original back -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)]
)
def test_original_is_back_after_a_signal(
    peers: Peers, sockdir: Path, signum: int, status: int
) -> None:
    sock = redis(peers, sockdir)
    original = os.lstat(sock).st_ino
    dump = start_dump(peers, sock)
    assert len(dump_names(sock)) == 1  # the hidden name (the staging one became PATH)
    assert ping(sock) == b"+PONG\r\n"
    got, out, err = stop_dump(dump, signum)
    assert got == status, err
    assert_restored(sock, original)
    assert ping(sock) == b"+PONG\r\n"
    assert "(redis-server)" not in out and "c2s" in out


def test_kill_9_then_restore(peers: Peers, sockdir: Path, tmp_path: Path) -> None:
    sock = redis(peers, sockdir)
    original = os.lstat(sock).st_ino
    pcap = tmp_path / "killed.pcapng"
    dump = start_dump(peers, sock, "--no-watchdog", "-w", str(pcap))
    assert peers.run("redis-cli", "-s", sock, "SET", "k", "v").stdout == b"OK\n"

    def written() -> bool:
        return any("SET k v" in x for x in tshark(peers, pcap, "-Y", "resp"))

    wait_for(written, what="the capture to reach the file while dumping")
    os.kill(dump.pid, signal.SIGKILL)
    dump.wait()
    assert written()  # what reached the file stays readable
    assert os.lstat(sock).st_ino != original  # the dead proxy's file is in the way
    again = peers.udskit_run("dump", "--engine", "proxy", sock)
    assert again.returncode == 1
    message = again.stderr.decode().strip()
    assert len(message.splitlines()) == 1 and f"udskit dump --restore {sock}" in message
    restore = peers.udskit_run("dump", "--restore", sock)
    assert restore.returncode == 0, restore.stderr
    assert "restored the original socket file" in restore.stderr.decode()
    assert_restored(sock, original)
    assert ping(sock) == b"+PONG\r\n"
    nothing = peers.udskit_run("dump", "--restore", sock)
    assert nothing.returncode == 0 and "nothing to restore" in nothing.stderr.decode()


def dead_socket_file(path: str) -> None:
    """A socket file with no socket behind it (what a killed proxy leaves)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(path)


#: A takeover and restore in a child that SIGKILLs itself right after the Nth link or
#: rename (argv[2], e.g. "rename1"): the states a `kill -9` can leave, for real.
KILLED_TAKEOVER = """\
import os, signal, sys
from udskit.capture import proxy
from udskit.address import parse_address
from udskit.capture.proxy import Takeover
real = os
counts = {}
def hook(what):
    counts[what] = counts.get(what, 0) + 1
    if f"{what}{counts[what]}" == sys.argv[2]:
        real.kill(real.getpid(), signal.SIGKILL)
class Hooked:
    def __getattr__(self, name):
        return getattr(real, name)
    def link(self, *a, **k):
        real.link(*a, **k); hook("link")
    def rename(self, *a, **k):
        real.rename(*a, **k); hook("rename")
proxy.os = Hooked()
t = Takeover(parse_address(sys.argv[1]))
t.start()
t.restore()
t.close()
"""


@pytest.mark.parametrize(
    ("killed_after", "path_is"),
    [
        ("link1", "original"),  # start(): the hidden name made, PATH still the original
        ("rename1", "proxy"),  # taken over: the dead proxy's file at PATH
        ("link2", "proxy"),  # restore(): the fresh name made, not yet renamed over PATH
        ("rename2", "original"),  # put back; the hidden name not yet dropped
    ],
)
def test_restore_after_a_kill_at_every_step(
    peers: Peers, sockdir: Path, killed_after: str, path_is: str
) -> None:
    sock = redis(peers, sockdir)
    original = os.lstat(sock).st_ino
    killed = peers.run(sys.executable, "-c", KILLED_TAKEOVER, sock, killed_after)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (os.lstat(sock).st_ino == original) == (path_is == "original")
    assert dump_names(sock) != []
    refused = peers.udskit_run("dump", "--engine", "proxy", sock)
    assert refused.returncode == 1
    assert b"was killed and left it moved; run `udskit dump --restore" in refused.stderr
    restore = peers.udskit_run("dump", "--restore", sock)
    assert restore.returncode == 0, restore.stderr
    assert_restored(sock, original)
    assert ping(sock) == b"+PONG\r\n"


@pytest.mark.parametrize("grace", [[], ["--grace", "0"]], ids=["default", "grace0"])
def test_a_thousand_connects_while_dump_starts_and_stops(
    peers: Peers, sockdir: Path, grace: list[str]
) -> None:
    sock = redis(peers, sockdir)
    original = os.lstat(sock).st_ino
    results: list[bytes | BaseException] = []
    lock = threading.Lock()
    done = threading.Event()

    def connector() -> None:
        while not done.is_set():
            try:
                answer = ping(sock)
            except BaseException as exc:
                answer = exc  # type: ignore[assignment]
            with lock:
                results.append(answer)
            time.sleep(0.002)

    threads = [threading.Thread(target=connector) for _ in range(2)]
    for t in threads:
        t.start()
    cycles = 0
    captured = 0
    try:
        # Until both a thousand connects and three dumps have happened, each dump
        # stopped only once a client went through it: counted in events, not in time
        # (on a busy machine one dump's start took as long as a thousand connects).
        while True:
            dump = start_dump(peers, sock, *grace)
            assert dump.proc.stdout is not None
            first = dump.proc.stdout.readline().decode(errors="replace")
            _status, out, _err = stop_dump(dump, signal.SIGINT if cycles % 2 else signal.SIGTERM)
            captured += (first + out).count(" open ")
            cycles += 1
            with lock:
                if cycles >= 3 and len(results) >= 1000:
                    break
    finally:
        done.set()
        for t in threads:
            t.join(30)
    failures = [r for r in results if r != b"+PONG\r\n"]
    assert not failures, f"{len(failures)} of {len(results)} connects failed: {failures[:3]}"
    assert len(results) >= 1000 and cycles >= 3 and captured >= 3
    assert_restored(sock, original)


# -- other kinds of socket ----------------------------------------------------------------------
def test_listen_beside_an_abstract_socket(peers: Peers, abstract_name: str) -> None:
    original = abstract_name + "-orig"
    front = abstract_name + "-front"
    peers.start(sys.executable, "-c", ECHO_SERVER, original, "stream", wait_for=original)
    dump = peers.udskit(
        "dump", "--engine", "proxy", "--json", "--listen", front, original, wait_for=front
    )
    got = peers.run("socat", "-", f"ABSTRACT-CONNECT:{front[1:]}", input=b"hello\n")
    assert got.stdout == b"HELLO\n"
    _status, out, _err = stop_dump(dump)
    records = [json.loads(line) for line in out.splitlines()]
    data = [r for r in records if r["event"] == "data"]
    assert [(r["direction"], r["length"]) for r in data] == [("c2s", 6), ("s2c", 6)]
    assert all(r["command"] == "socat" and r["path"] == front for r in records)


@pytest.mark.parametrize("kind", ["dgram", "seqpacket"])
def test_messages_keep_boundaries(peers: Peers, sockdir: Path, tmp_path: Path, kind: str) -> None:
    sock = sockdir / f"{kind}.sock"
    peers.start(sys.executable, "-c", ECHO_SERVER, sock, kind, wait_for=sock)
    original = os.lstat(sock).st_ino
    pcap = tmp_path / "m.pcapng"
    dump = start_dump(peers, sock, "-w", str(pcap), "--print")
    sock_type = socket.SOCK_DGRAM if kind == "dgram" else socket.SOCK_SEQPACKET
    messages = [b"a", b"bb", b"c" * 1000]
    with socket.socket(socket.AF_UNIX, sock_type) as s:
        s.settimeout(10)
        if kind == "dgram":
            s.bind("")  # autobind, so replies can come back
        s.connect(str(sock))
        for m in messages:
            s.send(m)
            assert s.recv(4096) == m.upper()
    status, out, err = stop_dump(dump)
    assert status == 130, err
    assert_restored(sock, original)
    assert "length 1000" in out
    data = [e for e in decode_events(pcap.read_bytes()) if e.kind is EventKind.DATA]
    assert [(e.direction, e.data) for e in data] == [
        x for m in messages for x in ((Direction.C2S, m), (Direction.S2C, m.upper()))
    ]
    assert [(e.sock_type.value, e.client.pid) for e in data] == [(kind, os.getpid())] * 6, out
    udp = tshark(peers, pcap, "-Y", "udp", "-T", "fields", "-e", "udp.length")
    # ... and the end of the connection, an empty packet that says so in its comment
    assert udp == [str(8 + len(m)) for m in messages for _ in (0, 1)] + ["8"]
    closes = [e for e in decode_events(pcap.read_bytes()) if e.kind is EventKind.CLOSE]
    assert [(e.conn, e.sock_type.value) for e in closes] == [(data[0].conn, kind)]
    assert "event=close" in tshark(peers, pcap, "-T", "fields", "-e", "frame.comment")[-1]


# -- filters and limits --------------------------------------------------------------------------
def test_count_pid_and_snaplen(peers: Peers, sockdir: Path) -> None:
    sock = sockdir / "echo.sock"
    peers.start(sys.executable, "-c", ECHO_SERVER, sock, "stream", wait_for=sock)
    original = os.lstat(sock).st_ino
    dump = start_dump(peers, sock, "-c", "4", "-s", "3", "--pid", str(os.getpid()))
    # socat's traffic is not ours: filtered out, and it does not count.
    assert peers.run("socat", "-", f"UNIX-CONNECT:{sock}", input=b"other\n").stdout == b"OTHER\n"
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(sock))
        for word in (b"hello", b"world"):
            s.sendall(word)
            assert s.recv(100) == word.upper()
    out, err = dump.proc.communicate(timeout=30)  # -c 4: it stops by itself
    assert dump.proc.returncode == 0, err
    assert_restored(sock, original)
    lines = out.decode().splitlines()
    data = [x for x in lines if " c2s " in x or " s2c " in x]
    assert len(data) == 4 and all(x.endswith("length 5 [captured 3]") for x in data)
    assert "socat" not in out.decode()


def test_snaplen_in_json_and_hex(peers: Peers, sockdir: Path) -> None:
    sock = sockdir / "echo.sock"
    peers.start(sys.executable, "-c", ECHO_SERVER, sock, "stream", wait_for=sock)
    dump = start_dump(peers, sock, "-s", "3", "--json")
    assert peers.run("socat", "-", f"UNIX-CONNECT:{sock}", input=b"GET / x\n").returncode == 0
    _status, out, _err = stop_dump(dump)
    data = [r for r in map(json.loads, out.splitlines()) if r["event"] == "data"]
    assert [(r["direction"], r["length"], r["truncated"]) for r in data] == [
        ("c2s", 8, True),
        ("s2c", 8, True),
    ]
    assert [base64.b64decode(r["data"]) for r in data] == [b"GET", b"GET"]
    dump = start_dump(peers, sock, "-s", "3", "-X")
    assert peers.run("socat", "-", f"UNIX-CONNECT:{sock}", input=b"GET / x\n").returncode == 0
    _status, out, _err = stop_dump(dump)
    assert out.count("length 8 [captured 3]") == 2
    assert out.count("0x0000:  4745 54") == 2 and "GET./" not in out


# -- errors a user can make ---------------------------------------------------------------------
def test_errors_are_one_line(peers: Peers, sockdir: Path, tmp_path: Path) -> None:
    missing = peers.udskit_run("dump", "--engine", "proxy", sockdir / "nothing.sock")
    assert missing.returncode == 1
    assert len(missing.stderr.decode().strip().splitlines()) == 1
    assert b"Traceback" not in missing.stderr
    plain = tmp_path / "file.txt"
    plain.write_text("x")
    not_socket = peers.udskit_run("dump", "--engine", "proxy", plain)
    assert not_socket.returncode == 2 and b"not a socket" in not_socket.stderr
    bad_file = peers.udskit_run("dump", "-r", plain)
    # unreadable content is a failure to read (1), as the README documents; like tshark
    assert bad_file.returncode == 1 and b"not a pcapng or pcap file" in bad_file.stderr
    stale = sockdir / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()
    refused = peers.udskit_run("dump", "--engine", "proxy", stale)
    assert refused.returncode == 1 and b"stale" in refused.stderr
    assert sorted(os.listdir(sockdir)) == ["stale.sock"]
    unwritable = peers.udskit_run("dump", "--engine", "proxy", "-w", "/proc/nope.pcapng", stale)
    assert unwritable.returncode == 2 and b"-w" in unwritable.stderr


def test_psql_through_dump_is_dissected_as_postgresql(
    peers: Peers, sockdir: Path, tmp_path: Path
) -> None:
    """A real PostgreSQL server (run as nobody, as it refuses root) and psql: the port
    is guessed from the startup message, and tshark dissects the query."""
    nobody = pwd.getpwnam("nobody")
    data, run = sockdir / "pgdata", sockdir / "pgrun"
    for directory in (data, run):
        directory.mkdir(mode=0o700)
        os.chown(directory, nobody.pw_uid, nobody.pw_gid)
    env = dict(os.environ, LANG="C", LC_ALL="C")
    init = peers.run(
        *peers.as_nobody(
            postgres_program("initdb"), "-D", data, "-U", "postgres", "--auth=trust", "-N"
        ),
        env=env,
    )
    assert init.returncode == 0, init.stderr
    sock = run / ".s.PGSQL.5432"
    peers.postgres(
        *peers.as_nobody(
            postgres_program("postgres"), "-D", data, "-k", run, "-c", "listen_addresses="
        ),
        env=env,
        wait_for=sock,
        listening=True,
    )
    pcap = tmp_path / "pg.pcapng"
    dump = start_dump(peers, sock, "--no-watchdog", "-w", str(pcap))
    query = peers.run(
        "psql", "-h", run, "-U", "postgres", "-d", "postgres", "-At", "-c", "SELECT 6 * 7"
    )
    assert query.returncode == 0, query.stderr
    assert query.stdout == b"42\n"
    status, _out, err = stop_dump(dump)
    assert status == 130, err
    rows = tshark(
        peers, pcap, "-Y", "pgsql.query", "-T", "fields", "-e", "pgsql.query", "-e", "frame.comment"
    )
    assert any(r.startswith("SELECT 6 * 7\t") and 'command="psql"' in r for r in rows), rows


def test_no_right_to_take_the_place_says_what_to_do(peers: Peers, sockdir: Path) -> None:
    sock = sockdir / "root.sock"
    peers.start(sys.executable, "-c", ECHO_SERVER, sock, "stream", wait_for=sock)
    out = peers.run(*peers.as_nobody(*UDSKIT, "dump", "--engine", "proxy", sock))
    assert out.returncode == 1
    line = out.stderr.decode()
    assert line.count("\n") == 1 and "Traceback" not in line
    assert f"uid 65534 (nobody) may not create files in {sockdir} (mode 0755" in line
    assert "run as root or as the directory's owner" in line and "--listen ADDR" in line
    assert sorted(os.listdir(sockdir)) == ["root.sock"]


def test_owner_group_and_mode_are_kept(peers: Peers, sockdir: Path) -> None:
    sock = sockdir / "private.sock"
    peers.start(sys.executable, "-c", ECHO_SERVER, sock, "stream", wait_for=sock)
    os.chown(sock, 65534, 65534)
    os.chmod(sock, 0o640)
    original = os.lstat(sock)
    dump = start_dump(peers, sock)
    proxy = os.lstat(sock)
    assert stat.S_IMODE(proxy.st_mode) == 0o640
    assert (proxy.st_uid, proxy.st_gid) == (65534, 65534)
    # user nobody may write the file (owner rw): connects, through the proxy.
    got = peers.run(*peers.as_nobody("socat", "-", f"UNIX-CONNECT:{sock}"), input=b"hi\n")
    assert got.stdout == b"HI\n"
    _status, out, _err = stop_dump(dump)
    assert "uid 65534" in out
    assert_restored(sock, original.st_ino)


def test_decode_as_sets_the_server_port(peers: Peers, sockdir: Path, tmp_path: Path) -> None:
    sock = sockdir / "echo.sock"
    peers.start(sys.executable, "-c", ECHO_SERVER, sock, "stream", wait_for=sock)
    pcap = tmp_path / "p.pcapng"
    dump = start_dump(peers, sock, "-w", str(pcap), "--decode-as", "5555")
    assert peers.run("socat", "-", f"UNIX-CONNECT:{sock}", input=b"x\n").stdout == b"X\n"
    stop_dump(dump)
    ports = tshark(
        peers,
        pcap,
        "-Y",
        "tcp.flags.syn == 1 && tcp.flags.ack == 0",
        "-T",
        "fields",
        "-e",
        "tcp.dstport",
    )
    assert ports == ["5555"]


def test_a_second_dump_on_the_same_socket_is_refused(peers: Peers, sockdir: Path) -> None:
    sock = redis(peers, sockdir)
    original = os.lstat(sock).st_ino
    first = start_dump(peers, sock)
    second = peers.udskit_run("dump", "--engine", "proxy", sock)
    assert second.returncode == 1
    assert b"another udskit dump already runs" in second.stderr
    assert ping(sock) == b"+PONG\r\n"
    stop_dump(first)
    assert_restored(sock, original)
