"""connect() as another user from one thread: the server sees that user, the socket
file's permissions judge that user, and the thread is itself again afterwards."""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

from udskit.credswitch import connect_as, peer_identity, switching_possible
from udskit.identity import Identity


def test_connect_as_nobody_and_back(sockdir: Path) -> None:
    assert switching_possible()  # the suite runs as root
    path = str(sockdir / "as.sock")
    before = (os.geteuid(), os.getegid(), sorted(os.getgroups()))
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        server.listen(4)
        os.chmod(path, 0o777)
        client = socket.socket(socket.AF_UNIX)
        assert connect_as(Identity(65534, 65534, (100, 65534)), client, path) == 0
        conn, _ = server.accept()
        with conn, client:
            pid, who = peer_identity(conn)
            assert pid == os.getpid()  # the one fact that stays the proxy's
            assert who == Identity(65534, 65534, (100, 65534))
            raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            assert struct.unpack("3i", raw)[1:] == (65534, 65534)
        os.chmod(path, 0o700)  # root's now: nobody may not connect, and neither may we as it
        refused = socket.socket(socket.AF_UNIX)
        with refused:
            assert connect_as(Identity(65534, 65534, ()), refused, path) == 13  # EACCES
    assert (os.geteuid(), os.getegid(), sorted(os.getgroups())) == before
