"""Sockets with names that other programs may legally make: never a crash, never a lie."""

from __future__ import annotations

import ctypes
import json
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Peers


def bind_full_sun_path(path: bytes) -> socket.socket:
    """A listening socket whose path fills all 108 bytes of sun_path with no NUL.

    The kernel accepts it (unix_mkname_bsd); CPython's bind() refuses, so ask libc."""
    assert len(path) == 108
    libc = ctypes.CDLL(None, use_errno=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw = struct.pack("=H", socket.AF_UNIX) + path
    if libc.bind(sock.fileno(), ctypes.c_char_p(raw), len(raw)) != 0:
        err = ctypes.get_errno()
        sock.close()
        raise OSError(err, os.strerror(err))
    sock.listen(1)
    return sock


@pytest.fixture
def newline_socket(sockdir: Path) -> Iterator[Path]:
    """A bound socket whose path holds a newline and a forged /proc/net/unix line."""
    weird = sockdir / "x\n0000: 00000002 00000000 00010000 0001 01 zz end"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(os.fsencode(weird))
        s.listen(1)
        yield weird


def test_ls_lists_a_socket_that_fills_sun_path(peers: Peers, sockdir: Path) -> None:
    path = os.fsencode(sockdir) + b"/" + b"f" * (107 - len(os.fsencode(sockdir)))
    with bind_full_sun_path(path) as sock:
        inode = os.fstat(sock.fileno()).st_ino
        for extra in ([], ["--proc"]):
            out = peers.udskit_run("ls", "--json", *extra)
            assert out.returncode == 0, out.stderr
            (found,) = [s for s in json.loads(out.stdout) if s["inode"] == inode]
            assert found["address"] == path.decode()
            assert found["state"] == "listen"


def test_a_forged_proc_line_breaks_nothing(
    peers: Peers, sockdir: Path, abstract_name: str, newline_socket: Path
) -> None:
    socat = peers.start(
        "socat",
        f"ABSTRACT-LISTEN:{abstract_name[1:]},fork",
        "EXEC:cat",
        wait_for=abstract_name,
        listening=True,
    )
    busy = peers.udskit_run("listen", abstract_name)
    assert busy.returncode == 1
    assert busy.stderr.decode().count("\n") == 1, busy.stderr
    assert f"already bound by pid {socat.pid} (socat)" in busy.stderr.decode()
    stale = sockdir / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))
    refused = peers.udskit_run("connect", stale)
    assert refused.returncode == 1 and b"Traceback" not in refused.stderr
    assert b"stale file" in refused.stderr
    for extra in ([], ["--proc"]):
        listing = peers.udskit_run("ls", "--json", *extra)
        assert listing.returncode == 0, listing.stderr
        assert b"Traceback" not in listing.stderr


def test_a_server_bound_by_a_relative_name_is_named(peers: Peers, sockdir: Path) -> None:
    socat = peers.start("socat", "UNIX-LISTEN:rel.sock,fork", "EXEC:cat", cwd=sockdir)
    path = sockdir / "rel.sock"
    peers.run("sh", "-c", f"while [ ! -S {path} ]; do sleep 0.01; done")
    out = peers.udskit_run("listen", path)
    assert out.returncode == 1
    assert f"a live server listens there (pid {socat.pid} (socat))" in out.stderr.decode()


def test_eprototype_through_a_symlink_names_the_real_type(peers: Peers, sockdir: Path) -> None:
    real = sockdir / "real.sock"
    peers.start("socat", f"UNIX-RECVFROM:{real},fork", "EXEC:cat", wait_for=real)
    link = sockdir / "link.sock"
    link.symlink_to(real)
    out = peers.udskit_run("connect", link, "--type", "stream")
    assert out.returncode == 1
    assert f"{link} is a datagram socket; use --type dgram" in out.stderr.decode()
    # Without --type, the type bound behind the symlink is used: cat sends it back.
    echoed = peers.udskit_run("send", link, "through the link")
    assert echoed.returncode == 0, echoed.stderr
    assert echoed.stdout == b"through the link\n"
