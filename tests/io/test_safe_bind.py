"""Safe bind: stale files replaced, live ones never; modes without a window; cleanup."""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from tests.conftest import UDSKIT, Peers, pids_whose_argv, wait_until
from udskit.address import parse_address
from udskit.endpoints import open_listener
from udskit.errors import SocketError
from udskit.probe import is_bound


def make_stale(path: Path) -> None:
    """A socket file whose server died without unlinking it."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()
    assert stat.S_ISSOCK(path.lstat().st_mode)


def test_stale_file_is_replaced(peers: Peers, sockdir: Path) -> None:
    path = sockdir / "stale.sock"
    make_stale(path)
    server = peers.udskit("listen", path, "--echo", wait_for=path, listening=True)
    assert peers.run("socat", "-", f"UNIX-CONNECT:{path}", input=b"ok").stdout == b"ok"
    _out, err = server.stop(signal.SIGTERM)
    assert b"replaced a stale socket file at" in err
    assert not path.exists()


def test_live_listener_is_never_removed(peers: Peers, sockdir: Path) -> None:
    path = sockdir / "live.sock"
    socat = peers.start(
        "socat", f"UNIX-LISTEN:{path},fork", "EXEC:cat", wait_for=path, listening=True
    )
    out = peers.udskit_run("listen", path)
    assert out.returncode == 1
    line = out.stderr.decode()
    assert line.count("\n") == 1, line
    assert "address in use (EADDRINUSE)" in line
    assert f"a live server listens there (pid {socat.pid} (socat))" in line
    assert peers.run("socat", "-", f"UNIX-CONNECT:{path}", input=b"still").stdout == b"still"


def test_live_datagram_socket_is_never_removed(peers: Peers, sockdir: Path) -> None:
    path = sockdir / "dgram.sock"
    peers.udskit("listen", path, "--type", "dgram", wait_for=path)
    out = peers.udskit_run("listen", path, "--type", "dgram")
    assert out.returncode == 1 and b"a live server listens there" in out.stderr
    assert is_bound(parse_address(str(path)))


def test_file_that_is_not_a_socket_is_never_removed(peers: Peers, sockdir: Path) -> None:
    path = sockdir / "data.txt"
    path.write_text("precious")
    out = peers.udskit_run("listen", path)
    assert out.returncode == 1
    assert b"is a regular file, not a socket; udskit never removes it" in out.stderr
    assert path.read_text() == "precious"


def test_twenty_servers_at_once_one_wins(sockdir: Path) -> None:
    path = sockdir / "race.sock"
    make_stale(path)
    procs = [
        subprocess.Popen(
            [*UDSKIT, "listen", str(path), "--echo"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        for _ in range(20)
    ]
    try:
        wait_until(
            lambda: sum(p.poll() is not None for p in procs) >= 19, 60, "19 servers to give up"
        )
        running = [p for p in procs if p.poll() is None]
        losers = [p for p in procs if p.poll() is not None]
        assert len(running) == 1
        assert len(losers) == 19
        for p in losers:
            assert p.returncode == 1
            assert p.stderr is not None
            assert b"a live server listens there" in p.stderr.read()
        # The winner's socket file is still there and it is the winner that answers.
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(str(path))
            c.sendall(b"winner?")
            assert c.recv(100) == b"winner?"
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
            p.wait(10)
            if p.stderr:
                p.stderr.close()
    assert not path.exists()


def test_mode_owner_group_with_no_window(peers: Peers, sockdir: Path) -> None:
    path = sockdir / "private.sock"
    nobody = pwd.getpwnam("nobody")
    seen: set[int] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            with contextlib.suppress(FileNotFoundError):
                seen.add(stat.S_IMODE(path.lstat().st_mode))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        peers.udskit(
            "listen",
            path,
            "--mode",
            "0640",
            "--owner",
            "nobody",
            "--group",
            str(nobody.pw_gid),
            wait_for=path,
            listening=True,
        )
    finally:
        stop.set()
        watcher.join()
    st = path.lstat()
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid)
    # Never more open than asked: every mode observed is within 0640.
    assert all(mode & ~0o640 == 0 for mode in seen), sorted(oct(m) for m in seen)


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_socket_file_removed_on_signal(
    peers: Peers, sockdir: Path, signum: int, status: int
) -> None:
    path = sockdir / "bye.sock"
    server = peers.udskit("listen", path, "--concurrent", "--echo", wait_for=path, listening=True)
    server.send_signal(signum)
    assert server.wait() == status
    assert not path.exists()


@pytest.mark.parametrize("inherited", ["ignored", "blocked"])
@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_server_started_with_the_stop_signals_ignored_or_blocked_still_stops(
    sockdir: Path, inherited: str, signum: int, status: int
) -> None:
    """Both survive exec: a shell's `trap '' INT TERM` (and a background job of a
    non-interactive shell, for SIGINT) leaves them ignored, and a parent that starts
    us while it holds them blocked passes its mask on. Either would leave a server
    that Ctrl-C and SIGTERM cannot stop."""
    path = sockdir / "deaf.sock"
    argv = [*UDSKIT, "listen", "--concurrent", "--echo", str(path)]
    stops = {signal.SIGINT, signal.SIGTERM}
    if inherited == "ignored":
        argv = ["sh", "-c", "trap '' INT TERM; exec \"$@\"", "sh", *argv]
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, stops if inherited == "blocked" else ())
    try:
        server = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    try:
        wait_until(lambda: is_bound(parse_address(str(path)), listening=True), what="listening")
        with socket.socket(socket.AF_UNIX) as idle:
            idle.connect(str(path))
            idle.sendall(b"x")
            assert idle.recv(1) == b"x"
            os.kill(server.pid, signum)
            try:
                code = server.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)  # so that its stderr can be read
                server.wait()
                code = None
        assert server.stderr is not None
        assert code == status, f"exit {code}: {server.stderr.read().decode(errors='replace')}"
        assert not path.exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        if server.stderr is not None:
            server.stderr.close()


def test_closing_does_not_unlink_a_successor(sockdir: Path) -> None:
    path = sockdir / "succ.sock"
    first = open_listener(path)
    os.unlink(path)  # somebody moved it away, then a successor bound the path
    with open_listener(path) as second:
        first.close()
        assert path.exists(), "closing the first listener removed its successor's file"
        assert second.address == parse_address(str(path))


def test_library_error_for_live_listener(sockdir: Path) -> None:
    path = sockdir / "lib.sock"
    with open_listener(path), pytest.raises(SocketError) as info:
        open_listener(path)
    assert f"a live server listens there (pid {os.getpid()} (" in str(info.value)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_concurrent_server_stops_with_idle_clients(
    peers: Peers, sockdir: Path, signum: int
) -> None:
    """An idle client must not keep a stopping server (and its socket file) alive."""
    path = sockdir / "idle.sock"
    server = peers.udskit("listen", path, "--echo", "--concurrent", wait_for=path, listening=True)
    idle = socket.socket(socket.AF_UNIX)
    idle.connect(str(path))
    with idle:
        idle.sendall(b"x")
        assert idle.recv(1) == b"x"  # served, and now idle
        server.send_signal(signum)
        assert server.wait(10) == (130 if signum == signal.SIGINT else 143)
    assert not path.exists()


def _blocked_signals(pid: int, tid: int) -> int:
    with open(f"/proc/{pid}/task/{tid}/status") as f:
        for line in f:
            if line.startswith("SigBlk:"):
                return int(line.split()[1], 16)
    raise AssertionError("no SigBlk line")


def test_only_the_main_thread_takes_stop_signals(peers: Peers, sockdir: Path) -> None:
    # The kernel gives a process's signal to any thread not blocking it; if a client's
    # thread took Ctrl-C, the main thread would stay in accept() and never stop.
    path = sockdir / "threads.sock"
    server = peers.udskit("listen", path, "--echo", "--concurrent", wait_for=path, listening=True)
    with socket.socket(socket.AF_UNIX) as idle:
        idle.connect(str(path))
        idle.sendall(b"x")
        assert idle.recv(1) == b"x"  # its thread runs now
        threads = [int(t) for t in os.listdir(f"/proc/{server.pid}/task")]
        helpers = [t for t in threads if t != server.pid]
        assert helpers, "no client thread"
        stop = (1 << (signal.SIGINT - 1)) | (1 << (signal.SIGTERM - 1)) | (1 << (signal.SIGHUP - 1))
        for tid in helpers:
            assert _blocked_signals(server.pid, tid) & stop == stop
        # The main thread blocks them only for a moment, inside start_worker() while
        # the client's thread starts (which may echo before that call returns).
        wait_until(
            lambda: _blocked_signals(server.pid, server.pid) & stop == 0,
            what="the main thread to take stop signals",
        )


@pytest.mark.parametrize("mode", [[], ["--concurrent"]])
def test_exec_command_is_stopped_with_the_server(
    peers: Peers, sockdir: Path, mode: list[str]
) -> None:
    path = sockdir / "exec.sock"
    marker = f"600.{os.getpid()}{len(mode)}"  # a sleep length no other process has
    server = peers.udskit(
        "listen", path, *mode, "--exec", f"sleep {marker}", wait_for=path, listening=True
    )
    client = socket.socket(socket.AF_UNIX)
    client.connect(str(path))
    with client:
        wait_until(lambda: _pids_named(marker) != [], what="the exec command to start")
        server.send_signal(signal.SIGTERM)
        assert server.wait(10) == 143
    wait_until(lambda: _pids_named(marker) == [], what="the exec command to be gone")
    assert not path.exists()


def _pids_named(marker: str) -> list[int]:
    """Pids of `sleep MARKER` processes (not of the shells that started them)."""
    want = [b"sleep", marker.encode()]
    return pids_whose_argv(lambda argv: argv == want)
