"""udskit talks to programs nobody here wrote: socat and OpenBSD nc, every type and kind."""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path

import pytest

from tests.conftest import UDSKIT, Peers

SOCAT_TYPE = {"stream": "", "seqpacket": ",socktype=5"}


def socat_addr(address: str, listen: bool, extra: str = "") -> str:
    if address.startswith("@"):
        kind = "ABSTRACT-LISTEN" if listen else "ABSTRACT-CONNECT"
        return f"{kind}:{address[1:]}{extra}"
    kind = "UNIX-LISTEN" if listen else "UNIX-CONNECT"
    return f"{kind}:{address}{extra}"


@pytest.fixture(params=["pathname", "abstract"])
def address(request: pytest.FixtureRequest, sockdir: Path, abstract_name: str) -> str:
    return str(sockdir / "s.sock") if request.param == "pathname" else abstract_name


@pytest.mark.parametrize("sock_type", ["stream", "seqpacket"])
def test_socat_client_talks_to_udskit_echo(peers: Peers, address: str, sock_type: str) -> None:
    peers.udskit("listen", address, "--type", sock_type, "--echo", wait_for=address, listening=True)
    out = peers.run(
        "socat",
        "-t5",
        "-",
        socat_addr(address, False, SOCAT_TYPE[sock_type]),
        input=b"hello through socat\n",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"hello through socat\n"


@pytest.mark.parametrize("sock_type", ["stream", "seqpacket"])
def test_udskit_client_talks_to_socat_server(peers: Peers, address: str, sock_type: str) -> None:
    # stdbuf: tr must answer each record at once, not when its input ends.
    peers.start(
        "socat",
        socat_addr(address, True, SOCAT_TYPE[sock_type]) + ",fork",
        "EXEC:stdbuf -o0 tr a-z A-Z",
        wait_for=address,
        listening=True,
    )
    if sock_type == "stream":
        out = peers.udskit_run("connect", address, input=b"shout please\n")
        assert out.stdout == b"SHOUT PLEASE\n", out.stderr
    else:
        out = peers.udskit_run("send", address, "--type", "seqpacket", "one", "two")
        assert out.stdout == b"ONE\nTWO\n", out.stderr
    assert out.returncode == 0


def test_socat_sendto_gets_replies_from_udskit_dgram(
    peers: Peers, address: str, sockdir: Path
) -> None:
    peers.udskit("listen", address, "--type", "dgram", "--upper", wait_for=address)
    target = (
        f"ABSTRACT-SENDTO:{address[1:]}" if address.startswith("@") else f"UNIX-SENDTO:{address}"
    )
    out = peers.run(
        "socat",
        "-t1",
        "-",
        f"{target},bind={sockdir / 'client.sock'}",
        input=b"datagram from socat",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"DATAGRAM FROM SOCAT"


def test_udskit_send_to_socat_recvfrom_server(peers: Peers, address: str) -> None:
    source = (
        f"ABSTRACT-RECVFROM:{address[1:]}"
        if address.startswith("@")
        else f"UNIX-RECVFROM:{address}"
    )
    peers.start("socat", f"{source},fork", "EXEC:tr a-z A-Z", wait_for=address)
    out = peers.udskit_run("send", address, "--type", "dgram", "hello", "world")
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"HELLO\nWORLD\n"


def test_openbsd_nc_talks_to_udskit_listen(peers: Peers, sockdir: Path) -> None:
    path = sockdir / "nc.sock"
    server = peers.udskit("listen", path, "--count", "1", wait_for=path, listening=True)
    out = peers.run("nc", "-N", "-U", path, input=b"hello from nc\n")
    assert out.returncode == 0, out.stderr
    assert server.wait() == 0
    assert server.proc.stdout is not None
    assert server.proc.stdout.read() == b"hello from nc\n"
    assert not path.exists(), "the socket file must be removed when the server stops"


def test_udskit_connect_talks_to_nc_listener(peers: Peers, sockdir: Path) -> None:
    path = sockdir / "ncl.sock"
    nc = peers.start("nc", "-l", "-U", path, wait_for=path, listening=True)
    out = peers.udskit_run("connect", path, input=b"to nc\n")
    assert out.returncode == 0, out.stderr
    nc.wait()
    assert nc.proc.stdout is not None and nc.proc.stdout.read() == b"to nc\n"


def test_stream_copy_of_stdin_is_byte_exact(peers: Peers, sockdir: Path) -> None:
    """seed 001's stream example: the client copies stdin, the server prints it."""
    path = sockdir / "copy.sock"
    data = os.urandom(4 * 1024 * 1024 + 17)
    sink = sockdir / "received.bin"
    with sink.open("wb") as stdout:
        server = peers.udskit(
            "listen", path, "--count", "1", stdout=stdout, wait_for=path, listening=True
        )
    out = peers.udskit_run("connect", path, input=data)
    assert out.returncode == 0, out.stderr
    assert server.wait() == 0
    received = sink.read_bytes()
    assert hashlib.sha256(received).hexdigest() == hashlib.sha256(data).hexdigest()


def test_echo_server_example(peers: Peers, sockdir: Path) -> None:
    """seed 000's echo server over a pathname socket, answered to socat and udskit."""
    path = sockdir / "sock"
    peers.udskit("listen", path, "--echo", wait_for=path, listening=True)
    assert peers.run("socat", "-", f"UNIX-CONNECT:{path}", input=b"Hello, world").stdout == (
        b"Hello, world"
    )
    assert peers.udskit_run("connect", path, input=b"again").stdout == b"again"


def test_datagram_uppercase_with_10_byte_buffer(peers: Peers, sockdir: Path) -> None:
    """seed 001 / TLPI ud_ucase: a 10-byte server buffer cuts 'long message'."""
    path = sockdir / "ud_ucase"
    server = peers.udskit(
        "listen", path, "--type", "dgram", "--upper", "--buffer", "10", wait_for=path
    )
    out = peers.udskit_run("send", path, "--type", "dgram", "hello", "world", "long message")
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"HELLO\nWORLD\nLONG MESSA\n"
    _out, err = server.stop(signal.SIGTERM)
    assert b"truncated: 12 bytes, buffer 10" in err


def test_reply_longer_than_client_buffer_is_reported(peers: Peers, sockdir: Path) -> None:
    path = sockdir / "d.sock"
    peers.udskit("listen", path, "--type", "dgram", "--echo", wait_for=path)
    out = peers.udskit_run("send", path, "--type", "dgram", "--reply-size", "4", "abcdefgh")
    assert out.stdout == b"abcd\n"
    assert b"reply 1 truncated: 8 bytes, buffer 4" in out.stderr


def test_japanese_abstract_name(peers: Peers) -> None:
    name = f"@ソケット-{os.getpid()}"
    peers.udskit("listen", name, "--echo", wait_for=name, listening=True)
    out = peers.run("socat", "-", f"ABSTRACT-CONNECT:{name[1:]}", input="こんにちは".encode())
    assert out.stdout.decode() == "こんにちは"
    with open("/proc/net/unix", "rb") as f:
        assert name.encode() in f.read().split()


@pytest.mark.parametrize("mode", [[], ["--concurrent"]])
def test_listen_ends_quietly_when_its_stdout_closes(
    peers: Peers, sockdir: Path, mode: list[str]
) -> None:
    """`udskit listen | head -c 3`: not a client's failure, just the end."""
    path = sockdir / "head.sock"
    shell = f"{' '.join(UDSKIT)} listen {path} {' '.join(mode)} | head -c 3 >/dev/null"
    pipeline = peers.start("bash", "-o", "pipefail", "-c", shell, wait_for=path, listening=True)
    peers.run("socat", "-u", "-", f"UNIX-CONNECT:{path}", input=os.urandom(1 << 20))
    assert pipeline.wait() == 0
    _out, err = pipeline.stop()
    assert err == b""
    assert not path.exists()
