"""The use case of the source document: a program in a chroot pulls files from a server
outside it, with no shared directory, through an abstract socket.

The chroot is real: a fresh directory holding only read-only bind mounts of what the
interpreter and the package need (/usr, the Python installation, the venv, the source
tree), made inside a private mount namespace (`unshare -m`), so the mounts vanish with
that namespace whatever happens to the test. The client in it cannot see the server's
files at all; the bytes can only have come through the socket.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import udskit
from tests.conftest import Peers

SIZE = 100 * 1024 * 1024


def _needed_trees() -> list[Path]:
    """The directories the interpreter and udskit load from, outermost first."""
    src = Path(udskit.__file__).resolve().parent.parent  # .../src (editable) or site-packages
    trees = {Path("/usr"), Path(sys.base_prefix).resolve(), Path(sys.prefix), src}
    for top in ("/lib", "/lib64", "/bin", "/sbin"):
        if Path(top).exists() and not Path(top).is_symlink():
            trees.add(Path(top))
    # A tree inside another that is already mounted needs no mount of its own.
    kept = [t for t in trees if not any(o != t and o in t.parents for o in trees)]
    return sorted(kept)


def _mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(str(path) + "/")]


@pytest.fixture
def chroot(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.fail("the chroot test needs root (mount, chroot); run the suite as root")
    base = tmp_path / "chroot"
    base.mkdir()
    for top in ("lib", "lib64", "bin", "sbin"):
        host = Path("/") / top
        if host.is_symlink():
            (base / top).symlink_to(os.readlink(host))
    for tree in _needed_trees():
        (base / tree.relative_to("/")).mkdir(parents=True, exist_ok=True)
    (base / "data").mkdir()
    try:
        yield base
    finally:
        # The namespace that held the mounts has exited; never delete through a mount.
        assert _mounts_under(base) == []
        shutil.rmtree(base)


def _in_chroot(base: Path, *argv: str) -> list[str]:
    """argv to run `argv` in the chroot: private mount namespace, read-only binds."""
    mounts = " && ".join(f"mount --bind -o ro {tree} {base}{tree}" for tree in _needed_trees())
    # The command proves where it runs: the host's /etc is not there.
    inner = f"test ! -e /etc/hostname && exec {' '.join(argv)}"
    return [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        f'{mounts} && exec chroot {base} /bin/sh -c "{inner}"',
    ]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _make(path: Path, size: int) -> None:
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for i in range(size // len(block)):
            f.write(block[i % 7 :] + block[: i % 7])  # no two MiB alike


def test_get_and_put_from_inside_a_chroot(
    peers: Peers, tmp_path: Path, chroot: Path, abstract_name: str
) -> None:
    root = tmp_path / "export"
    (root / "inbox").mkdir(parents=True)
    _make(root / "big.bin", SIZE)
    python = f"{sys.prefix}/bin/python"
    peers.udskit("serve-files", abstract_name, "--root", root, wait_for=abstract_name)

    got = peers.run(
        *_in_chroot(chroot, python, "-m", "udskit", "get", abstract_name, "big.bin", "/data/"),
        timeout=300,
    )
    assert got.returncode == 0, got.stderr
    assert got.stderr == b""  # no progress bar when stderr is not a terminal
    assert (chroot / "data" / "big.bin").stat().st_size == SIZE
    assert _sha256(chroot / "data" / "big.bin") == _sha256(root / "big.bin")
    assert os.listdir(chroot / "data") == ["big.bin"]

    (chroot / "data" / "up.bin").write_bytes(b"from inside\n" * 1000)
    put = peers.run(
        *_in_chroot(
            chroot, python, "-m", "udskit", "put", abstract_name, "/data/up.bin", "inbox/up.bin"
        )
    )
    assert put.returncode == 0, put.stderr
    assert (root / "inbox" / "up.bin").read_bytes() == b"from inside\n" * 1000

    escape = peers.run(
        *_in_chroot(chroot, python, "-m", "udskit", "get", abstract_name, "../x", "/data/x")
    )
    assert escape.returncode == 1
    assert b"`..` is refused; the server never leaves its root" in escape.stderr


def test_put_from_a_chroot_to_a_read_only_server(
    peers: Peers, tmp_path: Path, chroot: Path, abstract_name: str
) -> None:
    root = tmp_path / "export"
    root.mkdir()
    peers.udskit(
        "serve-files", abstract_name, "--root", root, "--read-only", wait_for=abstract_name
    )
    (chroot / "data" / "up.bin").write_bytes(b"x")
    python = f"{sys.prefix}/bin/python"
    put = peers.run(
        *_in_chroot(chroot, python, "-m", "udskit", "put", abstract_name, "/data/up.bin", "up")
    )
    assert put.returncode == 1
    assert put.stderr.decode() == (
        f"udskit put: {abstract_name}: this server is read-only (--read-only): put is refused\n"
    )
    assert os.listdir(root) == []
