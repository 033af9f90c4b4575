"""Descriptors and credentials over real unix sockets, with real peers (socat, setpriv)."""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT, Peers, wait_until
from udskit import (
    SCM_MAX_FD,
    ControlTruncated,
    Credentials,
    SocketError,
    UsageError,
    enable_passcred,
    peer_credentials,
    recv_fds,
    recv_message,
    send_fds,
    send_message,
)
from udskit.address import UnixAddress
from udskit.ancillary import enable_passpidfd, fd_count

TYPES = [socket.SOCK_STREAM, socket.SOCK_SEQPACKET, socket.SOCK_DGRAM]


def _pair(kind: int) -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, kind | socket.SOCK_CLOEXEC)


def _cloexec(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)


@pytest.mark.parametrize("kind", TYPES, ids=["stream", "seqpacket", "dgram"])
def test_a_pipe_passed_works_and_is_close_on_exec(kind: int) -> None:
    a, b = _pair(kind)
    r, w = os.pipe()
    with a, b:
        assert send_fds(a, [w], b"take this") == len(b"take this")
        data, fds, _flags, _addr = recv_fds(b, 100, 4)
        assert data == b"take this" and len(fds) == 1
        assert _cloexec(fds[0])
        os.write(fds[0], b"through the passed fd")
        assert os.read(r, 100) == b"through the passed fd"
        for fd in (r, w, *fds):
            os.close(fd)


def test_stream_with_no_data_sends_one_nul_byte() -> None:
    a, b = _pair(socket.SOCK_STREAM)
    r, w = os.pipe()
    with a, b:
        send_fds(a, [r])
        got = recv_message(b, 10, 1)
        assert got.data == b"\0" and len(got.fds) == 1
        for fd in (r, w, *got.fds):
            os.close(fd)


def test_datagram_to_an_address(sockdir: Path) -> None:
    """The stdlib's socket.send_fds has no address; an unconnected datagram needs one."""
    path = str(sockdir / "recv.sock")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sender.bind(str(sockdir / "send.sock"))
    r, w = os.pipe()
    with receiver, sender:
        send_fds(sender, [r, w], b"two", address=path)
        got = recv_message(receiver, 10, 2)
        assert got.data == b"two" and len(got.fds) == 2
        assert got.address == UnixAddress.pathname(str(sockdir / "send.sock"))
        for fd in (r, w, *got.fds):
            os.close(fd)


def test_more_than_scm_max_fd_is_refused_before_sending() -> None:
    a, b = _pair(socket.SOCK_DGRAM)
    r, w = os.pipe()
    with a, b:
        with pytest.raises(UsageError, match=f"at most {SCM_MAX_FD}"):
            send_fds(a, [r] * (SCM_MAX_FD + 1), b"too many")
        b.setblocking(False)
        with pytest.raises(BlockingIOError):
            b.recv(100)  # nothing was sent
        send_fds(a, [r] * SCM_MAX_FD, b"just enough")
        got = recv_message(b, 100, SCM_MAX_FD)
        assert len(got.fds) == SCM_MAX_FD
        for fd in (r, w, *got.fds):
            os.close(fd)


@pytest.mark.parametrize("kind", TYPES, ids=["stream", "seqpacket", "dgram"])
def test_truncation_is_an_error_and_leaks_nothing(kind: int) -> None:
    a, b = _pair(kind)
    r, w = os.pipe()
    with a, b:
        before = fd_count()
        send_fds(a, [r, w, r, w, r], b"five")
        with pytest.raises(ControlTruncated, match="MSG_CTRUNC") as caught:
            recv_message(b, 100, 2)
        assert caught.value.received <= 2
        assert "\n" not in str(caught.value)
        assert fd_count() == before
        os.close(r)
        os.close(w)


def test_a_bad_descriptor_is_one_line() -> None:
    a, b = _pair(socket.SOCK_DGRAM)
    with a, b, pytest.raises(SocketError, match="not open") as caught:
        send_fds(a, [9999], b"x")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("kind", TYPES, ids=["stream", "seqpacket", "dgram"])
def test_credentials_sent_and_received_with_a_pidfd(kind: int) -> None:
    a, b = _pair(kind)
    with a, b:
        enable_passcred(b)
        has_pidfd = enable_passpidfd(b)
        # As root we may claim other ids (CAP_SETUID/CAP_SETGID); the pid must be ours.
        claimed = Credentials(os.getpid(), 65534, 65534) if os.geteuid() == 0 else None
        send_message(a, b"who", credentials=claimed or Credentials.mine())
        got = recv_message(b, 10)
        assert got.data == b"who"
        assert got.credentials == (claimed or Credentials.mine())
        if has_pidfd:
            assert got.pidfd is not None
            assert os.readlink(f"/proc/self/fd/{got.pidfd}") == "anon_inode:[pidfd]"
            os.close(got.pidfd)


def test_a_lie_about_credentials_is_refused_in_one_line(peers: Peers) -> None:
    """A process that is not root may not claim uid 0: the kernel says EPERM."""
    script = textwrap.dedent(
        """
        import socket, sys
        from udskit import Credentials, SocketError, send_message
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            send_message(a, b"x", credentials=Credentials(1, 0, 0))
        except SocketError as err:
            print(err)
        """
    )
    result = peers.run(
        *peers.as_nobody(sys.executable, "-c", script),
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    line = result.stdout.decode().strip()
    assert "operation not permitted (EPERM)" in line and "only root" in line, result
    assert "\n" not in line


def test_peer_credentials_of_nobody_with_supplementary_groups(peers: Peers, sockdir: Path) -> None:
    """socat connects as nobody with groups 4 and 24 (setpriv); the kernel's view of
    the client is exactly that."""
    path = str(sockdir / "who.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    os.chmod(path, 0o666)
    server.listen()
    server.settimeout(10)
    client = peers.start(
        "setpriv",
        "--reuid",
        "65534",
        "--regid",
        "65534",
        "--groups",
        "4,24",
        "socat",
        "-",
        f"UNIX-CONNECT:{path}",
        stdin=subprocess.PIPE,
    )
    with server:
        conn, _ = server.accept()
        with conn:
            who = peer_credentials(conn)
            try:
                assert (who.uid, who.gid) == (65534, 65534)
                assert sorted(who.groups) == [4, 24]
                assert who.in_group(24) and who.in_group(65534) and not who.in_group(0)
                assert who.pid == client.pid  # setpriv execs socat: same process
                if who.pidfd is not None:
                    # The pidfd names socat: signal 0 through it reaches that process.
                    signal.pidfd_send_signal(who.pidfd, 0)
            finally:
                if who.pidfd is not None:
                    os.close(who.pidfd)


_PINGPONG = textwrap.dedent(
    """
    import os, socket, sys
    from udskit import recv_message, send_fds
    sock = socket.socket(fileno=int(sys.argv[1]))
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(int(sys.argv[2])):
        got = recv_message(sock, 16, 4)
        send_fds(sock, got.fds, got.data)
        for fd in got.fds:
            os.close(fd)
    print(before, len(os.listdir("/proc/self/fd")), flush=True)
    """
)


@pytest.mark.slow
def test_ten_thousand_passes_back_and_forth_leak_nothing(peers: Peers) -> None:
    rounds = 10_000
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    os.set_inheritable(theirs.fileno(), True)
    child = subprocess.Popen(
        [sys.executable, "-c", _PINGPONG, str(theirs.fileno()), str(rounds)],
        pass_fds=[theirs.fileno()],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    theirs.close()
    r, w = os.pipe()
    try:
        before = fd_count()
        for i in range(rounds):
            send_fds(mine, [r, w], i.to_bytes(4, "big"))
            got = recv_message(mine, 16, 4)
            assert got.data == i.to_bytes(4, "big") and len(got.fds) == 2
            for fd in got.fds:
                os.close(fd)
        after = fd_count()
        assert child.stdout is not None
        child_before, child_after = map(int, child.stdout.readline().split())
        assert child.wait(30) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
        os.close(r)
        os.close(w)
        mine.close()
    assert before == after
    assert child_before == child_after


_PID_REUSE = textwrap.dedent(
    """
    import json, os, select, signal, socket, subprocess, sys
    from udskit import peer_credentials
    # In a fresh pid namespace (unshare --pid --fork --mount-proc): pids here are ours.
    a, b = socket.socketpair()
    os.set_inheritable(b.fileno(), True)
    victim = subprocess.Popen(["sleep", "1000"], pass_fds=[b.fileno()])
    b.close()
    # socketpair's creds are the creator's; take the victim's through a listener instead
    srv = socket.socket(socket.AF_UNIX)
    srv.bind("\\0udskit-pidreuse")
    srv.listen()
    victim2 = subprocess.Popen(
        [sys.executable, "-c",
         "import socket,time; s=socket.socket(socket.AF_UNIX); "
         "s.connect('\\\\0udskit-pidreuse'); time.sleep(1000)"])
    conn, _ = srv.accept()
    who = peer_credentials(conn)
    pid = who.pid
    victim2.kill(); victim2.wait()
    victim.kill(); victim.wait()
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(pid - 1))
    newcomer = subprocess.Popen(["sleep", "1000"])
    poller = select.poll()
    poller.register(who.pidfd, select.POLLIN)
    exited = bool(poller.poll(0))
    try:
        signal.pidfd_send_signal(who.pidfd, signal.SIGTERM)
        reached = "signalled"
    except ProcessLookupError:
        reached = "ESRCH"
    alive = newcomer.poll() is None
    newcomer.kill(); newcomer.wait()
    print(json.dumps({"pid": pid, "newcomer": newcomer.pid, "exited": exited,
                      "signal": reached, "newcomer_alive": alive}))
    """
)


def test_a_pidfd_still_names_the_dead_peer_after_its_pid_is_reused(peers: Peers) -> None:
    """In a pid namespace of its own, the peer dies and a new process is given its very
    pid (ns_last_pid); the pidfd from SO_PEERPIDFD says "exited" and a signal sent
    through it reaches nobody, while a kill(pid) would have hit the newcomer."""
    if os.geteuid() != 0:
        pytest.fail("needs root (unshare --pid, ns_last_pid)")
    result = peers.run(
        "unshare",
        "--pid",
        "--fork",
        "--mount-proc",
        sys.executable,
        "-c",
        _PID_REUSE,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert result.returncode == 0, result.stderr.decode()
    facts = json.loads(result.stdout)
    assert facts["newcomer"] == facts["pid"]  # the pid really was reused
    assert facts["exited"] is True
    assert facts["signal"] == "ESRCH"
    assert facts["newcomer_alive"] is True


def test_peer_pidfd_polls_readable_once_the_peer_exits(peers: Peers, sockdir: Path) -> None:
    path = str(sockdir / "p.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen()
    server.settimeout(10)
    client = peers.start("socat", "-", f"UNIX-CONNECT:{path}", stdin=subprocess.PIPE)
    with server:
        conn, _ = server.accept()
        with conn:
            who = peer_credentials(conn)
            assert who.pid == client.pid and who.pidfd is not None
            poller = select.poll()
            poller.register(who.pidfd, select.POLLIN)
            assert poller.poll(0) == []
            client.stop()
            wait_until(lambda: bool(poller.poll(0)), what="the pidfd to say exited")
            with pytest.raises(ProcessLookupError):
                signal.pidfd_send_signal(who.pidfd, 0)
            os.close(who.pidfd)
