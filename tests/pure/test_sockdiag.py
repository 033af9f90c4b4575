"""The sock_diag and /proc/net/unix decoders, on recorded kernel bytes and built ones.

tests/data/*.bin were recorded from a real kernel by tests/data/record_unix_diag.py
(one socket of each kind and state); unix_diag_kinds.json holds what was true then.
"""

from __future__ import annotations

import errno
import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest

from udskit.address import AddressKind, UnixAddress, format_address, parse_address
from udskit.procnet import decode_proc_net_unix, info_from_proc_entry
from udskit.sockdiag import (
    NLMSG_DONE,
    NLMSG_ERROR,
    SOCK_DIAG_BY_FAMILY,
    UNIX_DIAG_ICONS,
    UNIX_DIAG_MEMINFO,
    UNIX_DIAG_NAME,
    UNIX_DIAG_PEER,
    UNIX_DIAG_RQLEN,
    UNIX_DIAG_SHUTDOWN,
    UNIX_DIAG_UID,
    UNIX_DIAG_VFS,
    MemInfo,
    Show,
    Shutdown,
    SockDiagError,
    SocketState,
    UnixSocketInfo,
    VfsInode,
    build_request,
    decode_replies,
    kernel_dev_to_st_dev,
)
from udskit.socktype import SocketType

DATA = Path(__file__).resolve().parents[1] / "data"
FACTS: dict[str, Any] = json.loads((DATA / "unix_diag_kinds.json").read_text())
INODES: dict[str, int] = FACTS["inodes"]


# -- building replies by hand ----------------------------------------------------------
def attr(attr_type: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), attr_type) + payload
    return raw + b"\0" * (-len(raw) % 4)


def message(
    inode: int,
    *attrs: bytes,
    kernel_type: int = 1,
    tcp_state: int = 1,
    cookie: int = 7,
    msg_type: int = SOCK_DIAG_BY_FAMILY,
) -> bytes:
    body = struct.pack("=BBBxIQ", 1, kernel_type, tcp_state, inode, cookie) + b"".join(attrs)
    return struct.pack("=IHHII", 16 + len(body), msg_type, 2, 1, 0) + body


DONE = struct.pack("=IHHIIi", 20, NLMSG_DONE, 2, 1, 0, 0)


def u32(value: int) -> bytes:
    return struct.pack("=I", value)


def common_attrs(peer: int = 11, recv_q: int = 3, send_q: int = 4, uid: int = 1000) -> list[bytes]:
    return [
        attr(UNIX_DIAG_PEER, u32(peer)),
        attr(UNIX_DIAG_RQLEN, struct.pack("=II", recv_q, send_q)),
        attr(UNIX_DIAG_SHUTDOWN, b"\x02"),
        attr(UNIX_DIAG_UID, u32(uid)),
    ]


def decode_all(buffer: bytes) -> dict[int, UnixSocketInfo]:
    found, done = decode_replies(buffer)
    assert done
    return {info.inode: info for info in found}


# -- the request -----------------------------------------------------------------------
def test_dump_request_asks_for_every_unix_socket_and_the_attributes() -> None:
    raw = build_request(Show.default())
    length, msg_type, flags, seq, pid = struct.unpack_from("=IHHII", raw)
    assert (length, msg_type, seq, pid) == (len(raw), SOCK_DIAG_BY_FAMILY, 1, 0)
    assert flags == 0x301  # NLM_F_REQUEST | NLM_F_DUMP
    family, protocol, states, ino, show, c0, c1 = struct.unpack_from("=BBxxIIIII", raw, 16)
    assert (family, protocol, states, ino) == (1, 0, 0xFFFFFFFF, 0)
    assert show == 0x01 | 0x02 | 0x04 | 0x08 | 0x10 | 0x40  # no MEMINFO unless asked
    assert (c0, c1) == (0xFFFFFFFF, 0xFFFFFFFF)
    assert len(raw) == 16 + 24  # nlmsghdr + struct unix_diag_req


def test_exact_request_names_one_inode_without_dump() -> None:
    raw = build_request(Show.NAME | Show.MEMINFO, inode=4242, seq=9)
    _, _, flags, seq, _ = struct.unpack_from("=IHHII", raw)
    _, _, _, ino, show, _, _ = struct.unpack_from("=BBxxIIIII", raw, 16)
    assert (flags, seq, ino, show) == (0x1, 9, 4242, 0x21)


# -- recorded bytes --------------------------------------------------------------------
@pytest.fixture(scope="module")
def recorded() -> dict[int, UnixSocketInfo]:
    return decode_all((DATA / "unix_diag_kinds.bin").read_bytes())


def test_recorded_dump_has_every_socket_the_recorder_made(
    recorded: dict[int, UnixSocketInfo],
) -> None:
    assert set(recorded) == set(INODES.values())


def test_recorded_listener(recorded: dict[int, UnixSocketInfo]) -> None:
    info = recorded[INODES["listener"]]
    assert info.type is SocketType.STREAM
    assert info.state is SocketState.LISTEN
    assert info.address == UnixAddress.pathname(FACTS["workdir"] + "/l.sock")
    # The client that was never accepted waits in the queue (UNIX_DIAG_ICONS).
    assert info.pending == (INODES["waiting"],)
    assert (info.recv_q, info.send_q) == (1, 5)  # one waiting connection; backlog 5
    # UNIX_DIAG_VFS, in the terms of the stat() done at recording time.
    assert info.vfs == VfsInode(*FACTS["listener_file"])
    assert info.uid == FACTS["uid"]
    assert info.peer_inode is None


def test_recorded_connection_with_unread_bytes(recorded: dict[int, UnixSocketInfo]) -> None:
    accepted = recorded[INODES["accepted"]]
    client = recorded[INODES["client"]]
    assert accepted.state is client.state is SocketState.CONNECTED
    assert accepted.peer_inode == INODES["client"]
    assert client.peer_inode == INODES["accepted"]
    assert accepted.recv_q == 1000
    assert client.send_q is not None and client.send_q >= 1000  # skb truesize
    # An accepted socket shares the listener's name and file (unix_stream_connect).
    assert accepted.address == recorded[INODES["listener"]].address
    assert accepted.vfs == recorded[INODES["listener"]].vfs
    assert client.address.kind is AddressKind.UNNAMED
    assert accepted.shutdown is Shutdown.NONE


def test_recorded_waiting_client_has_no_peer_inode_yet(
    recorded: dict[int, UnixSocketInfo],
) -> None:
    # Its peer is the embryo socket, which has no inode until accept(): 0 -> None.
    assert recorded[INODES["waiting"]].peer_inode is None


def test_recorded_abstract_name_keeps_its_nul(recorded: dict[int, UnixSocketInfo]) -> None:
    info = recorded[INODES["abstract"]]
    assert info.address == UnixAddress.abstract(b"udskit-rec\0nul")
    assert format_address(info.address) == "@udskit-rec\\x00nul"
    assert parse_address(format_address(info.address)) == info.address
    assert info.vfs is None


def test_recorded_socketpair_dgram_and_seqpacket(recorded: dict[int, UnixSocketInfo]) -> None:
    a, b = recorded[INODES["pair_a"]], recorded[INODES["pair_b"]]
    assert (a.peer_inode, b.peer_inode) == (INODES["pair_b"], INODES["pair_a"])
    assert a.address.kind is b.address.kind is AddressKind.UNNAMED
    dgram = recorded[INODES["dgram"]]
    assert (dgram.type, dgram.state) == (SocketType.DGRAM, SocketState.UNCONNECTED)
    assert dgram.address == UnixAddress.pathname(FACTS["workdir"] + "/d.sock")
    seqpacket = recorded[INODES["seqpacket"]]
    assert (seqpacket.type, seqpacket.state) == (SocketType.SEQPACKET, SocketState.LISTEN)
    assert seqpacket.send_q == 3


def test_recorded_meminfo() -> None:
    infos = decode_all((DATA / "unix_diag_kinds_meminfo.bin").read_bytes())
    client = infos[INODES["client"]]
    assert client.meminfo is not None
    # Unread stream data is charged to the sender's wmem_alloc (unix_stream_sendmsg),
    # which is what Send-Q shows.
    assert client.meminfo.wmem_alloc == client.send_q
    assert client.meminfo.wmem_alloc >= 1000
    assert client.meminfo.rcvbuf > 0 and client.meminfo.sndbuf > 0
    # Apart from meminfo, the same facts as without it.
    plain = decode_all((DATA / "unix_diag_kinds.bin").read_bytes())
    for inode, info in infos.items():
        assert info._replace(meminfo=None, cookie=None) == plain[inode]._replace(cookie=None)


def test_recorded_proc_net_unix_agrees_and_shows_nul_as_at() -> None:
    entries = decode_proc_net_unix((DATA / "proc_net_unix_kinds.txt").read_bytes())
    infos = {e.inode: info_from_proc_entry(e) for e in entries}
    plain = decode_all((DATA / "unix_diag_kinds.bin").read_bytes())
    assert set(infos) == set(plain)
    for inode, info in infos.items():
        assert info is not None
        assert (info.type, info.state) == (plain[inode].type, plain[inode].state)
        assert info.peer_inode is None and info.recv_q is None  # /proc has neither
    # /proc/net/unix prints NUL as '@': the name is not exact there, unlike sock_diag.
    abstract = infos[INODES["abstract"]]
    assert abstract is not None
    assert abstract.address == UnixAddress.abstract(b"udskit-rec@nul")
    assert abstract.address != plain[INODES["abstract"]].address


# -- built bytes: every path of the decoder --------------------------------------------
def test_common_layout_and_general_path_agree() -> None:
    attrs = common_attrs()
    fast = decode_all(message(10, *attrs) + DONE)[10]
    # Same attributes in another order (and an unknown one): the general loop.
    slow = decode_all(message(10, attr(99, b"new!"), *reversed(attrs)) + DONE)[10]
    assert fast == slow
    assert fast == UnixSocketInfo(
        inode=10,
        type=SocketType.STREAM,
        state=SocketState.CONNECTED,
        address=UnixAddress.unnamed(),
        vfs=None,
        peer_inode=11,
        pending=(),
        recv_q=3,
        send_q=4,
        shutdown=Shutdown.WRITE,
        uid=1000,
        cookie=7,
        meminfo=None,
    )


def test_name_kinds_are_distinct() -> None:
    replies = (
        message(1, attr(UNIX_DIAG_NAME, b"\0foo"))
        + message(2, attr(UNIX_DIAG_NAME, b"foo\0"))
        + message(3, attr(UNIX_DIAG_NAME, b"\0foo\0"))
        + message(4, attr(UNIX_DIAG_NAME, b"\0"))
        + DONE
    )
    infos = decode_all(replies)
    assert format_address(infos[1].address) == "@foo"
    assert format_address(infos[2].address) == "foo"
    assert format_address(infos[3].address) == "@foo\\x00"
    assert infos[4].address == UnixAddress.abstract(b"")
    assert len({infos[i].address for i in (1, 2, 3, 4)}) == 4


def test_listener_with_pending_clients_and_vfs() -> None:
    kdev = (259 << 20) | 3  # major 259, minor 3 as the kernel keeps it
    replies = message(
        20,
        attr(UNIX_DIAG_NAME, b"/run/app.sock\0"),
        attr(UNIX_DIAG_VFS, struct.pack("=II", 777, kdev)),
        attr(UNIX_DIAG_ICONS, struct.pack("=3I", 31, 32, 33)),
        attr(UNIX_DIAG_RQLEN, struct.pack("=II", 3, 128)),
        attr(UNIX_DIAG_SHUTDOWN, b"\0"),
        attr(UNIX_DIAG_UID, u32(0)),
        tcp_state=10,
        kernel_type=5,
    )
    info = decode_all(replies + DONE)[20]
    assert (info.type, info.state) == (SocketType.SEQPACKET, SocketState.LISTEN)
    assert info.pending == (31, 32, 33)
    assert info.vfs == VfsInode(os.makedev(259, 3), 777)
    assert (info.recv_q, info.send_q, info.shutdown) == (3, 128, Shutdown.NONE)


def test_empty_icons_and_zero_peer() -> None:
    replies = message(5, attr(UNIX_DIAG_ICONS, b""), attr(UNIX_DIAG_PEER, u32(0)), tcp_state=10)
    info = decode_all(replies + DONE)[5]
    assert info.pending == ()
    assert info.peer_inode is None


@pytest.mark.parametrize(("major", "minor"), [(0, 0), (8, 1), (254, 0), (259, 300), (4000, 99999)])
def test_kernel_dev_becomes_what_stat_reports(major: int, minor: int) -> None:
    assert kernel_dev_to_st_dev((major << 20) | minor) == os.makedev(major, minor)


def test_meminfo_from_an_older_kernel_is_padded() -> None:
    old = decode_all(message(6, attr(UNIX_DIAG_MEMINFO, struct.pack("=8I", *range(1, 9)))) + DONE)
    assert old[6].meminfo == MemInfo(1, 2, 3, 4, 5, 6, 7, 8, 0)


def test_missing_attributes_are_none() -> None:
    info = decode_all(message(8, tcp_state=7) + DONE)[8]
    assert info.state is SocketState.UNCONNECTED
    assert (info.recv_q, info.send_q, info.uid, info.shutdown) == (None, None, None, None)


def test_unknown_state_and_type() -> None:
    infos = decode_all(message(1, tcp_state=4) + message(2, kernel_type=3) + DONE)
    assert infos[1].state is SocketState.UNKNOWN
    assert 2 not in infos  # SOCK_RAW is no unix socket type


def test_a_datagram_without_done_is_not_the_end() -> None:
    found, done = decode_replies(message(1, *common_attrs()) + message(2))
    assert [info.inode for info in found] == [1, 2]
    assert not done


def test_error_reply_raises_with_errno() -> None:
    error = struct.pack("=IHHIIi", 36, NLMSG_ERROR, 0, 1, 0, -errno.ENOENT) + b"\0" * 16
    with pytest.raises(SockDiagError) as caught:
        decode_replies(error)
    assert caught.value.errno == errno.ENOENT


def test_ack_ends_the_reply() -> None:
    ack = struct.pack("=IHHIIi", 36, NLMSG_ERROR, 0, 1, 0, 0) + b"\0" * 16
    assert decode_replies(ack) == ([], True)


def test_truncated_message_is_refused() -> None:
    raw = message(1, *common_attrs())
    with pytest.raises(ValueError, match="truncated"):
        decode_replies(raw[:-4])


def test_one_record_layout_for_a_listed_socket() -> None:
    """UnixSocket is the one layout: the decoders, the lister's joins (by position),
    the fast JSON renderer and `udskit ls --json` all follow this field list."""
    from udskit.inspect.listing import UnixSocket as ListedSocket
    from udskit.sockdiag import KERNEL_FIELDS, UnixSocket, UnixSocketInfo

    assert UnixSocket is UnixSocketInfo is ListedSocket
    assert UnixSocket._fields == (
        "inode", "type", "state", "address", "vfs", "peer_inode", "pending", "recv_q",
        "send_q", "shutdown", "uid", "cookie", "meminfo",
        "processes", "peer_processes", "peer_address", "file",
    )  # fmt: skip
    assert UnixSocket._fields[KERNEL_FIELDS:] == (
        "processes",
        "peer_processes",
        "peer_address",
        "file",
    )
    assert UnixSocket._field_defaults == {
        "processes": (),
        "peer_processes": (),
        "peer_address": None,
        "file": None,
    }


@pytest.mark.parametrize("name", ["unix_diag_kinds.bin", "unix_diag_kinds_meminfo.bin"])
def test_decoded_records_are_whole_with_nothing_joined(name: str) -> None:
    """The decoder builds records with tuple.__new__, which checks no length: a record
    one field short would fail only when that field is read."""
    from udskit.sockdiag import UnixSocket

    infos = decode_all((DATA / name).read_bytes())
    assert infos
    for info in infos.values():
        assert len(info) == len(UnixSocket._fields)
        assert (info.processes, info.peer_processes, info.peer_address, info.file) == (
            (),
            (),
            None,
            None,
        )
