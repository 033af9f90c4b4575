"""The eBPF engine's decisions without the kernel: ring-buffer records and watch plans."""

from __future__ import annotations

import struct

import pytest

from udskit.address import UnixAddress
from udskit.capture.ebpf_records import (
    CALL,
    HEADER,
    CallOp,
    InProgress,
    RecordKind,
    Target,
    WatchFlags,
    decode_made,
    decode_peer,
    decode_record,
    direction_of,
    in_progress_call,
    plan_watch,
)
from udskit.sockdiag import SocketState, UnixSocketInfo, VfsInode
from udskit.socktype import SocketType
from udskit.tap import Direction

PATH = UnixAddress.pathname("/run/app.sock")
FILE = VfsInode(0x803, 4242)


def sock(
    inode: int,
    state: SocketState = SocketState.CONNECTED,
    address: UnixAddress | None = None,
    peer: int | None = None,
    vfs: VfsInode | None = None,
    kind: SocketType = SocketType.STREAM,
) -> UnixSocketInfo:
    return UnixSocketInfo(
        inode, kind, state, address or UnixAddress.unnamed(), vfs, peer, (), None, None, None,
        None, None, None,
    )  # fmt: skip


def record(kind: int, flags: int, data: bytes, length: int | None = None, extra: int = 0) -> bytes:
    real = len(data) if length is None else length
    head = HEADER.pack(123, kind | extra | (flags << 16), 10, 11, 5, 7, len(data), real)
    return head + data + b"\0" * 17  # the ring reserves size classes: trailing room


def test_a_data_record_round_trips() -> None:
    rec = decode_record(record(RecordKind.SEND, WatchFlags.SERVER | WatchFlags.RECORD, b"+OK\r\n"))
    assert rec.kind is RecordKind.SEND
    assert rec.data == b"+OK\r\n" and rec.length == 5 and not rec.truncated
    assert (rec.tgid, rec.tid, rec.fd, rec.cookie, rec.time_ns) == (10, 11, 5, 7, 123)
    assert WatchFlags.SERVER in rec.flags


def test_cut_failed_and_continued_chunks_say_so() -> None:
    rec = decode_record(record(RecordKind.RECV, WatchFlags.RECORD, b"ab", 9, extra=0x100 | 0x400))
    assert rec.truncated and rec.more and not rec.read_failed and rec.length == 9
    rec = decode_record(record(RecordKind.RECV, WatchFlags.RECORD, b"", 9, extra=0x200))
    assert rec.read_failed and rec.data == b""


def test_accept_records_carry_the_new_descriptor() -> None:
    rec = decode_record(record(RecordKind.ACCEPT, WatchFlags.SERVER, b"", 12))
    assert rec.kind is RecordKind.ACCEPT and rec.new_fd == 12


@pytest.mark.parametrize(
    "raw",
    [b"short", HEADER.pack(1, 1, 1, 1, 1, 1, 100, 100) + b"only a few"],
    ids=["shorter than the header", "fewer bytes than it says"],
)
def test_bad_records_are_refused(raw: bytes) -> None:
    with pytest.raises(ValueError):
        decode_record(raw)


@pytest.mark.parametrize(
    ("kind", "server", "expected"),
    [
        (RecordKind.SEND, True, Direction.S2C),
        (RecordKind.RECV, True, Direction.C2S),
        (RecordKind.SEND, False, Direction.C2S),
        (RecordKind.RECV, False, Direction.S2C),
    ],
)
def test_direction_follows_the_recording_end(
    kind: RecordKind, server: bool, expected: Direction
) -> None:
    flags = WatchFlags.RECORD | (WatchFlags.SERVER if server else 0)
    assert direction_of(kind, flags) is expected


def test_an_address_is_recorded_at_the_servers_end_and_its_listener_watched() -> None:
    sockets = [
        sock(1, SocketState.LISTEN, PATH, vfs=FILE),
        sock(2, address=PATH, peer=3, vfs=FILE),  # accepted: carries the name
        sock(3, peer=2),  # the client
        sock(4, peer=5),  # somebody else's connection
        sock(5, peer=4),
    ]
    holders = {1: [(100, 3)], 2: [(100, 7)], 3: [(200, 4)], 4: [(300, 3)], 5: [(300, 4)]}
    plan = plan_watch(sockets, holders, Target(address=PATH, vfs=FILE))
    assert plan.listeners == ((100, 3),)
    assert len(plan.conns) == 1
    conn = plan.conns[0]
    assert (conn.inode, conn.server_side, conn.fds) == (2, True, ((100, 7),))


def test_a_server_we_cannot_see_is_recorded_at_the_clients_end() -> None:
    sockets = [sock(2, address=PATH, peer=3, vfs=FILE), sock(3, peer=2)]
    plan = plan_watch(sockets, {3: [(200, 4), (201, 4)]}, Target(address=PATH, vfs=FILE))
    assert [(c.inode, c.server_side, c.fds) for c in plan.conns] == [
        (3, False, ((200, 4), (201, 4)))
    ]


def test_a_renamed_file_is_not_the_address_any_more() -> None:
    sockets = [sock(1, SocketState.LISTEN, PATH, vfs=VfsInode(0x803, 1))]
    assert plan_watch(sockets, {1: [(100, 3)]}, Target(address=PATH, vfs=FILE)).empty


def test_abstract_names_match_by_name() -> None:
    name = UnixAddress.abstract("dbg")
    sockets = [sock(1, SocketState.LISTEN, name), sock(2, address=name, peer=3), sock(3, peer=2)]
    plan = plan_watch(sockets, {1: [(9, 3)], 2: [(9, 4)]}, Target(address=name))
    assert plan.listeners == ((9, 3),) and [c.inode for c in plan.conns] == [2]


def test_a_bound_datagram_socket_is_the_server() -> None:
    sockets = [sock(1, SocketState.UNCONNECTED, PATH, vfs=FILE, kind=SocketType.DGRAM)]
    plan = plan_watch(sockets, {1: [(5, 3)]}, Target(address=PATH, vfs=FILE))
    assert [(c.inode, c.server_side, c.sock_type) for c in plan.conns] == [
        (1, True, SocketType.DGRAM)
    ]


def test_an_inode_is_the_client_side_of_its_socketpair() -> None:
    sockets = [sock(7, peer=8), sock(8, peer=7)]
    plan = plan_watch(sockets, {7: [(1, 3)], 8: [(2, 4)]}, Target(inode=7))
    assert [(c.inode, c.server_side, c.fds) for c in plan.conns] == [(7, False, ((1, 3),))]
    # Not held by anyone we can see: recorded at its peer, with the roles swapped.
    plan = plan_watch(sockets, {8: [(2, 4)]}, Target(inode=7))
    assert [(c.inode, c.server_side) for c in plan.conns] == [(8, True)]


def test_a_pid_is_recorded_once_per_connection_even_talking_to_itself() -> None:
    sockets = [
        sock(1, SocketState.LISTEN, PATH, vfs=FILE),
        sock(2, address=PATH, peer=3, vfs=FILE),
        sock(3, peer=2),
        sock(4, peer=5),
        sock(5, peer=4),
    ]
    holders = {1: [(9, 3)], 2: [(9, 4)], 3: [(9, 5)], 4: [(9, 6)], 5: [(10, 6)]}
    plan = plan_watch(sockets, holders, Target(pid=9))
    assert plan.listeners == ((9, 3),)
    assert [(c.inode, c.server_side) for c in plan.conns] == [(2, True), (4, False)]


def test_who_connected_where_from_the_kernels_view() -> None:
    sockaddr = (1).to_bytes(2, "little") + b"\0dbg-name"
    raw = struct.pack("<16sQII112s", b"curl\0", (5 << 32) | 1000, len(sockaddr), 0, sockaddr)
    made = decode_made(raw)
    assert (made.command, made.uid, made.gid) == ("curl", 1000, 5)
    assert made.address == UnixAddress.abstract("dbg-name")
    path = (1).to_bytes(2, "little") + b"/run/app.sock\0"
    made = decode_made(struct.pack("<16sQII112s", b"sh", 0, len(path), 0, path))
    assert made.address == PATH
    assert decode_made(struct.pack("<16sQII112s", b"sh", 0, 0, 0, b"")).address is None


def test_ring_sizes_are_powers_of_two_within_bounds() -> None:
    from udskit.capture.bpf_loader import ring_size
    from udskit.errors import UsageError

    assert ring_size(1) == 4096
    assert ring_size(65536) == 64 << 20
    assert ring_size(100_000) == 128 << 20
    with pytest.raises(UsageError, match="at most"):
        ring_size(2 << 20)


# -- calls in progress at the start, and who connected ---------------------------------------------
@pytest.mark.parametrize(
    ("line", "machine", "expected"),
    [
        # nc -lU in accept4(3, ...), cat in read(0, buf, 131072), as /proc shows them
        ("288 0x3 0x7ffd9226a0e0 0x7ffd9226a074 0x800 0x0 0x0 0x7ffd 0x7fe1", "x86_64",
         InProgress(CallOp.ACCEPT, 3, 0x7FFD9226A0E0, 0x7FFD9226A074, 288)),
        ("0 0x0 0x7f33fb12c000 0x20000 0x7f33 0xffffffff 0x0 0x7ffe 0x7f33", "x86_64",
         InProgress(CallOp.BUF, 0, 0x7F33FB12C000, 0x20000, 0)),
        ("63 0x5 0x1000 0x10 0x0 0x0 0x0 0x7ffe 0x7f33", "aarch64",
         InProgress(CallOp.BUF, 5, 0x1000, 0x10, 63)),
        ("47 0x4 0x2000 0x0 0x0 0x0 0x0 0x1 0x2", "x86_64",
         InProgress(CallOp.MSG, 4, 0x2000, 0, 47)),
        ("47 0x4 0x2000 0x2 0x0 0x0 0x0 0x1 0x2", "x86_64", None),  # MSG_PEEK: read again
        ("45 0x4 0x2000 0x10 0x2 0x0 0x0 0x1 0x2", "x86_64", None),  # recvfrom MSG_PEEK
        ("7 0x4 0x2000 0x10 0x0 0x0 0x0 0x1 0x2", "x86_64", None),  # poll: no data call
        ("running", "x86_64", None),
        ("-1 0x7ffe 0x7f33", "x86_64", None),  # blocked, but in no syscall
        ("0 0x0 0x1000 0x10 0x0 0x0 0x0 0x1 0x2", "riscv64", None),  # numbers not known
    ],
)  # fmt: skip
def test_in_progress_call_from_proc_syscall_lines(
    line: str, machine: str, expected: InProgress | None
) -> None:
    assert in_progress_call(line, machine) == expected


def test_call_entry_is_the_bpf_struct_call() -> None:
    assert CALL.size == 112  # struct call in unixdump.bpf.c
    entry = CALL.pack(1, 2, 3, 4, 5, 6, 7)
    assert entry[:32] == struct.pack("<QQIIII", 1, 2, 3, 4, 5, 6)
    assert entry[44:48] == struct.pack("<I", 7)  # nr, after id (8) and kind (4)
    assert entry[48:] == bytes(64)


def test_decode_peer_reads_pid_ids_and_type_or_says_unknown() -> None:
    peer = decode_peer(struct.pack("<IIIHH16s", 4242, 65534, 65534, 1, 1, b"redis-cli\0"))
    assert peer is not None and (peer.pid, peer.uid, peer.gid, peer.kernel_type) == (
        4242, 65534, 65534, 1,
    )  # fmt: skip
    assert peer.command == "redis-cli"
    no_pid = decode_peer(struct.pack("<IIIHH16s", 0, 0, 0, 5, 1, b""))
    assert no_pid is not None and no_pid.pid is None and no_pid.command is None
    assert decode_peer(struct.pack("<IIIHH16s", 4242, 0, 0, 1, 0, b"")) is None  # not read
    assert decode_peer(b"") is None
