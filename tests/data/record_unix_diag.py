"""Record the sock_diag and /proc/net/unix bytes that tests/pure/test_sockdiag.py decodes.

Run once on Linux (`.venv/bin/python tests/data/record_unix_diag.py`): it makes one
socket of each kind and state, dumps every unix socket over netlink, keeps only the
messages about its own sockets (so no other process's names end up in the repository),
and writes them, with the matching /proc/net/unix lines, next to this file. The facts
the tests expect are written to unix_diag_kinds.json.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import tempfile
from pathlib import Path

from udskit.sockdiag import NLMSG_DONE, Show, build_request

HERE = Path(__file__).resolve().parent


def dump(show: Show) -> list[bytes]:
    """Every reply message (header included) of one dump, in order."""
    messages: list[bytes] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 4) as nl:
        nl.sendall(build_request(show))
        while True:
            data = nl.recv(65536)
            offset = 0
            while offset < len(data):
                length, msg_type = struct.unpack_from("=IH", data, offset)
                if msg_type == NLMSG_DONE:
                    return messages
                messages.append(data[offset : offset + length])
                offset += (length + 3) & ~3


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="udsk-rec-", dir="/tmp"))
    listening = str(workdir / "l.sock")
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(listening)
    lst.listen(5)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(listening)
    server, _ = lst.accept()
    client.sendall(b"x" * 1000)
    waiting = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    waiting.connect(listening)  # never accepted
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract.bind(b"\0udskit-rec\0nul")
    abstract.listen(1)
    pair = socket.socketpair()
    dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dgram.bind(str(workdir / "d.sock"))
    seqpacket = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    seqpacket.bind(str(workdir / "s.sock"))
    seqpacket.listen(3)
    named = {
        "listener": lst,
        "client": client,
        "accepted": server,
        "waiting": waiting,
        "abstract": abstract,
        "pair_a": pair[0],
        "pair_b": pair[1],
        "dgram": dgram,
        "seqpacket": seqpacket,
    }
    inodes = {name: os.fstat(s.fileno()).st_ino for name, s in named.items()}
    wanted = set(inodes.values())
    done = struct.pack("=IHHIIi", 20, NLMSG_DONE, 2, 1, 0, 0)
    for show, filename in (
        (Show.default(), "unix_diag_kinds.bin"),
        (Show.default() | Show.MEMINFO, "unix_diag_kinds_meminfo.bin"),
    ):
        kept = [m for m in dump(show) if struct.unpack_from("=I", m, 20)[0] in wanted]
        (HERE / filename).write_bytes(b"".join(kept) + done)
    with open("/proc/net/unix", "rb") as f:
        lines = f.read().split(b"\n")
    proc = [lines[0]] + [ln for ln in lines[1:] if ln.split()[6:7] and int(ln.split()[6]) in wanted]
    (HERE / "proc_net_unix_kinds.txt").write_bytes(b"\n".join(proc) + b"\n")
    st = os.stat(listening)
    facts = {
        "inodes": inodes,
        "workdir": str(workdir),
        "listener_file": [st.st_dev, st.st_ino],
        "uid": os.geteuid(),
    }
    (HERE / "unix_diag_kinds.json").write_text(json.dumps(facts, indent=1) + "\n")
    for s in named.values():
        s.close()
    for name in ("l.sock", "d.sock", "s.sock"):
        (workdir / name).unlink()
    workdir.rmdir()


if __name__ == "__main__":
    main()
