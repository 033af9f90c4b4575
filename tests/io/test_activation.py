"""Socket activation, both ends: `udskit activate` with servers that know nothing of
udskit, udskit under systemd-socket-activate, and a reload under load."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
from pathlib import Path

from tests.conftest import Peers, free_port, tcp_listening, wait_until
from tests.io.test_handoff import HTTP_SERVER, CurlLoop

#: What a plain LISTEN_FDS server reports: its env, and what it got at fd 3 and 4.
_REPORTER = textwrap.dedent(
    """
    import os, socket
    pid_ok = os.environ["LISTEN_PID"] == str(os.getpid())
    n = int(os.environ["LISTEN_FDS"])
    names = os.environ["LISTEN_FDNAMES"]
    socks = [socket.socket(fileno=3 + i) for i in range(n)]
    while True:
        conn, _ = socks[0].accept()
        with conn:
            conn.recv(100)
            kinds = ",".join(str(s.getsockname()) for s in socks)
            conn.sendall(f"pid_ok={pid_ok} n={n} names={names} socks={kinds}".encode())
    """
)


def test_a_plain_listen_fds_server_runs_under_activate(peers: Peers, sockdir: Path) -> None:
    web, admin = sockdir / "web.sock", sockdir / "admin.sock"
    activate = peers.udskit(
        "activate", "-l", str(web), "-l", f"seqpacket:{admin}", "--fdname", "web",
        "--fdname", "admin", "--", sys.executable, "-c", _REPORTER,
        wait_for=web, listening=True,
    )  # fmt: skip
    reply = peers.run("socat", "-t5", "-", f"UNIX-CONNECT:{web}", input=b"hi").stdout.decode()
    assert "pid_ok=True n=2 names=web:admin" in reply
    assert str(web) in reply and str(admin) in reply
    activate.stop(signal.SIGTERM)
    assert activate.proc.returncode == 128 + signal.SIGTERM  # the child's status
    assert not web.exists() and not admin.exists()


def test_udskit_serves_under_systemd_socket_activate(peers: Peers, sockdir: Path) -> None:
    path = sockdir / "sa.sock"
    server = peers.start(
        "systemd-socket-activate", "-l", str(path), sys.executable, "-m", "udskit", "listen",
        "--from-systemd", "--echo", "--concurrent",
        wait_for=path, listening=True,
    )  # fmt: skip
    for word in (b"first\n", b"second\n"):
        assert peers.run("socat", "-t5", "-", f"UNIX-CONNECT:{path}", input=word).stdout == word
    server.stop(signal.SIGTERM)


def test_ready_timeout_waits_for_ready_and_udskit_listen_sends_it(
    peers: Peers, sockdir: Path
) -> None:
    path = sockdir / "r.sock"
    activate = peers.udskit(
        "activate", "-v", "--ready-timeout", "20", "-l", str(path), "--", sys.executable,
        "-m", "udskit", "listen", "--from-systemd", "--upper",
        wait_for=path, listening=True,
    )  # fmt: skip
    assert (
        peers.run("socat", "-t5", "-", f"UNIX-CONNECT:{path}", input=b"loud\n").stdout == b"LOUD\n"
    )
    _out, err = activate.stop(signal.SIGTERM)
    assert b"is ready" in err


def test_a_child_that_never_sends_ready_is_one_line(peers: Peers, sockdir: Path) -> None:
    path = sockdir / "never.sock"
    marker = sockdir / "child.pid"
    result = peers.udskit_run(
        "activate", "--ready-timeout", "2", "-l", str(path), "--", "sh", "-c",
        f"echo $$ > {marker}; exec sleep 60",
    )  # fmt: skip
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 1
    assert len(lines) == 1 and "did not send READY=1" in lines[0], lines
    assert not path.exists()
    if marker.exists():  # (on a very busy machine the shell may not have run yet)
        child = int(marker.read_text())
        wait_until(lambda: not Path(f"/proc/{child}").exists(), what="the child to be gone")


def test_listen_pid_for_another_process_is_refused(peers: Peers) -> None:
    env = {**os.environ, "LISTEN_FDS": "1", "LISTEN_PID": "1"}
    result = peers.udskit_run("listen", "--from-systemd", "--echo", env=env)
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 1
    assert len(lines) == 1 and "LISTEN_PID is 1, not this process" in lines[0], lines


def test_activate_exits_with_the_childs_status_and_bad_commands_are_one_line(
    peers: Peers, sockdir: Path
) -> None:
    path = sockdir / "st.sock"
    result = peers.udskit_run("activate", "-l", str(path), "--", "sh", "-c", "exit 7")
    assert result.returncode == 7
    result = peers.udskit_run("activate", "-l", str(path), "--", "no-such-command-here")
    assert result.returncode == 2
    assert result.stderr.decode().count("\n") == 1 and b"command not found" in result.stderr
    assert not path.exists()


def test_reload_on_sighup_under_load_refuses_nobody(peers: Peers, sockdir: Path) -> None:
    """curl over the socket file and over TCP 127.0.0.1 for 5 s; SIGHUP starts a new
    server on the same sockets, waits for its READY=1, then stops the old one (which
    finishes what it has): no request fails and the answers switch to the new pid."""
    peers.require("curl")
    path = sockdir / "web.sock"
    port = free_port()
    activate = peers.udskit(
        "activate", "-v", "--ready-timeout", "20", "-l", str(path), "-l",
        f"tcp-listen:127.0.0.1:{port}", "--", sys.executable, HTTP_SERVER, "web",
        "--listen-fds", "--notify",
        wait_for=path, listening=True,
    )  # fmt: skip
    wait_until(lambda: tcp_listening(port), what="the TCP socket")
    loops = [
        CurlLoop("--unix-socket", str(path), "http://web/").start(),
        CurlLoop(f"http://127.0.0.1:{port}/").start(),
    ]
    for loop in loops:
        assert loop.started.wait(10)
    time.sleep(1.5)  # some requests to the first server (the outcome is what is checked)
    activate.send_signal(signal.SIGHUP)
    for loop in loops:
        loop.join()
    _out, err = activate.stop(signal.SIGTERM)
    assert b"reloaded: pid" in err, err
    for loop in loops:
        assert loop.failures == [], loop.failures[:3]
        pids: list[str] = []
        for _code, body, _err in loop.outcomes:
            pid = body.split()[-1]
            if not pids or pids[-1] != pid:
                pids.append(pid)
        assert len(pids) == 2, pids  # the old server, then the new one
        assert len(loop.outcomes) > 10


def test_relay_serves_an_inherited_socket_by_name(peers: Peers, sockdir: Path) -> None:
    back = sockdir / "back.sock"
    front = sockdir / "front.sock"
    admin = sockdir / "admin.sock"
    peers.udskit("listen", str(back), "--upper", "--concurrent", wait_for=back, listening=True)
    activate = peers.udskit(
        "activate", "-l", str(admin), "-l", str(front), "--fdname", "admin", "--fdname", "web",
        "--ready-timeout", "20", "--", sys.executable, "-m", "udskit", "relay", "systemd:web",
        str(back),
        wait_for=front, listening=True,
    )  # fmt: skip
    reply = peers.run("socat", "-t5", "-", f"UNIX-CONNECT:{front}", input=b"relayed\n")
    assert reply.stdout == b"RELAYED\n"
    activate.stop(signal.SIGTERM)
    assert not front.exists() and not admin.exists()


_LIBRARY = textwrap.dedent(
    """
    import os
    from udskit.activation import listen_fds
    found = listen_fds()
    print([(s.name, str(s.address), s.type.value if s.type else "tcp") for s in found])
    print("LISTEN_FDS" in os.environ, os.get_inheritable(found[0].sock.fileno()))
    """
)


def test_the_library_takes_inherited_sockets(peers: Peers, sockdir: Path) -> None:
    path = sockdir / "lib.sock"
    result = peers.udskit_run(
        "activate", "-l", f"dgram:{path}", "--fdname", "metrics", "--", sys.executable, "-c",
        _LIBRARY,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines() == [
        f"[('metrics', '{path}', 'dgram')]",
        "False False",  # the variables are unset and the fd is close-on-exec now
    ]


def test_a_reload_whose_new_child_never_gets_ready_keeps_the_old(
    peers: Peers, sockdir: Path
) -> None:
    """systemd-notify (systemd's own client) says READY=1 for the first child only; on
    SIGHUP the second never does, is stopped, and the first keeps serving: curl meets
    no failure throughout."""
    path = sockdir / "keep.sock"
    marker = sockdir / "first"
    script = (
        f"if [ ! -e {marker} ]; then touch {marker}; systemd-notify --ready; fi; "
        f"exec {sys.executable} {HTTP_SERVER} web --listen-fds"
    )
    activate = peers.udskit(
        "activate", "--ready-timeout", "3", "-l", str(path), "--", "sh", "-c", script,
        wait_for=path, listening=True,
    )  # fmt: skip
    wait_until(marker.exists, what="the first child")
    before = CurlLoop("--unix-socket", str(path), "http://web/")
    before.run_once()  # the first child's pid, before the new one shares the socket
    assert before.failures == [], before.outcomes
    first = before.outcomes[0][1].split()[-1]
    activate.send_signal(signal.SIGHUP)
    loop = CurlLoop("--unix-socket", str(path), "http://web/").start()
    loop.join()
    assert loop.failures == [] and len(loop.outcomes) > 10
    # The new child shares the socket while it is given its chance, so it may answer
    # some requests; once the activator says it gave up on it (an event, not a time:
    # on a busy machine that came after the loop), the first one serves on alone.
    assert activate.proc.stderr is not None
    said = b""
    while b"keeps serving" not in said:
        line = activate.proc.stderr.readline()
        assert line, said
        said += line
    assert b"reload failed" in said, said
    after = CurlLoop("--unix-socket", str(path), "http://web/")
    for _ in range(5):
        after.run_once()
    assert [body.split()[-1] for _code, body, _err in after.outcomes] == [first] * 5
    activate.stop(signal.SIGTERM)
