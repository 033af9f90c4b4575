"""`udskit dump` must not change what the server sees: each client's uid, gid and groups
(SO_PEERCRED, SO_PEERGROUPS), each sender's SCM_CREDENTIALS, and passed descriptors.
Judged by real servers: PostgreSQL's peer authentication, dbus-daemon, and small
servers that print what the kernel tells them. Run as root (the suite is)."""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import UDSKIT, Peers, postgres_program
from tests.io.test_dump import ECHO_SERVER, start_dump, stop_dump, wait_for

PEERCRED_SERVER = """\
import os, socket, struct, sys
srv = socket.socket(socket.AF_UNIX)
srv.bind(sys.argv[1])
os.chmod(sys.argv[1], 0o777)
srv.listen(64)
while True:
    c, _ = srv.accept()
    pid, uid, gid = struct.unpack("3i", c.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    raw = c.getsockopt(socket.SOL_SOCKET, 59, 1024)  # SO_PEERGROUPS
    groups = sorted(struct.unpack(f"{len(raw) // 4}I", raw))
    c.sendall(f"uid={uid} gid={gid} groups={','.join(map(str, groups))}".encode())
    c.close()
"""

PEERCRED_CLIENT = """\
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
print(s.recv(1000).decode())
"""

PASSCRED_SERVER = """\
import os, socket, struct, sys
srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
srv.bind(sys.argv[1])
os.chmod(sys.argv[1], 0o777)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
while True:
    data, anc, _flags, peer = srv.recvmsg(1000, socket.CMSG_SPACE(12))
    creds = [struct.unpack("3i", d[:12]) for lvl, kind, d in anc
             if lvl == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS]
    if peer and creds:
        srv.sendto("pid={} uid={} gid={}".format(*creds[0]).encode(), peer)
"""

PASSCRED_CLIENT = """\
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(b"")  # autobind: the server replies to this name
s.settimeout(10)
s.connect(sys.argv[1])
s.send(b"who am I")
print(f"mine pid={os.getpid()} uid={os.getuid()} gid={os.getgid()}")
print("seen " + s.recv(1000).decode())
"""

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def nobody_with_groups(*argv: str | os.PathLike[str]) -> list[str]:
    return [*NOBODY[:3], "--groups=100,7", *(os.fspath(a) for a in argv)]


def test_server_sees_the_clients_uid_gid_and_groups(peers: Peers, sockdir: Path) -> None:
    sock = sockdir / "cred.sock"
    peers.start(sys.executable, "-c", PEERCRED_SERVER, sock, wait_for=sock, listening=True)
    client = nobody_with_groups(sys.executable, "-c", PEERCRED_CLIENT, sock)
    direct = peers.run(*client)
    assert direct.stdout == b"uid=65534 gid=65534 groups=7,100\n", direct.stderr
    dump = start_dump(peers, sock)
    through = peers.run(*client)
    status, out, err = stop_dump(dump)
    assert status == 130, err
    assert through.stdout == direct.stdout, through.stderr
    assert "uid 65534 gid 65534" in out  # and the dump still records who it was


def test_datagram_server_with_passcred_sees_each_sender(peers: Peers, sockdir: Path) -> None:
    sock = sockdir / "dg.sock"
    peers.start(sys.executable, "-c", PASSCRED_SERVER, sock, wait_for=sock)
    dump = start_dump(peers, sock)
    results = [
        peers.run(*NOBODY, sys.executable, "-c", PASSCRED_CLIENT, sock),
        peers.run(sys.executable, "-c", PASSCRED_CLIENT, sock),
    ]
    status, _out, err = stop_dump(dump)
    assert status == 130, err
    for result in results:
        mine, seen = result.stdout.decode().splitlines()
        assert seen == "seen " + mine.removeprefix("mine "), result.stderr


def test_postgres_peer_authentication_judges_the_client_not_the_dump(
    peers: Peers, sockdir: Path
) -> None:
    """Debian's default `local all all peer`: the server maps the connecting uid to a
    role. Through the dump (run as root) postgres logs in as postgres, and nobody is
    refused for -U root and -U postgres, exactly as without the dump."""
    user = pwd.getpwnam("postgres")
    data, run = sockdir / "pgdata", sockdir / "pgrun"
    for directory in (data, run):
        directory.mkdir(mode=0o700 if directory == data else 0o755)
        os.chown(directory, user.pw_uid, user.pw_gid)
    env = dict(os.environ, LANG="C", LC_ALL="C")
    as_postgres = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]
    init = peers.run(
        *as_postgres,
        postgres_program("initdb"),
        "-D",
        data,
        "-U",
        "postgres",
        "--auth-local=peer",
        "--auth-host=reject",
        "-N",
        env=env,
        cwd="/",
    )
    assert init.returncode == 0, init.stderr
    sock = run / ".s.PGSQL.5432"
    peers.postgres(
        *as_postgres,
        postgres_program("postgres"),
        "-D",
        data,
        "-c",
        f"unix_socket_directories={run}",
        "-c",
        "listen_addresses=",
        env=env,
        cwd="/",
        wait_for=sock,
        listening=True,
    )
    ready = [postgres_program("pg_isready"), "-q", "-h", str(run)]
    wait_for(lambda: peers.run(*ready).returncode == 0, what="PostgreSQL to accept logins")
    psql = [postgres_program("psql"), "-h", str(run), "-d", "postgres", "-At", "-c"]
    sql = "SELECT current_user"

    last_error: list[bytes] = []

    def attempts() -> list[tuple[int, bytes]]:
        runs = [
            peers.run(*as_postgres, *psql, sql, "-U", "postgres", env=env, cwd="/"),
            peers.run(*NOBODY, *psql, sql, "-U", "root", env=env, cwd="/"),
            peers.run(*NOBODY, *psql, sql, "-U", "postgres", env=env, cwd="/"),
        ]
        last_error[:] = [r.stderr for r in runs]
        return [(r.returncode, r.stdout) for r in runs]

    direct = attempts()
    assert direct[0] == (0, b"postgres\n"), last_error
    assert direct[1][0] != 0 and direct[2][0] != 0
    dump = start_dump(peers, sock)
    through = attempts()
    status, out, err = stop_dump(dump)
    assert status == 130, err
    assert through == direct, last_error
    assert "uid 65534" in out and f"uid {user.pw_uid}" in out


DBUS_CONFIG = """\
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>custom</type>
  <listen>unix:path={path}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""

#: As nobody: Hello, then GetConnectionUnixUser of our own unique name.
DBUS_WHOAMI = """\
import sys
from jeepney import DBusAddress, new_method_call
from jeepney.io.blocking import open_dbus_connection
bus = DBusAddress("/org/freedesktop/DBus", "org.freedesktop.DBus", "org.freedesktop.DBus")
with open_dbus_connection(bus=sys.argv[1]) as conn:
    reply = conn.send_and_get_reply(
        new_method_call(bus, "GetConnectionUnixUser", "s", (conn.unique_name,)))
    print(reply.body[0])
"""

#: Claims uid 30 with AUTH EXTERNAL: the daemon compares it with SO_PEERCRED.
DBUS_CLAIM = """\
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
s.sendall(b"\\0AUTH EXTERNAL " + b"30".hex().encode() + b"\\r\\n")
print(s.recv(200).decode().split()[0])
"""

#: A service that reads the file it is sent, and a caller that sends a pipe's read end.
DBUS_FD_SERVICE = """\
import os, sys
from jeepney import new_method_return
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import open_dbus_connection
with open_dbus_connection(bus=sys.argv[1], enable_fds=True) as conn:
    conn.send_and_get_reply(message_bus.RequestName("org.udskit.Reader"))
    print("ready", flush=True)
    while True:
        msg = conn.receive()
        if msg.header.fields.get(3) == "Read":  # HeaderFields.member
            fd = msg.body[0].to_raw_fd()
            conn.send(new_method_return(msg, "s", (os.read(fd, 100).decode(),)))
            os.close(fd)
"""

DBUS_FD_CALL = """\
import os, sys
from jeepney import DBusAddress, new_method_call
from jeepney.io.blocking import open_dbus_connection
reader = DBusAddress("/", bus_name="org.udskit.Reader", interface="org.udskit.Reader")
r, w = os.pipe()
os.write(w, b"through the dump")
os.close(w)
with open_dbus_connection(bus=sys.argv[1], enable_fds=True) as conn:
    reply = conn.send_and_get_reply(new_method_call(reader, "Read", "h", (r,)), timeout=10)
    print(reply.body[0])
"""


def test_dbus_through_dump_sees_nobody_and_passes_descriptors(
    peers: Peers, sockdir: Path, tmp_path: Path
) -> None:
    peers.require("dbus-daemon", "dbus-send")
    sock = sockdir / "bus.sock"
    config = tmp_path / "bus.conf"
    config.write_text(DBUS_CONFIG.format(path=sock))
    peers.start("dbus-daemon", "--nofork", f"--config-file={config}", wait_for=sock, listening=True)
    address = f"unix:path={sock}"
    list_names = [
        *NOBODY,
        "dbus-send",
        f"--bus={address}",
        "--print-reply",
        "--dest=org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        "org.freedesktop.DBus.ListNames",
    ]
    whoami = [*NOBODY, sys.executable, "-c", DBUS_WHOAMI, address]
    claim = [*NOBODY, sys.executable, "-c", DBUS_CLAIM, str(sock)]
    assert peers.run(*claim).stdout == b"REJECTED\n"
    dump = start_dump(peers, sock, "--json")
    try:
        names = peers.run(*list_names)
        assert names.returncode == 0 and b"org.freedesktop.DBus" in names.stdout, names.stderr
        me = peers.run(*whoami)
        assert me.stdout == b"65534\n", me.stderr
        assert peers.run(*claim).stdout == b"REJECTED\n"
        service = peers.start(
            sys.executable, "-c", DBUS_FD_SERVICE, address, stdout=subprocess.PIPE
        )
        assert service.proc.stdout is not None
        assert service.proc.stdout.readline() == b"ready\n"
        call = peers.run(sys.executable, "-c", DBUS_FD_CALL, address)
        assert call.stdout == b"through the dump\n", call.stderr
    finally:
        status, out, err = stop_dump(dump)
    assert status == 130, err
    assert '"event":"fds"' in out.replace(" ", "") and "pipe:[" in out


FD_CLIENT = """\
import os, socket, sys
from udskit.ancillary import send_message
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
for i in range(int(sys.argv[2])):
    r, w = os.pipe()
    os.write(w, str(i).encode())
    os.close(w)
    send_message(s, str(i).encode() + b";", fds=[r])
    os.close(r)
s.shutdown(socket.SHUT_WR)
print(s.recv(100).decode())
"""

FD_SERVER = """\
import os, socket, sys
from udskit.ancillary import recv_message
srv = socket.socket(socket.AF_UNIX)
srv.bind(sys.argv[1])
srv.listen(8)
while True:
    c, _ = srv.accept()
    ok, text, bad = 0, b"", 0
    while True:
        m = recv_message(c, 65536, 253)
        if not m.data and not m.fds:
            break
        text += m.data
        for fd in m.fds:
            if os.read(fd, 100) != str(ok + bad).encode():
                bad += 1
            else:
                ok += 1
            os.close(fd)
    in_order = text == b"".join(str(i).encode() + b";" for i in range(ok + bad))
    c.sendall(f"{ok} in order, {bad} out of order, bytes {'ok' if in_order else 'WRONG'}".encode())
    c.close()
"""


def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_ten_thousand_descriptors_through_dump_in_order(
    peers: Peers, sockdir: Path, tmp_path: Path
) -> None:
    sock = sockdir / "fds.sock"
    peers.start(sys.executable, "-c", FD_SERVER, sock, wait_for=sock, listening=True)
    with open(tmp_path / "lines.txt", "wb") as lines:
        dump = start_dump(peers, sock, stdout=lines.fileno())
        assert dump.proc.stderr is not None
        assert dump.proc.stderr.readline().endswith(b"Ctrl-C to stop\n")  # up and running
        baseline = _fd_count(dump.pid)
        result = peers.run(sys.executable, "-c", FD_CLIENT, sock, "10000", timeout=120)
        assert result.stdout == b"10000 in order, 0 out of order, bytes ok\n", result.stderr
        wait_for(lambda: _fd_count(dump.pid) == baseline, what="the proxy's fd count to return")
        os.kill(dump.pid, signal.SIGINT)
        assert dump.proc.wait(60) == 130
    passed = [
        line for line in (tmp_path / "lines.txt").read_text().splitlines() if " fds 1: " in line
    ]
    assert len(passed) == 10000 and all(line.endswith(": pipe:[") is False for line in passed)
    assert all(" c2s " in line and "pipe:[" in line for line in passed)


def test_without_capabilities_dump_refuses_other_users_clients(peers: Peers, sockdir: Path) -> None:
    """nobody runs the dump on nobody's socket that anyone may connect to: it cannot
    carry identities, so it refuses; --allow-identity-change runs with one WARNING."""
    home = sockdir / "nobody"
    home.mkdir()
    nobody = pwd.getpwnam("nobody")
    os.chown(home, nobody.pw_uid, nobody.pw_gid)
    sock = home / "open.sock"
    peers.start(*NOBODY, sys.executable, "-c", ECHO_SERVER, sock, "stream", wait_for=sock)
    os.chmod(sock, 0o777)
    refused = peers.run(*NOBODY, *UDSKIT, "dump", "--engine", "proxy", sock)
    assert refused.returncode == 2
    line = refused.stderr.decode()
    assert line.count("\n") == 1 and "--allow-identity-change" in line and "as root" in line
    assert sorted(os.listdir(home)) == ["open.sock"]
    dump = peers.start(
        *NOBODY,
        *UDSKIT,
        "dump",
        "--engine",
        "proxy",
        "--allow-identity-change",
        sock,
        stdout=subprocess.DEVNULL,
    )
    assert dump.proc.stderr is not None
    head = [dump.proc.stderr.readline().decode() for _ in range(2)]  # up and running
    os.kill(dump.pid, signal.SIGINT)
    _out, err = dump.proc.communicate(timeout=30)
    assert dump.proc.returncode == 130, err
    assert head[0].startswith("udskit dump: WARNING: the server sees every client of ")
    assert "as uid 65534 (nobody)" in head[0] and head[1].endswith("Ctrl-C to stop\n")
    assert "WARNING" not in err.decode()  # one WARNING line, not more


DGRAM_FD_SERVER = """\
import os, socket, sys
from udskit.ancillary import recv_message, send_message
srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
srv.bind(sys.argv[1])
while True:
    m = recv_message(srv, 1000, 4)
    text = b"|".join(os.read(fd, 100) for fd in m.fds)
    for fd in m.fds:
        os.close(fd)
    r, w = os.pipe()
    os.write(w, b"back")
    os.close(w)
    send_message(srv, m.data + b":" + text, fds=[r], address=m.address)
    os.close(r)
"""

DGRAM_FD_CLIENT = """\
import os, socket, sys
from udskit.ancillary import recv_message, send_message
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(b"")
s.settimeout(10)
s.connect(sys.argv[1])
ends = []
for word in (b"one", b"two"):
    r, w = os.pipe()
    os.write(w, word)
    os.close(w)
    ends.append(r)
send_message(s, b"pipes", fds=ends)
reply = recv_message(s, 100, 4)
print(reply.data.decode(), *(os.read(fd, 100).decode() for fd in reply.fds))
"""


def test_datagram_with_descriptors_through_dump(peers: Peers, sockdir: Path) -> None:
    sock = sockdir / "dgfd.sock"
    peers.start(sys.executable, "-c", DGRAM_FD_SERVER, sock, wait_for=sock)
    dump = start_dump(peers, sock)
    result = peers.run(sys.executable, "-c", DGRAM_FD_CLIENT, sock)
    status, out, err = stop_dump(dump)
    assert status == 130, err
    assert result.stdout == b"pipes:one|two back\n", result.stderr
    assert " c2s " in out and " fds 2: pipe:[" in out
    assert [line for line in out.splitlines() if " s2c " in line and " fds 1: pipe:[" in line]


def test_passed_descriptors_are_in_text_json_and_pcapng(
    peers: Peers, sockdir: Path, tmp_path: Path
) -> None:
    sock = sockdir / "fdrec.sock"
    peers.start(sys.executable, "-c", FD_SERVER, sock, wait_for=sock, listening=True)
    pcap = tmp_path / "fds.pcapng"
    dump = start_dump(peers, sock, "-w", str(pcap), "--print")
    result = peers.run(sys.executable, "-c", FD_CLIENT, sock, "3")
    assert result.stdout == b"3 in order, 0 out of order, bytes ok\n", result.stderr
    status, live, err = stop_dump(dump)
    assert status == 130, err
    assert live.count(" c2s ") == 6 and live.count(" fds 1: pipe:[") == 3  # before each chunk
    read = peers.udskit_run("dump", "-r", pcap)
    assert read.stdout.decode().count(" fds 1: pipe:[") == 3, read.stderr
    as_json = peers.udskit_run("dump", "-r", pcap, "--json")
    events = [json.loads(line) for line in as_json.stdout.splitlines()]
    passed = [e for e in events if e["event"] == "fds"]
    assert len(passed) == 3 and all(e["fds"][0].startswith("pipe:[") for e in passed)
    comments = peers.run("tshark", "-r", pcap, "-T", "fields", "-e", "frame.comment")
    assert comments.stdout.decode().count("fds=1 fd_kinds=") == 3, comments.stderr


def test_seqpacket_records_carry_descriptors_both_ways(sockdir: Path) -> None:
    """The library's relay with a tap and carried identities (what dump runs): each
    record keeps its descriptors, both ways, and the tap hears of every pass."""
    import socket
    import threading

    from udskit.ancillary import fd_count, recv_message, send_message
    from udskit.relay import Relay
    from udskit.tap import ConnectionInfo, Direction

    up, front = str(sockdir / "up.sock"), str(sockdir / "front.sock")
    seen: list[tuple[str, tuple[str, ...]]] = []

    class Tap:
        def opened(self, conn: ConnectionInfo, time_ns: int) -> None: ...
        def data(self, conn: ConnectionInfo, d: Direction, data: object, t: int) -> None: ...
        def closed(self, conn: ConnectionInfo, first: Direction | None, t: int) -> None: ...
        def fds(self, conn: ConnectionInfo, d: Direction, kinds: tuple[str, ...], t: int) -> None:
            seen.append((d.value, kinds))

    def pipe_with(data: bytes) -> int:
        r, w = os.pipe()
        os.write(w, data)
        os.close(w)
        return r

    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server.bind(up)
    server.listen(1)
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            conn, _ = server.accept()
            with conn:
                for i in range(100):
                    got = recv_message(conn, 100, 4)
                    assert os.read(got.fds[0], 10) == str(i).encode()
                    os.close(got.fds[0])
                    back = pipe_with(b"back")
                    send_message(conn, got.data.upper(), fds=[back])
                    os.close(back)
        except BaseException as exc:
            errors.append(exc)

    relay = Relay(
        f"seqpacket:unix-listen:{front}", f"seqpacket:unix:{up}", tap=Tap(), carry_identity=True
    )
    with server, relay.start():
        baseline = fd_count()
        thread = threading.Thread(target=serve)
        thread.start()
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as client:
            client.connect(front)
            for i in range(100):
                mine = pipe_with(str(i).encode())
                send_message(client, b"rec%d" % i, fds=[mine])
                os.close(mine)
                reply = recv_message(client, 100, 4)
                assert reply.data == b"REC%d" % i
                assert os.read(reply.fds[0], 10) == b"back"
                os.close(reply.fds[0])
        thread.join(30)
        assert not errors, errors
        wait_for(lambda: fd_count() == baseline, what="the relay to close what it passed")
    assert [d for d, _ in seen].count("c2s") == 100 and [d for d, _ in seen].count("s2c") == 100
    assert all(kinds[0].startswith("pipe:[") for _, kinds in seen)
