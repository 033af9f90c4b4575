"""`udskit.capture.Capture`: the library's capture, with each engine, on real peers."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

from tests.conftest import Peers
from udskit.capture import Capture
from udskit.capture.events import EventKind
from udskit.tap import Direction


@pytest.fixture(scope="module")
def ebpf() -> None:
    from udskit.capture.bpf_loader import BpfProgram, BpfUnavailable

    try:
        BpfProgram(lambda _raw: None).close()
    except BpfUnavailable as exc:
        pytest.skip(f"eBPF cannot run on this machine: {exc}")


def test_ebpf_capture_of_a_connection_opened_before(peers: Peers, ebpf: None) -> None:
    name = f"@udskit-capture-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    peers.start("socat", f"ABSTRACT-LISTEN:{name[1:]},fork", "EXEC:cat", wait_for=name)
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(10)
        client.connect(b"\0" + name[1:].encode())
        client.sendall(b"before\n")
        assert client.recv(100) == b"before\n"
        with Capture(name, engine="ebpf") as cap:
            assert cap.engine_name == "ebpf"
            client.sendall(b"during\n")
            assert client.recv(100) == b"during\n"
            got = []
            for event in cap.events(timeout=10):
                if event.kind is EventKind.DATA:
                    got.append((event.direction, event.data, event.client.pid))
                if len(got) == 2:
                    break
        assert got == [
            (Direction.C2S, b"during\n", os.getpid()),
            (Direction.S2C, b"during\n", os.getpid()),
        ]
        assert cap.stats.engine == "ebpf" and cap.stats.data_events == 2


def test_proxy_capture_writes_pcapng_and_puts_the_socket_back(
    peers: Peers, sockdir: Path, tmp_path: Path
) -> None:
    path = sockdir / "echo.sock"
    peers.start("socat", f"UNIX-LISTEN:{path},fork", "EXEC:cat", wait_for=path)
    inode = os.lstat(path).st_ino
    pcap = tmp_path / "cap.pcapng"
    with Capture(str(path), engine="proxy", write=str(pcap)) as cap:
        assert os.lstat(path).st_ino != inode, "the proxy took the socket's place"
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(10)
            client.connect(str(path))
            client.sendall(b"hello\n")
            assert client.recv(100) == b"hello\n"
        kinds = []
        for event in cap.events(timeout=10):
            kinds.append(event.kind)
            if event.kind is EventKind.CLOSE:
                break
    assert kinds == [EventKind.OPEN, EventKind.DATA, EventKind.DATA, EventKind.CLOSE]
    assert os.lstat(path).st_ino == inode, "the original is back"
    assert cap.stats.connections == 1 and cap.stats.engine == "proxy"
    assert pcap.stat().st_size > 0
