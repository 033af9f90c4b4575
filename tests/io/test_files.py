"""The file server on real abstract sockets: transfers, confinement, races, refusals.

What lies outside the root is watched with inotify (the kernel's own account of every
open, read and write in a directory), so "nothing outside was read or written" is the
kernel's word, not ours.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import signal
import socket
import stat
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import UDSKIT, Peers, wait_until
from udskit.endpoints import open_listener
from udskit.errors import TransferError
from udskit.files import ErrorCode, FileServer, Resolver, get_file, list_files, put_file
from udskit.files.confine import openat2_available
from udskit.files.protocol import (
    Digest,
    FileHeader,
    Hello,
    PutRequest,
    Ready,
    Welcome,
    encode,
)
from udskit.files.wire import read_message

SECRET = b"secret outside the root\n"

_libc = ctypes.CDLL(None, use_errno=True)
IN_ACCESS, IN_MODIFY, IN_OPEN, IN_CREATE = 0x1, 0x2, 0x20, 0x100
RENAME_EXCHANGE = 2
AT_FDCWD = -100


class Watch:
    """inotify on a directory: every open, read, write and creation in it."""

    def __init__(self, directory: Path) -> None:
        self.fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0
        mask = IN_ACCESS | IN_MODIFY | IN_OPEN | IN_CREATE
        assert _libc.inotify_add_watch(self.fd, os.fsencode(directory), mask) >= 0

    def events(self) -> list[tuple[int, bytes]]:
        found: list[tuple[int, bytes]] = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return found
            offset = 0
            while offset < len(data):
                _wd, mask, _cookie, length = struct.unpack_from("iIII", data, offset)
                name = data[offset + 16 : offset + 16 + length].rstrip(b"\0")
                found.append((mask, name))
                offset += 16 + length

    def close(self) -> None:
        os.close(self.fd)


def exchange(a: Path, b: Path) -> None:
    """renameat2(RENAME_EXCHANGE): the two names swap atomically."""
    if _libc.renameat2(AT_FDCWD, bytes(a), AT_FDCWD, bytes(b), RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


RESOLVERS = [Resolver.WALK] + ([Resolver.OPENAT2] if openat2_available() else [])


class Setup:
    def __init__(self, base: Path, name: str, server: FileServer, log: list[str]) -> None:
        self.base = base
        self.root = base / "root"
        self.outside = base / "outside"
        self.address = name
        self.server = server
        self.log = log


@pytest.fixture(params=RESOLVERS, ids=lambda r: r.value)
def setup(request: pytest.FixtureRequest, tmp_path: Path, abstract_name: str) -> Iterator[Setup]:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "passwd").write_bytes(SECRET)
    (root / "sub" / "inside.txt").write_bytes(b"inside\n")
    (root / "link-out").symlink_to(outside / "passwd")
    (root / "dir-out").symlink_to(outside)
    log: list[str] = []
    name = abstract_name + request.param.value
    server = FileServer(open_listener(name), root, resolver=request.param, log=log.append).start()
    try:
        yield Setup(tmp_path, name, server, log)
    finally:
        server.close()


def _refused(code: ErrorCode, fn: object, *args: object) -> str:
    assert callable(fn)
    with pytest.raises(TransferError) as info:
        fn(*args)
    assert info.value.code == code, str(info.value)
    return str(info.value)


def test_get_put_and_list_round_trip(setup: Setup, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    local = tmp_path / "local.bin"
    local.write_bytes(data)
    sent = put_file(setup.address, local, "sub/up.bin")
    assert (setup.root / "sub" / "up.bin").read_bytes() == data
    assert sent.sha256 == hashlib.sha256(data).hexdigest()
    got = get_file(setup.address, "sub/up.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == data
    assert got.sha256 == sent.sha256 and got.size == len(data)
    names = {e.name: e for e in list_files(setup.address, "sub")}
    assert set(names) == {b"inside.txt", b"up.bin"}
    assert names[b"up.bin"].size == len(data)
    assert {e.name for e in list_files(setup.address)} >= {b"sub", b"link-out", b"dir-out"}
    # Nothing but the files themselves: no temporary name left on either side.
    assert sorted(os.listdir(setup.root / "sub")) == ["inside.txt", "up.bin"]
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".part")]


def test_empty_file(setup: Setup, tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    put_file(setup.address, tmp_path / "empty", "empty")
    get_file(setup.address, "empty", tmp_path / "empty2")
    assert (tmp_path / "empty2").read_bytes() == b""


def test_escapes_are_refused_and_nothing_outside_is_touched(setup: Setup, tmp_path: Path) -> None:
    watch = Watch(setup.outside)
    local = tmp_path / "payload"
    local.write_bytes(b"payload\n")
    try:
        for remote in ("../outside/passwd", "sub/../../outside/passwd"):
            assert "`..` is refused" in _refused(
                ErrorCode.BAD_PATH, get_file, setup.address, remote, tmp_path / "x"
            )
            _refused(ErrorCode.BAD_PATH, put_file, setup.address, local, remote)
        absolute = str(setup.outside / "passwd")
        assert "absolute paths are refused" in _refused(
            ErrorCode.BAD_PATH, get_file, setup.address, absolute, tmp_path / "x"
        )
        _refused(ErrorCode.BAD_PATH, get_file, setup.address, "/etc/passwd", tmp_path / "x")
        _refused(ErrorCode.BAD_PATH, put_file, setup.address, local, absolute)
        message = _refused(ErrorCode.SYMLINK, get_file, setup.address, "link-out", tmp_path / "x")
        assert f"link-out is a symbolic link (to {setup.outside}/passwd)" in message
        message = _refused(
            ErrorCode.SYMLINK, get_file, setup.address, "dir-out/passwd", tmp_path / "x"
        )
        assert "dir-out is a symbolic link" in message
        _refused(ErrorCode.SYMLINK, put_file, setup.address, local, "dir-out/new")
        _refused(ErrorCode.SYMLINK, put_file, setup.address, local, "link-out")
        _refused(ErrorCode.SYMLINK, list_files, setup.address, "dir-out")
        assert watch.events() == []
    finally:
        watch.close()
    assert os.listdir(setup.outside) == ["passwd"]
    assert (setup.outside / "passwd").read_bytes() == SECRET
    assert (setup.root / "link-out").is_symlink()  # not replaced by the put
    assert not (tmp_path / "x").exists()


def test_fifos_and_devices_are_refused_without_blocking(setup: Setup, tmp_path: Path) -> None:
    os.mkfifo(setup.root / "fifo")
    os.mknod(setup.root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    assert "is a FIFO" in _refused(
        ErrorCode.NOT_REGULAR, get_file, setup.address, "fifo", tmp_path / "x"
    )
    assert "is a character device" in _refused(
        ErrorCode.NOT_REGULAR, get_file, setup.address, "null", tmp_path / "x"
    )
    (tmp_path / "p").write_bytes(b"p")
    _refused(ErrorCode.NOT_REGULAR, put_file, setup.address, tmp_path / "p", "fifo")
    _refused(ErrorCode.NOT_REGULAR, put_file, setup.address, tmp_path / "p", "sub")
    _refused(ErrorCode.NOT_REGULAR, get_file, setup.address, "sub", tmp_path / "x")
    assert stat.S_ISFIFO((setup.root / "fifo").lstat().st_mode)


def test_a_symlink_swapped_in_during_requests_is_never_followed(
    setup: Setup, tmp_path: Path
) -> None:
    """A racing thread swaps a regular file with a symlink to the secret, and a directory
    with a symlink to the outside directory, with renameat2(RENAME_EXCHANGE), while
    clients get and put through those names. Whatever the interleaving, no client ever
    receives the secret and nothing outside is opened or created."""
    target = setup.root / "sub" / "target"
    target.write_bytes(b"inside target\n")
    (setup.root / "sub" / "swap").symlink_to(setup.outside / "passwd")
    box = setup.root / "box"
    box.mkdir()
    (box / "passwd").write_bytes(b"inside box\n")
    (setup.root / "box-swap").symlink_to(setup.outside)
    watch = Watch(setup.outside)
    stop = threading.Event()

    def race() -> None:
        while not stop.is_set():
            exchange(target, setup.root / "sub" / "swap")
            exchange(box, setup.root / "box-swap")

    racer = threading.Thread(target=race)
    racer.start()
    outcomes: dict[str, int] = {}
    local = tmp_path / "payload"
    local.write_bytes(b"payload\n")
    try:
        for i in range(150):
            for remote in ("sub/target", "box/passwd"):
                try:
                    get_file(setup.address, remote, tmp_path / "got")
                    got = (tmp_path / "got").read_bytes()
                    assert got in (b"inside target\n", b"inside box\n"), got
                    outcome = "ok"
                except TransferError as err:
                    assert err.code in (ErrorCode.SYMLINK, ErrorCode.NOT_FOUND), str(err)
                    outcome = ErrorCode(err.code).name
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
            try:
                put_file(setup.address, local, f"box/new-{i}")
            except TransferError as err:
                assert err.code in (ErrorCode.SYMLINK, ErrorCode.NOT_FOUND), str(err)
    finally:
        stop.set()
        racer.join()
    events = watch.events()
    watch.close()
    assert events == [], events
    assert sorted(os.listdir(setup.outside)) == ["passwd"]
    assert (setup.outside / "passwd").read_bytes() == SECRET
    assert sum(outcomes.values()) == 300
    print("outcomes under the race:", outcomes)


def test_read_only_refuses_put_and_leaves_nothing(abstract_name: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "f").write_bytes(b"data")
    with FileServer(open_listener(abstract_name), root, read_only=True).start():
        message = _refused(ErrorCode.READ_ONLY, put_file, abstract_name, tmp_path / "f", "f")
        assert "read-only" in message
        # reading still works:
        (root / "g").write_bytes(b"g")
        get_file(abstract_name, "g", tmp_path / "g")
    assert os.listdir(root) == ["g"]


def test_max_size_both_ways(abstract_name: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "big").write_bytes(b"x" * 2000)
    (tmp_path / "big").write_bytes(b"x" * 2000)
    with FileServer(open_listener(abstract_name), root, max_size=1000).start():
        assert "--max-size of 1000" in _refused(
            ErrorCode.TOO_LARGE, get_file, abstract_name, "big", tmp_path / "out"
        )
        _refused(ErrorCode.TOO_LARGE, put_file, abstract_name, tmp_path / "big", "big2")
    assert sorted(os.listdir(root)) == ["big"]


def test_concurrent_clients(setup: Setup, tmp_path: Path) -> None:
    blobs = {f"f{i}": os.urandom(512 * 1024 + i) for i in range(8)}
    for name, data in blobs.items():
        (setup.root / name).write_bytes(data)
    errors: list[BaseException] = []

    def fetch(name: str) -> None:
        try:
            get_file(setup.address, name, tmp_path / f"{name}.got")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=fetch, args=(n,)) for n in blobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for name, data in blobs.items():
        assert (tmp_path / f"{name}.got").read_bytes() == data


def test_a_client_cut_off_mid_put_leaves_nothing(setup: Setup) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(b"\0" + setup.address[1:].encode())
        sock.sendall(encode(Hello()) + encode(PutRequest(b"sub/partial", 10 << 20, 0o644)))
        assert isinstance(read_message(sock), Welcome)
        assert isinstance(read_message(sock), Ready)
        sock.sendall(b"z" * (1 << 20))
        # While the data flows, the file exists only under its hidden temporary name.
        (temp,) = [n for n in os.listdir(setup.root / "sub") if n != "inside.txt"]
        assert temp.startswith(".partial.udskit-") and temp.endswith(".part")
        assert stat.S_IMODE((setup.root / "sub" / temp).stat().st_mode) == 0o600
    wait_until(lambda: any("aborted" in line for line in setup.log), what="the abort")
    assert "closed after 1048576 of 10485760 bytes" in setup.log[-1]
    assert sorted(os.listdir(setup.root / "sub")) == ["inside.txt"]


def _fake_server(name: str, reply: bytes) -> tuple[socket.socket, threading.Thread]:
    """A server that answers any request with `reply`: faults the real one never makes."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(b"\0" + name[1:].encode())
    listener.listen()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(reply)

    thread = threading.Thread(target=serve)
    thread.start()
    return listener, thread


@pytest.mark.parametrize("fault", ["cut", "digest"])
def test_a_failed_get_leaves_nothing(abstract_name: str, tmp_path: Path, fault: str) -> None:
    data = b"d" * 1000
    header = encode(Welcome(1, False, None)) + encode(FileHeader(len(data), 0o644, 0))
    if fault == "cut":
        reply = header + data[:10]
        words = "closed after 10 of 1000 bytes"
    else:
        reply = header + data + encode(Digest(hashlib.sha256(b"other").digest()))
        words = "SHA-256 mismatch"
    listener, thread = _fake_server(abstract_name, reply)
    try:
        with pytest.raises(TransferError, match=words):
            get_file(abstract_name, "f", tmp_path / "f")
    finally:
        thread.join()
        listener.close()
    assert os.listdir(tmp_path) == []


def test_an_old_file_is_replaced_whole(setup: Setup, tmp_path: Path) -> None:
    (tmp_path / "new").write_bytes(b"new contents")
    put_file(setup.address, tmp_path / "new", "sub/inside.txt")
    assert (setup.root / "sub" / "inside.txt").read_bytes() == b"new contents"


# -- the command line, as separate processes -----------------------------------------------
def test_cli_serves_refuses_strangers_and_stops_on_ctrl_c(
    peers: Peers, sockdir: Path, abstract_name: str
) -> None:
    root = sockdir / "root"
    root.mkdir()
    (root / "hello.txt").write_bytes(b"hello\n")
    server = peers.udskit("serve-files", abstract_name, "--root", root, wait_for=abstract_name)
    listing = peers.udskit_run("files", abstract_name)
    assert listing.returncode == 0 and b"hello.txt" in listing.stdout
    stranger = peers.run(*peers.as_nobody(*_udskit(), "files", abstract_name))
    assert stranger.returncode == 1
    assert stranger.stderr.decode().startswith(f"udskit files: {abstract_name}: uid 65534")
    assert b"is not allowed" in stranger.stderr and b"--allow-uid 65534" in stranger.stderr
    assert stranger.stderr.count(b"\n") == 1
    server.send_signal(signal.SIGINT)
    assert server.wait() == 130
    _out, err = server.stop()
    assert b"refused: uid 65534" in err
    assert b"Traceback" not in err


def test_cli_allow_uid_admits_nobody(peers: Peers, sockdir: Path, abstract_name: str) -> None:
    root = sockdir / "root"
    root.mkdir()
    (root / "hello.txt").write_bytes(b"hello\n")
    peers.udskit(
        "serve-files", abstract_name, "--root", root, "--allow-uid", "nobody",
        wait_for=abstract_name,
    )  # fmt: skip
    listing = peers.run(*peers.as_nobody(*_udskit(), "files", abstract_name, "--json"))
    assert listing.returncode == 0, listing.stderr
    assert b'"name": "hello.txt"' in listing.stdout


def test_cli_fifo_refusal_is_one_line(peers: Peers, sockdir: Path, abstract_name: str) -> None:
    root = sockdir / "root"
    root.mkdir()
    os.mkfifo(root / "fifo")
    peers.udskit("serve-files", abstract_name, "--root", root, wait_for=abstract_name)
    result = peers.udskit_run("get", abstract_name, "fifo", sockdir / "out", timeout=30)
    assert result.returncode == 1
    assert result.stderr.decode() == (
        f"udskit get: {abstract_name}: fifo: is a FIFO (named pipe); "
        "only regular files are transferred\n"
    )


def test_get_from_another_network_namespace_fails_clearly(
    peers: Peers, sockdir: Path, abstract_name: str
) -> None:
    root = sockdir / "root"
    root.mkdir()
    (root / "f").write_bytes(b"f")
    peers.udskit("serve-files", abstract_name, "--root", root, wait_for=abstract_name)
    result = peers.run("unshare", "-n", *_udskit(), "get", abstract_name, "f", sockdir / "f")
    assert result.returncode == 1
    assert result.stderr.decode() == (
        f"udskit get: connect {abstract_name}: connection refused (ECONNREFUSED): "
        f"nothing is bound to {abstract_name} in this network namespace; "
        "is the server running?\n"
    )
    assert not (sockdir / "f").exists()
    # The same command in our namespace works: the name was there all along.
    assert peers.udskit_run("get", abstract_name, "f", sockdir / "f").returncode == 0


def _udskit() -> list[str]:
    return list(UDSKIT)


def test_ctrl_c_during_get_leaves_nothing(peers: Peers, sockdir: Path, abstract_name: str) -> None:
    """A server that announces 1000 bytes and sends 10 keeps `udskit get` waiting with its
    temporary file open; Ctrl-C then ends it with 130 and the temporary file is gone."""
    release = threading.Event()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(b"\0" + abstract_name[1:].encode())
    listener.listen()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(
                encode(Welcome(1, False, None)) + encode(FileHeader(1000, 0o644, 0)) + b"x" * 10
            )
            release.wait()

    thread = threading.Thread(target=serve)
    thread.start()
    out = sockdir / "out"
    out.mkdir()
    try:
        client = peers.udskit("get", abstract_name, "f", out)
        wait_until(lambda: len(os.listdir(out)) == 1, what="the temporary file")
        assert os.listdir(out)[0].startswith(".f.udskit-")
        client.send_signal(signal.SIGINT)
        assert client.wait() == 130
        assert os.listdir(out) == []
        assert b"Traceback" not in client.stop()[1]
    finally:
        release.set()
        thread.join()
        listener.close()
