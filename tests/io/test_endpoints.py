"""The three address kinds and three types through the library, as unix(7) describes."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from tests.conftest import Peers
from udskit.address import UnixAddress, parse_address
from udskit.endpoints import (
    open_connection,
    open_connection_async,
    open_listener,
    open_socketpair,
    recv_message,
    start_server_async,
)
from udskit.errors import SocketError
from udskit.socktype import SocketType


def proc_net_unix() -> list[bytes]:
    with open("/proc/net/unix", "rb") as f:
        return [
            line.rstrip(b"\n").split(None, 7)[7]
            for line in f.readlines()[1:]
            if len(line.split(None, 7)) == 8
        ]


def test_hello_and_hello_nul_are_different_sockets(abstract_name: str) -> None:
    plain = parse_address(abstract_name)
    with_nul = parse_address(abstract_name + "\\x00")
    with open_listener(plain):
        names = proc_net_unix()
        assert b"@" + plain.name in names  # exactly the name: no trailing NUL
        assert b"@" + plain.name + b"@" not in names
        with pytest.raises(SocketError) as info:
            open_connection(with_nul)
        assert "connection refused (ECONNREFUSED)" in str(info.value)
        assert f"nothing is bound to {abstract_name}\\x00" in str(info.value)
    with open_listener(with_nul):
        assert b"@" + plain.name + b"@" in proc_net_unix()  # /proc shows the NUL as '@'
        with pytest.raises(SocketError):
            open_connection(plain)


def test_autobind_gets_five_hex_digits() -> None:
    with open_listener("@") as listener:
        name = listener.address.name
        assert len(name) == 5 and all(c in b"0123456789abcdef" for c in name)
        with open_connection(listener.address) as client:
            conn, peer = listener.accept()
            with conn:
                client.sendall(b"x")
                assert conn.recv(1) == b"x"
                assert peer == UnixAddress.unnamed()


def test_socketpair_between_parent_and_forked_child() -> None:
    """seed 000: socketpair, fork, each side writes to the other."""
    parent_end, child_end = open_socketpair()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            parent_end.close()
            child_end.sendall(b"In Xanadu, did Kublai Khan...")
            ok = child_end.recv(1024) == b"A stately pleasure dome decree..."
        finally:
            os._exit(0 if ok else 1)
    child_end.close()
    with parent_end:
        assert parent_end.recv(1024) == b"In Xanadu, did Kublai Khan..."
        parent_end.sendall(b"A stately pleasure dome decree...")
        assert parent_end.getsockname() == ""  # unnamed
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.parametrize("kind", ["pathname", "abstract"])
def test_seqpacket_keeps_message_boundaries(kind: str, sockdir: Path, abstract_name: str) -> None:
    address = str(sockdir / "sp.sock") if kind == "pathname" else abstract_name
    with (
        open_listener(address, SocketType.SEQPACKET) as listener,
        open_connection(address, SocketType.SEQPACKET) as client,
    ):
        conn, _ = listener.accept()
        with conn:
            for text in (b"one", b"two", b"three"):
                client.send(text)
            got = [recv_message(conn, 100, listener.address).data for _ in range(3)]
    assert got == [b"one", b"two", b"three"]


def test_datagram_client_is_autobound_so_replies_arrive(sockdir: Path) -> None:
    path = sockdir / "dg.sock"
    with (
        open_listener(path, SocketType.DGRAM) as server,
        open_connection(path, SocketType.DGRAM) as client,
    ):
        client.send(b"ping")
        message = recv_message(server.sock, 100, server.address)
        assert message.sender.is_abstract and len(message.sender.name) == 5
        server.sock.sendto(b"pong", message.sender.to_sockaddr())
        assert client.recv(100) == b"pong"


def test_asyncio_server_and_client_with_socat(peers: Peers, sockdir: Path) -> None:
    path = sockdir / "aio.sock"

    async def main() -> bytes:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.read())
            await writer.drain()
            writer.close()

        async with await start_server_async(echo, path, mode=0o600) as server:
            assert oct(path.stat().st_mode & 0o777) == oct(0o600)
            reader, writer = await open_connection_async(server.address)
            writer.write(b"async hello")
            writer.write_eof()
            answer = await reader.read()
            writer.close()
            # A real program too, while the server runs.
            out = await asyncio.to_thread(
                peers.run, "socat", "-", f"UNIX-CONNECT:{path}", input=b"from socat"
            )
            assert out.stdout == b"from socat"
            return answer

    assert asyncio.run(main()) == b"async hello"
    assert not path.exists()


def test_stream_to_dgram_socket_names_the_real_type(sockdir: Path) -> None:
    path = sockdir / "dg2.sock"
    with open_listener(path, SocketType.DGRAM), pytest.raises(SocketError) as info:
        open_connection(path, SocketType.STREAM)
    assert str(info.value) == (
        f"connect {path}: wrong socket type (EPROTOTYPE): {path} is a datagram socket; "
        "use --type dgram"
    )


def test_pathname_limit_is_the_kernels(sockdir: Path) -> None:
    """107 bytes bind; the kernel itself agrees that 108 do not fit."""
    longest = str(sockdir / ("a" * (107 - len(str(sockdir)) - 1)))
    assert len(longest) == 107
    with open_listener(longest) as listener:
        assert listener.address.path == longest
    raw = socket.socket(socket.AF_UNIX)
    with raw, pytest.raises(OSError):
        raw.bind(longest + "b")
