"""The dump's watchdog: after a kill -9 of `udskit dump PATH` the original socket file
is back at PATH without anyone running --restore; after a clean stop no watchdog is
left. Real servers (socat) and real clients (socat), the proxy engine pinned."""

from __future__ import annotations

import os
import pwd
import signal
from pathlib import Path

import pytest

from tests.conftest import Peer, Peers, wait_until
from tests.io.test_dump import start_dump, stop_dump
from udskit.capture.proxy import dump_record, leftover_names
from udskit.capture.watchdog import WATCHDOG_COMM


def socat_echo(peers: Peers, sockdir: Path) -> Path:
    path = sockdir / "echo.sock"
    peers.start("socat", f"UNIX-LISTEN:{path},fork", "EXEC:cat", wait_for=path, listening=True)
    return path


def socat_exchange(peers: Peers, path: Path, data: bytes) -> bytes:
    done = peers.run("socat", "-", f"UNIX-CONNECT:{path}", input=data)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


def watchdog_of(dump: Peer) -> int:
    """The pid of the dump's watchdog: its child named udskit-watchdog."""

    def children() -> list[int]:
        found = []
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    raw = f.read()
            except OSError:
                continue
            comm = raw[raw.index(b"(") + 1 : raw.rindex(b")")]
            ppid = int(raw[raw.rindex(b")") + 2 :].split()[1])
            if ppid == dump.pid and comm == WATCHDOG_COMM.encode():
                found.append(int(entry))
        return found

    wait_until(lambda: len(children()) == 1, what="the dump's watchdog")
    return children()[0]


def gone(pid: int) -> bool:
    """Exited (a zombie nobody reaped yet counts: it runs no code)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return True
    return raw[raw.rindex(b")") + 2 :].split()[0] in (b"Z", b"X")


def restored(path: Path, inode: int) -> bool:
    return (
        os.lstat(path).st_ino == inode
        and leftover_names(str(path)) == []
        and dump_record(str(path)) is None
    )


@pytest.mark.parametrize("whom", ["pid", "group"])
def test_after_kill_9_the_original_is_back_without_restore(
    peers: Peers, sockdir: Path, whom: str
) -> None:
    path = socat_echo(peers, sockdir)
    original = os.lstat(path).st_ino
    dump = start_dump(peers, path, "--engine", "proxy")
    watchdog = watchdog_of(dump)
    # Its own session: neither a Ctrl-C on the dump's terminal nor a kill of the
    # dump's process group reaches it.
    assert os.getsid(watchdog) != os.getsid(dump.pid)
    assert os.getpgid(watchdog) != os.getpgid(dump.pid)
    assert socat_exchange(peers, path, b"through the dump\n") == b"through the dump\n"
    assert os.lstat(path).st_ino != original  # the proxy stands in the original's place
    if whom == "pid":
        os.kill(dump.pid, signal.SIGKILL)
    else:  # a supervisor that kills the whole group
        os.killpg(dump.pid, signal.SIGKILL)
    # Not reaped on purpose: a killed dump stays a zombie until its parent waits, and
    # the watchdog must not take that for a running dump.
    wait_until(lambda: restored(path, original), what="the watchdog to put the original back")
    assert socat_exchange(peers, path, b"served again\n") == b"served again\n"
    wait_until(lambda: gone(watchdog), what="the watchdog to exit once done")
    assert dump.wait() == -signal.SIGKILL
    _out, err = dump.stop()
    said = err.decode()
    assert f"the dump (pid {dump.pid}) died without restoring" in said
    assert f"restored the original socket file {path}" in said
    assert "Traceback" not in said


def test_a_clean_stop_by_ctrl_c_on_the_group_leaves_no_watchdog(
    peers: Peers, sockdir: Path
) -> None:
    path = socat_echo(peers, sockdir)
    original = os.lstat(path).st_ino
    dump = start_dump(peers, path, "--engine", "proxy")
    watchdog = watchdog_of(dump)
    # udskit ls names it: the two ends of the pair it shares with the dump.
    listing = peers.udskit_run("ls").stdout.decode()
    assert f"udskit-watchdog[{watchdog}]" in listing
    assert socat_exchange(peers, path, b"ping\n") == b"ping\n"
    # Ctrl-C on a terminal: SIGINT to the whole foreground process group.
    os.killpg(dump.pid, signal.SIGINT)
    _out, err = dump.proc.communicate(timeout=60)
    assert dump.proc.returncode == 130, err.decode()
    assert restored(path, original)
    # The dump dismissed its watchdog and waited for it: no such process any more.
    assert not os.path.exists(f"/proc/{watchdog}")
    assert "watchdog" not in err.decode()
    assert socat_exchange(peers, path, b"after\n") == b"after\n"


def test_a_normal_restore_is_not_undone_by_the_watchdog(peers: Peers, sockdir: Path) -> None:
    """A dump stopped cleanly, then another dump of the same path: the first dump's
    watchdog is gone and does not touch the second one's takeover."""
    path = socat_echo(peers, sockdir)
    original = os.lstat(path).st_ino
    first = start_dump(peers, path, "--engine", "proxy")
    first_watchdog = watchdog_of(first)
    status, _out, err = stop_dump(first, signal.SIGTERM)
    assert status == 143, err
    assert not os.path.exists(f"/proc/{first_watchdog}")
    second = start_dump(peers, path, "--engine", "proxy")
    watchdog_of(second)
    proxy_inode = os.lstat(path).st_ino
    assert proxy_inode != original
    assert socat_exchange(peers, path, b"second\n") == b"second\n"
    assert os.lstat(path).st_ino == proxy_inode
    status, _out, err = stop_dump(second)
    assert status == 130, err
    assert restored(path, original)


def test_no_watchdog_leaves_the_restore_to_the_user(peers: Peers, sockdir: Path) -> None:
    path = socat_echo(peers, sockdir)
    original = os.lstat(path).st_ino
    dump = start_dump(peers, path, "--engine", "proxy", "--no-watchdog")
    os.kill(dump.pid, signal.SIGKILL)
    dump.wait()
    assert os.lstat(path).st_ino != original  # nobody put it back
    restore = peers.udskit_run("dump", "--restore", path)
    assert restore.returncode == 0, restore.stderr.decode()
    assert restored(path, original)


def test_in_a_hostile_directory_the_watchdog_leaves_a_planted_file_alone(
    peers: Peers, sockdir: Path
) -> None:
    """Root dumps a socket in a directory nobody owns; after the kill -9, and before the
    watchdog acts (it is held with SIGSTOP), nobody puts a symlink to a root file at
    PATH. The watchdog must neither follow it nor remove it: it names it and leaves the
    original under its hidden name, as --restore does."""
    if os.geteuid() != 0:
        pytest.skip("root in a directory another user owns")
    nobody = pwd.getpwnam("nobody")
    os.chown(sockdir, nobody.pw_uid, nobody.pw_gid)
    path = socat_echo(peers, sockdir)
    secret = sockdir.parent / f"udsk-secret-{os.getpid()}"
    secret.write_bytes(b"root only\n")
    secret.chmod(0o600)
    try:
        dump = start_dump(peers, path, "--engine", "proxy")
        watchdog = watchdog_of(dump)
        os.kill(watchdog, signal.SIGSTOP)
        try:
            os.kill(dump.pid, signal.SIGKILL)
            dump.wait()
            planted = peers.run(*peers.as_nobody("ln", "-sfn", secret, path))
            assert planted.returncode == 0, planted.stderr.decode()
        finally:
            os.kill(watchdog, signal.SIGCONT)
        wait_until(lambda: gone(watchdog), what="the watchdog to finish")
        _out, err = dump.stop()
        assert os.readlink(path) == str(secret)  # left where nobody put it
        assert secret.read_bytes() == b"root only\n" and secret.stat().st_mode & 0o777 == 0o600
        hidden = [p for p in leftover_names(str(path)) if ".udskit-dump-" in p]
        assert len(hidden) == 1  # the original's last name is kept, not lost
        said = err.decode()
        assert "symbolic link owned by uid 65534" in said and "left alone" in said
        assert "Traceback" not in said
        # What the admin does next: the planted link goes, --restore settles the rest
        # (and the kept record, which would otherwise outlive the test in /run/udskit).
        path.unlink()
        restore = peers.udskit_run("dump", "--restore", path)
        assert restore.returncode == 0, restore.stderr.decode()
        assert dump_record(str(path)) is None and leftover_names(str(path)) == []
    finally:
        secret.unlink()
