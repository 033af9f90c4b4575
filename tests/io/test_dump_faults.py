"""`udskit dump` when things go wrong: signals inside the takeover's critical sections,
a wrong --type, a full disk, a stalled writer, a closed stdout, files that must not be
destroyed. Real servers and clients; the signal tests drive the proxy in this process
so that a signal lands exactly between two system calls."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import Peers
from tests.io.test_dump import (
    ECHO_SERVER,
    assert_restored,
    start_dump,
    stop_dump,
    wait_for,
)
from udskit.address import parse_address
from udskit.capture import pcapwriter, proxy, writerproc, writerwire
from udskit.capture.events import EventKind
from udskit.capture.pcapng import decode_events
from udskit.capture.proxy import Takeover
from udskit.cli import main
from udskit.cli.env import Env
from udskit.endpoints import directory_lock
from udskit.socktype import SocketType
from udskit.tap import ClientInfo, Direction

STOP = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def echo(peers: Peers, sockdir: Path, kind: str = "stream") -> Path:
    sock = sockdir / "echo.sock"
    # listening=True: bound is not enough, a stream connect() before listen() is refused.
    listening = True if kind != "dgram" else None
    peers.start(sys.executable, "-c", ECHO_SERVER, sock, kind, wait_for=sock, listening=listening)
    return sock


def exchange(path: Path, data: bytes = b"ping") -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(data)
        return s.recv(100)


class _Os(ModuleType):
    """`os` as udskit.capture.proxy sees it, with hooks on link and rename."""

    def __init__(self) -> None:
        super().__init__("os")
        self.after_link: Callable[[int], None] = lambda _n: None
        self.after_rename: Callable[[int], None] = lambda _n: None
        self.links = 0
        self.renames = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def link(self, src: str, dst: str, **kwargs: Any) -> None:
        os.link(src, dst, **kwargs)
        self.links += 1
        self.after_link(self.links)

    def rename(self, src: str, dst: str, **kwargs: Any) -> None:
        os.rename(src, dst, **kwargs)
        self.renames += 1
        self.after_rename(self.renames)


@pytest.fixture
def hooked_os(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Os]:
    fake = _Os()
    monkeypatch.setattr(proxy, "os", fake)
    yield fake


def blocked() -> set[int]:
    return set(signal.pthread_sigmask(signal.SIG_BLOCK, []))


def ctrl_c_to_main_thread() -> None:
    """SIGINT to the main thread, as the CLI's Ctrl-C lands there (its helper threads
    block the stop signals). Not os.kill(getpid): pytest's process may hold threads of
    other tests that do not block SIGINT, and the kernel gives a process-directed signal
    that the main thread blocks to any such thread; CPython then runs the handler in the
    main thread at its next bytecode, inside the region the mask should hold (the cause
    of this file's intermittent failures on a busy machine)."""
    signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)


def run_dump_here(argv: list[str], sock: Path) -> tuple[int, Env]:
    """`udskit dump ARGV` in this process (the main thread, where signal handlers
    run), stopped by a SIGINT once it has taken `sock` over."""
    before = os.lstat(sock).st_ino
    env = Env.in_memory()

    def stopper() -> None:
        wait_for(lambda: os.lstat(sock).st_ino != before, what="the takeover")
        # and until it forwards (a Ctrl-C during the start ends it without a summary)
        wait_for(lambda: "Ctrl-C to stop" in env.stderr.getvalue(), what="the dump to run")  # type: ignore[attr-defined]
        ctrl_c_to_main_thread()

    thread = threading.Thread(target=stopper, daemon=True)
    thread.start()
    status = main(["dump", "--engine", "proxy", *argv], env)
    thread.join(30)
    return status, env


# -- 1: a signal while the original is put back -----------------------------------------------
def test_a_signal_between_link_and_rename_in_restore_is_held(
    peers: Peers, sockdir: Path, hooked_os: _Os, tmp_path: Path
) -> None:
    sock = echo(peers, sockdir)
    original = os.lstat(sock).st_ino
    masks: list[set[int]] = []

    def second_ctrl_c(n: int) -> None:
        masks.append(blocked())
        if n == 2:  # the link of restore(): the second Ctrl-C lands here
            ctrl_c_to_main_thread()

    hooked_os.after_link = second_ctrl_c
    pcap = tmp_path / "c.pcapng"
    status, env = run_dump_here(["-w", str(pcap), str(sock)], sock)
    assert status == 130
    assert all(mask >= STOP for mask in masks) and len(masks) == 2
    assert_restored(sock, original)
    assert exchange(sock) == b"PING"
    err = env.stderr.getvalue()  # type: ignore[attr-defined]
    assert f"{sock} is back in place" in err and "data events" in err
    assert pcap.stat().st_size > 0  # the file was finished: header at least


def test_an_interrupt_before_restore_starts_is_retried_by_close(
    peers: Peers, sockdir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The reviewer's injection: KeyboardInterrupt out of restore()'s first step."""
    sock = echo(peers, sockdir)
    original = os.lstat(sock).st_ino
    real_lock = directory_lock
    calls = []

    def lock(path: str, op: str = "lock") -> Any:
        calls.append(path)
        if len(calls) == 2:  # 1: start(); 2: restore()
            raise KeyboardInterrupt
        return real_lock(path, op)

    monkeypatch.setattr(proxy, "directory_lock", lock)
    pcap = tmp_path / "c.pcapng"
    status, env = run_dump_here(["-w", str(pcap), str(sock)], sock)
    assert status == 130
    assert_restored(sock, original)
    assert exchange(sock) == b"PING"
    err = env.stderr.getvalue()  # type: ignore[attr-defined]
    assert "back in place" in err and "data events" in err
    assert list(decode_events(pcap.read_bytes())) == []


# -- 2: a signal right after the takeover's rename --------------------------------------------
def test_a_signal_between_link_and_rename_in_start_is_held(
    peers: Peers, sockdir: Path, hooked_os: _Os
) -> None:
    sock = echo(peers, sockdir)
    original = os.lstat(sock).st_ino
    masks: list[set[int]] = []

    def ctrl_c(n: int) -> None:
        masks.append(blocked())
        if n == 1:  # start()'s link, not restore()'s
            ctrl_c_to_main_thread()

    hooked_os.after_link = ctrl_c
    takeover = Takeover(parse_address(str(sock)))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    try:
        with pytest.raises(KeyboardInterrupt):  # delivered once the rename is recorded
            takeover.start()
    except BaseException:
        takeover.close()  # a failure must not leak the proxy's socket into later tests
        raise
    assert masks, "start() made no link through the hooked os"
    assert masks[0] >= STOP and hooked_os.renames == 1
    assert os.lstat(sock).st_ino != original and takeover.sock is not None
    takeover.close()
    assert takeover.restored
    assert_restored(sock, original)
    assert exchange(sock) == b"PING"


def test_an_exception_right_after_the_rename_puts_the_original_back(
    peers: Peers, sockdir: Path, hooked_os: _Os
) -> None:
    """The reviewer's injection: as if a handler raised just after rename(2) returned.
    The undo looks at inodes: the hidden name is the original's only name by then.
    (Only the takeover's rename raises: the undo's own rename must be let through.)"""
    sock = echo(peers, sockdir)
    original = os.lstat(sock).st_ino

    def interrupt(n: int) -> None:
        if n == 1:
            raise KeyboardInterrupt

    hooked_os.after_rename = interrupt
    with pytest.raises(KeyboardInterrupt):
        Takeover(parse_address(str(sock))).start()
    assert_restored(sock, original)
    assert exchange(sock) == b"PING"


def test_an_exception_right_after_the_link_leaves_path_alone(
    peers: Peers, sockdir: Path, hooked_os: _Os
) -> None:
    sock = echo(peers, sockdir)
    original = os.lstat(sock).st_ino

    def interrupt(_n: int) -> None:
        raise KeyboardInterrupt

    hooked_os.after_link = interrupt
    with pytest.raises(KeyboardInterrupt):
        Takeover(parse_address(str(sock))).start()
    assert_restored(sock, original)
    assert exchange(sock) == b"PING"


# -- 3: a wrong --type -------------------------------------------------------------------------
def test_a_wrong_type_is_refused_and_nothing_moves(peers: Peers, sockdir: Path) -> None:
    sock = echo(peers, sockdir)
    original = os.lstat(sock).st_ino
    wrong = peers.udskit_run("dump", "--engine", "proxy", "--type", "dgram", sock)
    assert wrong.returncode == 2
    assert wrong.stderr.decode() == f"udskit dump: {sock} is a stream socket; drop --type\n"
    assert_restored(sock, original)
    assert exchange(sock) == b"PING"
    right = start_dump(peers, sock, "--type", "stream")
    assert exchange(sock) == b"PING"
    status, _out, err = stop_dump(right)
    assert status == 130, err
    assert_restored(sock, original)


# -- 4: --restore unix:PATH ---------------------------------------------------------------------
def test_restore_takes_the_unix_prefix(peers: Peers, sockdir: Path) -> None:
    sock = echo(peers, sockdir)
    original = os.lstat(sock).st_ino
    dump = start_dump(peers, sock, "--no-watchdog")
    os.kill(dump.pid, signal.SIGKILL)
    dump.wait()
    restore = peers.udskit_run("dump", "--restore", f"unix:{sock}")
    assert restore.returncode == 0, restore.stderr
    assert "restored the original socket file" in restore.stderr.decode()
    assert_restored(sock, original)
    assert exchange(sock) == b"PING"


# -- 5: a full disk ---------------------------------------------------------------------
def test_a_full_disk_is_one_line_and_the_dump_stops(peers: Peers, sockdir: Path) -> None:
    sock = echo(peers, sockdir)
    original = os.lstat(sock).st_ino
    dump = start_dump(peers, sock, "-w", "/dev/full")
    # The writer fails on the file header; the proxy notices and stops by itself.
    _out, err = dump.proc.communicate(timeout=60)
    text = err.decode()
    assert dump.proc.returncode == 1, text
    assert text.splitlines()[-1] == ("udskit dump: cannot write /dev/full: no space left on device")
    assert "Traceback" not in text
    assert_restored(sock, original)


def test_a_full_disk_is_reported_even_when_ctrl_c_comes_first(peers: Peers, sockdir: Path) -> None:
    sock = echo(peers, sockdir)
    original = os.lstat(sock).st_ino
    dump = start_dump(peers, sock, "-w", "/dev/full")
    assert exchange(sock) == b"PING"  # forwarding: the writer was started
    status, _out, err = stop_dump(dump)
    assert status in (1, 130), err  # whichever the proxy saw first
    assert "udskit dump: cannot write /dev/full: no space left on device" in err
    assert "Traceback" not in err
    assert_restored(sock, original)


# -- 6: a failed start keeps the -w file ----------------------------------------------------------
def test_a_failed_start_keeps_an_existing_file_and_removes_a_new_one(
    peers: Peers, sockdir: Path, tmp_path: Path
) -> None:
    precious = tmp_path / "precious.pcapng"
    precious.write_bytes(b"yesterday's capture")
    missing = sockdir / "nothing.sock"
    failed = peers.udskit_run("dump", "--engine", "proxy", "-w", precious, missing)
    assert failed.returncode == 1, failed.stderr
    assert precious.read_bytes() == b"yesterday's capture"
    new = tmp_path / "new.pcapng"
    failed = peers.udskit_run("dump", "--engine", "proxy", "-w", new, missing)
    assert failed.returncode == 1 and not new.exists()


# -- 7: -r and -w ---------------------------------------------------------------------------------
def test_read_and_write_the_same_file_is_refused(
    peers: Peers, sockdir: Path, tmp_path: Path
) -> None:
    sock = echo(peers, sockdir)
    pcap = tmp_path / "c.pcapng"
    dump = start_dump(peers, sock, "-w", str(pcap))
    assert exchange(sock) == b"PING"
    stop_dump(dump)
    before = pcap.read_bytes()
    same = peers.udskit_run("dump", "-r", pcap, "-w", tmp_path / "." / "c.pcapng")
    assert same.returncode == 2 and b"the same file" in same.stderr
    assert pcap.read_bytes() == before
    copy = tmp_path / "copy.pcapng"
    quiet = peers.udskit_run("dump", "-r", pcap, "-w", copy)
    assert quiet.returncode == 0 and quiet.stdout == b""  # -w alone prints nothing
    assert list(decode_events(copy.read_bytes())) == list(decode_events(before))
    shown = peers.udskit_run("dump", "-r", pcap, "-w", copy, "--print")
    assert shown.returncode == 0 and b" c2s " in shown.stdout


# -- 8: a stalled writer does not stall the traffic ------------------------------------------------
def test_a_stopped_writer_neither_slows_traffic_nor_loses_records(
    peers: Peers, sockdir: Path, tmp_path: Path
) -> None:
    sock = echo(peers, sockdir)
    original = os.lstat(sock).st_ino
    pcap = tmp_path / "stall.pcapng"
    dump = start_dump(peers, sock, "-w", str(pcap))
    wait_for(lambda: pcap.stat().st_size > 0, what="the writer to start")
    children = subprocess.run(
        ["pgrep", "-P", str(dump.pid)], capture_output=True, check=True
    ).stdout.split()
    writer = int(children[0])
    os.kill(writer, signal.SIGSTOP)  # a writer that gets no CPU at all
    try:
        sent = random.Random(3).randbytes(16 << 20)  # more than every pipe holds
        got = bytearray()
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(60)  # a proxy blocked on the writer would stop the echo
            s.connect(str(sock))

            def read() -> None:
                while len(got) < len(sent) and (chunk := s.recv(1 << 20)):
                    got.extend(chunk)

            reader = threading.Thread(target=read)
            reader.start()
            s.sendall(sent)
            reader.join(120)
        assert bytes(got) == sent.upper()
        os.kill(dump.pid, signal.SIGINT)
        # Ctrl-C is heard at once: the original is back while the writer is still stopped.
        wait_for(lambda: os.lstat(sock).st_ino == original, what="the original back")
    finally:
        os.kill(writer, signal.SIGCONT)
    _out, err = dump.proc.communicate(timeout=120)
    assert dump.proc.returncode == 130, err
    assert_restored(sock, original)
    assert b"WARNING" not in err  # 16 MiB fits the backlog: nothing lost
    c2s = hashlib.sha256()
    for ev in decode_events(pcap.read_bytes()):
        if ev.kind is EventKind.DATA and ev.direction is Direction.C2S:
            c2s.update(ev.data)
    assert c2s.digest() == hashlib.sha256(sent).digest()


def test_beyond_the_backlog_chunks_are_kept_as_lengths_then_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pcapwriter, "BACKLOG_BYTES", 2 << 20)
    pcap = tmp_path / "loss.pcapng"
    writer = pcapwriter.PcapngWriter(str(pcap))
    writer.begin()
    assert writer.proc is not None
    os.kill(writer.proc.pid, signal.SIGSTOP)
    try:
        writer.opened(1, "/s", SocketType.STREAM, ClientInfo(1, 0, 0, "t"), 1)
        chunk = b"x" * 60_000
        for i in range(200):  # 12 MB: pipe + spool-less writer + backlog overflow
            writer.data(1, Direction.C2S, chunk, len(chunk), 2 + i)
        assert writer.flush() is True  # never blocks; records wait
        assert writer.backlog <= 2 * (2 << 20) + writerwire.FLUSH_BYTES
        writer.closed(1, Direction.C2S, 10**6)
    finally:
        os.kill(writer.proc.pid, signal.SIGCONT)
    writer.close()
    loss = writer.loss()
    assert loss is not None and "as lengths only" in loss
    events = list(decode_events(pcap.read_bytes()))
    data = [e for e in events if e.kind is EventKind.DATA]
    kept = sum(len(e.data) for e in data)
    cut = sum(1 for e in data if e.truncated)
    assert cut == writer.cut_chunks and len(data) == 200 - writer.dropped_chunks
    assert kept == (200 - writer.cut_chunks - writer.dropped_chunks) * len(chunk)
    assert events[-1].kind is EventKind.CLOSE  # opens and closes are never shed


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(child) for child in f.read().split()]


def _spool_files(pid: int) -> list[str]:
    """The unlinked files `pid` holds open (the writer's spool files; stdio may be
    pytest's own unlinked capture file)."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        if int(fd) <= 2:
            continue
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.endswith("(deleted)"):
            found.append(target)
    return found


def writer_spool_size(pid: int) -> int:
    """The size of the spool file the writer process `pid` appends to (0: none yet)."""
    for fd in os.listdir(f"/proc/{pid}/fd"):
        link = f"/proc/{pid}/fd/{fd}"
        with contextlib.suppress(OSError):
            if int(fd) > 2 and os.readlink(link).endswith("(deleted)"):
                return os.stat(link).st_size
    return 0


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.fixture
def writer_and_encoder() -> Iterator[Callable[[Path], tuple[pcapwriter.PcapngWriter, int]]]:
    """Starts PcapngWriters; returns each with its encoder's pid. At teardown, even
    after a failure, each writer's process group (writer and encoder) is killed."""
    started: list[pcapwriter.PcapngWriter] = []

    def start(pcap: Path) -> tuple[pcapwriter.PcapngWriter, int]:
        writer = pcapwriter.PcapngWriter(str(pcap))
        writer.begin()
        started.append(writer)
        assert writer.proc is not None
        wait_for(lambda: len(_children(writer.proc.pid)) == 1, what="the encoder")
        (encoder,) = _children(writer.proc.pid)
        # Its set-up done (PR_SET_PDEATHSIG comes before its nice value): a test that
        # stopped it earlier froze it before it could arrange to die with the writer.
        # (os.nice adds to what it inherited: under `nice make test` it stops at 19.)
        niced = min(19, os.getpriority(os.PRIO_PROCESS, 0) + writerproc.ENCODER_NICE)
        wait_for(
            lambda: os.getpriority(os.PRIO_PROCESS, encoder) == niced,
            what="the encoder's set-up",
        )
        return writer, encoder

    yield start
    for writer in started:
        assert writer.proc is not None
        # The whole group, even when the writer itself is gone: its encoder may not be.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(writer.proc.pid, signal.SIGKILL)
        writer.proc.wait()
        for stream in (writer.proc.stdin, writer.proc.stderr):
            if stream is not None:
                stream.close()


def test_a_starved_encoder_loses_nothing_and_frees_each_spool_file_once_encoded(
    tmp_path: Path, writer_and_encoder: Callable[[Path], tuple[pcapwriter.PcapngWriter, int]]
) -> None:
    # The encoder only gets idle CPU (SCHED_IDLE): stopped outright, records must wait
    # on disk, not in the proxy, and each spool file must go once it is encoded.
    pcap = tmp_path / "spool.pcapng"
    writer, encoder = writer_and_encoder(pcap)
    # It sets its own class just after the fork.
    wait_for(lambda: os.sched_getscheduler(encoder) == os.SCHED_IDLE, what="SCHED_IDLE")
    os.kill(encoder, signal.SIGSTOP)
    chunk = random.Random(5).randbytes(64 << 10)
    count = 3200  # 200 MiB: three spool files and more, in many small pipe writes
    try:
        writer.opened(1, "/s", SocketType.STREAM, ClientInfo(1, 0, 0, "t"), 1)
        for i in range(count):
            writer.data(1, Direction.C2S, chunk, len(chunk), 2 + i)
            while writer.flush():  # the spooler keeps the pipe moving
                time.sleep(0.001)
        assert writer.backlog == 0  # nothing waits in the proxy
        # Handed over even though the encoder reads nothing: the spooler's own file
        # never grows past one spool file (and the next chunk).
        assert writer.proc is not None
        wait_for(lambda: writer_spool_size(writer.proc.pid) > 0, what="the spool")
        assert writer_spool_size(writer.proc.pid) <= writerproc.SPOOL_FILE_BYTES + (2 << 20)
    finally:
        os.kill(encoder, signal.SIGCONT)
    wait_for(
        lambda: pcap.stat().st_size > count * len(chunk) and len(_spool_files(encoder)) == 1,
        what="the encoder to catch up",
        timeout=120,
    )
    writer.closed(1, Direction.C2S, 10**9)
    writer.close()
    assert writer.loss() is None
    got = hashlib.sha256()
    for ev in decode_events(pcap.read_bytes()):
        if ev.kind is EventKind.DATA:
            got.update(ev.data)
    assert got.digest() == hashlib.sha256(chunk * count).digest()


def test_a_second_ctrl_c_stops_the_encoder_too(
    tmp_path: Path, writer_and_encoder: Callable[[Path], tuple[pcapwriter.PcapngWriter, int]]
) -> None:
    writer, encoder = writer_and_encoder(tmp_path / "cut.pcapng")
    os.kill(encoder, signal.SIGSTOP)  # far behind: closing would wait for it
    writer.opened(1, "/s", SocketType.STREAM, ClientInfo(1, 0, 0, "t"), 1)
    writer.data(1, Direction.C2S, b"x" * 1000, 1000, 2)

    def second_ctrl_c() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        writer.close(on_slow=second_ctrl_c)
    assert writer.loss() is not None and "ends early" in writer.loss()  # type: ignore[operator]
    assert writer.proc is not None and _gone(writer.proc.pid)
    wait_for(lambda: _gone(encoder), what="the encoder to be gone")


def test_when_the_records_end_the_encoder_leaves_the_idle_class(
    tmp_path: Path, writer_and_encoder: Callable[[Path], tuple[pcapwriter.PcapngWriter, int]]
) -> None:
    # While traffic flows the encoder only gets idle CPU; once the pipe ends nothing
    # needs the CPU more than finishing the file, even on a busy machine.
    writer, encoder = writer_and_encoder(tmp_path / "end.pcapng")
    wait_for(lambda: os.sched_getscheduler(encoder) == os.SCHED_IDLE, what="SCHED_IDLE")
    os.kill(encoder, signal.SIGSTOP)  # behind: it has all the work still to do
    writer.opened(1, "/s", SocketType.STREAM, ClientInfo(1, 0, 0, "t"), 1)
    writer.data(1, Direction.C2S, b"x" * 1000, 1000, 2)
    closing = threading.Thread(target=writer.close)
    closing.start()
    try:
        wait_for(lambda: os.sched_getscheduler(encoder) == os.SCHED_OTHER, what="SCHED_OTHER")
    finally:
        os.kill(encoder, signal.SIGCONT)
        closing.join(60)
    assert not closing.is_alive() and writer.loss() is None


def test_a_user_who_could_not_undo_sched_idle_keeps_a_normal_encoder(peers: Peers) -> None:
    peers.require("setpriv")
    probe = "from udskit.capture.writerproc import can_leave_idle_class as c; print(c())"
    as_root = peers.run(sys.executable, "-c", probe)
    assert (as_root.returncode, as_root.stdout) == (0, b"True\n"), as_root.stderr.decode()
    nice = resource.getrlimit(resource.RLIMIT_NICE)
    if nice[0] != 0:
        pytest.skip(f"RLIMIT_NICE is {nice[0]} here, so any user may leave SCHED_IDLE")
    as_nobody = peers.run(*peers.as_nobody(sys.executable, "-c", probe))
    # RLIMIT_NICE 0 and no CAP_SYS_NICE: nobody could not undo SCHED_IDLE.
    assert (as_nobody.returncode, as_nobody.stdout) == (0, b"False\n"), as_nobody.stderr.decode()


def test_in_a_rootless_container_the_encoder_is_not_stuck_in_sched_idle(peers: Peers) -> None:
    """Root of a new user namespace has every capability in CapEff, but the kernel asks
    for CAP_SYS_NICE in the initial namespace: reading CapEff said yes here, and the
    encoder could never leave SCHED_IDLE. Trying says no (with RLIMIT_NICE 0)."""
    peers.require("unshare")
    if resource.getrlimit(resource.RLIMIT_NICE)[0] != 0:
        pytest.skip("RLIMIT_NICE is not 0 here, so anyone may leave SCHED_IDLE")
    probe = (
        "from udskit.capture.writerproc import can_leave_idle_class as c; "
        "lines = open('/proc/self/status').read().splitlines(); "
        "cap = next(int(l.split()[1], 16) for l in lines if l.startswith('CapEff:')); "
        "print(bool(cap >> 23 & 1), c())"
    )
    out = peers.run("unshare", "--user", "--map-root-user", sys.executable, "-c", probe)
    if out.returncode != 0 and b"unshare" in out.stderr:
        pytest.skip(f"no user namespaces here: {out.stderr.decode().strip()}")
    # CapEff claims CAP_SYS_NICE; the trial knows better.
    assert out.stdout == b"True False\n", out.stderr.decode()


def test_a_killed_writer_takes_its_encoder_along_and_the_proxy_hears_at_once(
    tmp_path: Path, writer_and_encoder: Callable[[Path], tuple[pcapwriter.PcapngWriter, int]]
) -> None:
    writer, encoder = writer_and_encoder(tmp_path / "killed.pcapng")
    os.kill(encoder, signal.SIGSTOP)  # an encoder far behind
    assert writer.proc is not None
    os.kill(writer.proc.pid, signal.SIGKILL)  # the OOM killer, say
    wait_for(lambda: _gone(encoder), what="the encoder to die with the writer")
    checked: list[BaseException] = []

    def check() -> None:
        wait_for(lambda: writer.proc is not None and writer.proc.poll() is not None)
        try:
            writer.check()
        except BaseException as exc:
            checked.append(exc)

    checker = threading.Thread(target=check)
    checker.start()
    checker.join(30)  # before: the proxy's loop waited for the encoder's end
    assert not checker.is_alive()
    assert len(checked) == 1 and "pcapng writer" in str(checked[0])


# -- 9: `| head -1` ---------------------------------------------------------------------
def test_a_closed_stdout_is_a_quiet_stop(peers: Peers, sockdir: Path) -> None:
    sock = echo(peers, sockdir)
    original = os.lstat(sock).st_ino
    dump = start_dump(peers, sock)
    assert dump.proc.stdout is not None
    assert exchange(sock) == b"PING"
    assert b" open " in dump.proc.stdout.readline()
    dump.proc.stdout.close()  # what `head -1` does after its line
    for _ in range(3):  # the next lines meet a closed pipe
        assert exchange(sock) == b"PING"
    assert dump.proc.stderr is not None
    err = dump.proc.stderr.read().decode()
    assert dump.proc.wait(60) == 0, err
    assert "recording failed" not in err and "Traceback" not in err
    assert "Broken pipe" not in err and "Exception ignored" not in err
    assert_restored(sock, original)


# -- 12: the header at once -----------------------------------------------------------------------
def test_an_idle_capture_is_a_valid_empty_file(peers: Peers, sockdir: Path, tmp_path: Path) -> None:
    sock = echo(peers, sockdir)
    pcap = tmp_path / "idle.pcapng"
    dump = start_dump(peers, sock, "-w", str(pcap))
    wait_for(lambda: pcap.stat().st_size > 0, what="the pcapng header")
    read = peers.run("tshark", "-r", pcap)
    assert read.returncode == 0, read.stderr
    assert read.stdout == b""
    stop_dump(dump)


def test_live_and_read_back_show_the_same_chunks(
    peers: Peers, sockdir: Path, tmp_path: Path
) -> None:
    """A chunk larger than one TCP segment is one event live and one from -r."""
    sock = echo(peers, sockdir, "seqpacket")
    pcap = tmp_path / "big.pcapng"
    dump = start_dump(peers, sock, "-w", str(pcap), "--print")
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.settimeout(10)
        s.connect(str(sock))
        s.send(b"a" * 30_000)
        assert len(s.recv(1 << 20)) == 30_000
    _status, live, _err = stop_dump(dump)
    again = peers.udskit_run("dump", "-r", pcap)
    assert again.returncode == 0

    def shape(text: str) -> list[str]:
        return [" ".join(x.split()[3:]) for x in text.splitlines()]

    assert shape(again.stdout.decode()) == shape(live)
    assert "close" in shape(live)[-1]


def test_a_stream_chunk_over_one_segment_reads_back_as_one(
    peers: Peers, sockdir: Path, tmp_path: Path
) -> None:
    sock = echo(peers, sockdir)
    pcap = tmp_path / "big.pcapng"
    dump = start_dump(peers, sock, "-w", str(pcap), "--print")
    # A real chunk size depends on scheduling: compare whatever the live side saw.
    payload = b"b" * 200_000
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(sock))
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        while s.recv(1 << 20):
            pass
    _status, live, _err = stop_dump(dump)
    again = peers.udskit_run("dump", "-r", pcap)

    def lengths(text: str) -> list[str]:
        return [x.split(" length ")[1] for x in text.splitlines() if " length " in x]

    assert lengths(again.stdout.decode()) == lengths(live)
    assert sum(map(int, lengths(live))) == 2 * len(payload)
