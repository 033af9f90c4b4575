"""`udskit dump -r` on what real captures look like after a crash or from another tool:
a file cut anywhere, a file too short to be one, and tcpdump's classic pcap."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from tests.conftest import Peers
from tests.io.test_dump import ECHO_SERVER, start_dump, stop_dump
from udskit.cli import main
from udskit.cli.env import Env


def read_back(path: Path, *args: str) -> tuple[int, str, str]:
    """`udskit dump -r PATH ARGS` in this process: (status, stdout, stderr)."""
    env = Env.in_memory()
    status = main(["dump", "-r", str(path), *args], env)
    out = env.stdout.getvalue().decode(errors="replace")  # type: ignore[attr-defined]
    return status, out, env.stderr.getvalue()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real capture: three clients through `udskit dump -w` to an echo server."""
    peers = Peers()
    sockdir = tmp_path_factory.mktemp("cap")
    sock = sockdir / "e.sock"
    pcap = sockdir / "real.pcapng"
    try:
        peers.start(sys.executable, "-c", ECHO_SERVER, sock, "stream", wait_for=sock)
        dump = start_dump(peers, sock, "-w", str(pcap))
        for i in range(3):
            with socket.socket(socket.AF_UNIX) as client:
                client.settimeout(30)
                client.connect(str(sock))
                client.sendall(b"request %d " % i * 20)
                client.shutdown(socket.SHUT_WR)
                while client.recv(4096):
                    pass
        status, _out, err = stop_dump(dump)
        assert status == 130, err
    finally:
        peers.stop_all()
    return pcap


def test_a_file_cut_anywhere_shows_what_came_before_and_warns(
    capture: Path, tmp_path: Path
) -> None:
    whole = capture.read_bytes()
    status, full, err = read_back(capture)
    assert (status, err) == (0, "")
    full_lines = full.splitlines()
    assert sum(" open " in line for line in full_lines) == 3
    cut = tmp_path / "cut.pcapng"
    errors = warned = 0
    for size in range(0, len(whole), 97):
        cut.write_bytes(whole[:size])
        status, out, err = read_back(cut)
        assert "Traceback" not in err
        lines = err.splitlines()
        assert len(lines) == 1, (size, err)
        if status == 0:
            assert "WARNING:" in lines[0] and "cut short" in lines[0], (size, err)
            assert full_lines[: len(out.splitlines())] == out.splitlines(), size
            warned += 1
        else:
            assert status in (1, 2), (size, status, err)
            assert lines[0].startswith("udskit dump: "), (size, err)
            errors += 1
    assert warned > errors  # only the first block's cuts are unreadable


def test_a_five_byte_file_is_one_error_line(tmp_path: Path) -> None:
    tiny = tmp_path / "tiny.pcapng"
    tiny.write_bytes(b"\x0a\x0d\x0d\x0a\x00")
    status, out, err = read_back(tiny)
    assert (status, out) == (1, "")
    assert err.count("\n") == 1 and "section header block" in err


def test_tcpdump_pcap_is_read_too(peers: Peers, capture: Path, tmp_path: Path) -> None:
    # editcap (Wireshark's) writes classic pcap, the format Debian's tcpdump -w writes.
    pcap = tmp_path / "classic.pcap"
    converted = peers.run("editcap", "-F", "pcap", capture, pcap)
    assert converted.returncode == 0, converted.stderr.decode()
    assert pcap.read_bytes()[:4] in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4")
    status, out, err = read_back(pcap, "-A")
    assert (status, err) == (0, "")
    assert out.count(" open ") == 3
    assert "request 2 request 2" in out and "REQUEST 2 REQUEST 2" in out
