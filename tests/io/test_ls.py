"""The lister on real sockets: files, filters, the /proc fallback, lookups, JSON form."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Peers
from udskit.address import UnixAddress, format_address
from udskit.inspect.fdscan import BackgroundFdScan
from udskit.inspect.jsonlisting import json_listing
from udskit.inspect.lister import (
    bound_socket,
    bound_socket_at,
    find_stale_files,
    list_sockets,
    query_unix_socket,
)
from udskit.inspect.listing import FileState, SocketFilter, Source
from udskit.inspect.render import json_document, socket_to_json
from udskit.sockdiag import SocketState
from udskit.socktype import SocketType


def inode_of(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def listen(path: str | bytes, kind: int = socket.SOCK_STREAM) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, kind)
    sock.bind(path)
    if kind != socket.SOCK_DGRAM:
        sock.listen(4)
    return sock


def test_bound_socket_names_the_listener_and_its_process(peers: Peers, sockdir: Path) -> None:
    path = sockdir / "app.sock"
    server = peers.start("socat", f"UNIX-LISTEN:{path}", "OPEN:/dev/null", wait_for=path)
    found = bound_socket_at(path)
    assert found is not None and found.state is SocketState.LISTEN
    assert [p.pid for p in found.processes] == [server.pid]
    assert str(found.processes[0]) == f"pid {server.pid} (socat)"
    st = os.stat(path)
    assert bound_socket(st.st_dev, st.st_ino) == found


def test_bound_socket_prefers_the_listener_to_its_connections(sockdir: Path) -> None:
    # An accepted socket shares the listener's file (same UNIX_DIAG_VFS).
    path = str(sockdir / "shared.sock")
    with listen(path) as listener, socket.socket(socket.AF_UNIX) as client:
        client.connect(path)
        accepted, _ = listener.accept()
        with accepted:
            found = bound_socket_at(path)
            assert found is not None and found.inode == inode_of(listener)
            assert [(p.pid, p.fd) for p in found.processes] == [(os.getpid(), listener.fileno())]


def test_bound_socket_is_none_for_stale_and_plain_files(sockdir: Path) -> None:
    stale = sockdir / "stale.sock"
    listen(str(stale)).close()
    (sockdir / "plain").write_text("x")
    assert bound_socket_at(stale) is None
    assert bound_socket_at(sockdir / "plain") is None
    assert bound_socket_at(sockdir / "missing") is None


def test_query_one_socket_by_inode(sockdir: Path) -> None:
    with listen(str(sockdir / "q.sock")) as sock:
        inode = inode_of(sock)
        info = query_unix_socket(inode)
        assert info is not None
        assert info.address == UnixAddress.pathname(str(sockdir / "q.sock"))
        assert info.state is SocketState.LISTEN
    assert query_unix_socket(inode) is None  # closed: gone


def test_file_states(sockdir: Path) -> None:
    present, moved, gone, reused = (
        str(sockdir / n) for n in ("p.sock", "m.sock", "g.sock", "r.sock")
    )
    with (
        listen(present) as s_present,
        listen(moved) as s_moved,
        listen(gone) as s_gone,
        listen(reused) as s_old,
    ):
        os.rename(moved, moved + ".old")
        os.unlink(gone)
        os.unlink(reused)
        with listen(reused) as s_new:
            listing = list_sockets(SocketFilter(patterns=(f"{sockdir}/*",)))
            states = {s.inode: s.file for s in listing}
            assert states[inode_of(s_present)].state is FileState.PRESENT  # type: ignore[union-attr]
            renamed = states[inode_of(s_moved)]
            assert renamed is not None and renamed.state is FileState.RENAMED
            assert renamed.now_at == moved + ".old"
            assert states[inode_of(s_gone)].state is FileState.DELETED  # type: ignore[union-attr]
            # The old server still runs, but new clients reach the new one.
            assert states[inode_of(s_old)].state is FileState.REPLACED  # type: ignore[union-attr]
            assert states[inode_of(s_new)].state is FileState.PRESENT  # type: ignore[union-attr]


def test_a_path_pattern_finds_a_socket_bound_by_a_relative_name(
    peers: Peers, sockdir: Path
) -> None:
    code = (
        "import socket, time; s = socket.socket(socket.AF_UNIX); s.bind('rel.sock'); "
        "s.listen(1); print(1, flush=True); time.sleep(60)"
    )
    helper = peers.start(sys.executable, "-c", code, cwd=sockdir)
    assert helper.proc.stdout is not None and helper.proc.stdout.readline()
    (found,) = list_sockets(SocketFilter(patterns=(str(sockdir / "rel.sock"),)))
    assert format_address(found.address) == "rel.sock"  # as bound, relative
    assert found.file is not None and found.file.state is FileState.UNKNOWN
    assert [p.pid for p in found.processes] == [helper.pid]


def test_filters(sockdir: Path, abstract_name: str) -> None:
    name = abstract_name.encode()[1:]
    with (
        listen(str(sockdir / "s.sock")) as stream,
        listen(str(sockdir / "d.sock"), socket.SOCK_DGRAM) as dgram,
        listen(b"\0" + name) as abstract,
    ):
        mine = {inode_of(s) for s in (stream, dgram, abstract)}

        def inodes(where: SocketFilter) -> set[int]:
            return {s.inode for s in list_sockets(where)} & mine

        assert inodes(SocketFilter(pids=frozenset({os.getpid()}))) == mine
        assert inodes(SocketFilter(types=frozenset({SocketType.DGRAM}))) == {inode_of(dgram)}
        assert inodes(SocketFilter(listening=True)) == {inode_of(stream), inode_of(abstract)}
        assert inodes(SocketFilter(abstract=True)) == {inode_of(abstract)}
        assert inodes(SocketFilter(patterns=(f"{sockdir}/?.sock",))) == mine - {inode_of(abstract)}
        assert inodes(SocketFilter(patterns=(abstract_name,))) == {inode_of(abstract)}
        assert inodes(SocketFilter(uids=frozenset({os.geteuid()}))) == mine
        assert inodes(SocketFilter(pids=frozenset({1 << 22}))) == set()


def test_proc_fallback_agrees_with_sock_diag(sockdir: Path) -> None:
    with (
        listen(str(sockdir / "a.sock")) as a,
        listen(str(sockdir / "b.sock"), socket.SOCK_SEQPACKET),
    ):
        where = SocketFilter(patterns=(f"{sockdir}/*",))
        netlink = {s.inode: s for s in list_sockets(where)}
        proc_listing = list_sockets(where, source=Source.PROC)
        assert proc_listing.source is Source.PROC and proc_listing.note is None
        proc = {s.inode: s for s in proc_listing}
        assert set(proc) == set(netlink) and inode_of(a) in proc
        for inode, sock in proc.items():
            assert (sock.type, sock.state, sock.address) == (
                netlink[inode].type,
                netlink[inode].state,
                netlink[inode].address,
            )
            assert sock.processes == netlink[inode].processes


def test_connections_of_a_datagram_receiver(sockdir: Path) -> None:
    path = str(sockdir / "log.sock")
    with (
        listen(path, socket.SOCK_DGRAM) as receiver,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender,
    ):
        sender.connect(path)
        listing = list_sockets(SocketFilter(patterns=(path,)), connections=True)
        (conn,) = listing.connections[inode_of(receiver)]
        assert conn.client_inode == inode_of(sender)
        assert [p.pid for p in conn.client_processes] == [os.getpid()]


def test_stale_files_under_a_directory(sockdir: Path) -> None:
    listen(str(sockdir / "dead.sock")).close()
    with listen(str(sockdir / "live.sock"), socket.SOCK_DGRAM):
        stale = find_stale_files([str(sockdir)])
    assert [s.path for s in stale] == [str(sockdir / "dead.sock")]
    assert stale[0].uid == os.geteuid()


def test_fast_json_equals_the_reference_form(sockdir: Path) -> None:
    odd_path = os.fsencode(str(sockdir)) + b'/sp ace "q" \xff.sock'
    names = [b"\0back\\slash", b"\0caf\xc3\xa9\0", b"\0\n\t"]
    held = [listen(odd_path), listen(str(sockdir / "plain.sock"), socket.SOCK_DGRAM)]
    try:
        for name in names:
            held.append(listen(name + str(os.getpid()).encode()))
        a, b = socket.socketpair()
        held += [a, b]
        mine = {inode_of(s) for s in held}
        listing = list_sockets(connections=True)
        sockets = [s for s in listing if s.inode in mine]
        assert len(sockets) == len(held)
        assert json.loads(json_document(sockets)) == [socket_to_json(s) for s in sockets]
        with_connections = json.loads(json_document(sockets, listing.connections))
        assert all("connections" in obj for obj in with_connections)
        assert json.loads(json_document([])) == []
    finally:
        for sock in held:
            sock.close()


def _by_inode(document: str, inodes: set[int]) -> dict[int, dict[str, object]]:
    return {obj["inode"]: obj for obj in json.loads(document) if obj["inode"] in inodes}


def test_json_listing_is_the_joined_records_in_json(sockdir: Path) -> None:
    # `udskit ls --json` renders before the scan of /proc ends (json_listing); what it
    # prints must be what the records of list_sockets() say, file states included.
    listener = listen(str(sockdir / "app.sock"))
    client = socket.socket(socket.AF_UNIX)
    client.connect(str(sockdir / "app.sock"))
    accepted, _ = listener.accept()
    moved = listen(str(sockdir / "moved.sock"))
    os.rename(sockdir / "moved.sock", sockdir / "moved-now.sock")
    gone = listen(str(sockdir / "gone.sock"), socket.SOCK_DGRAM)
    os.unlink(sockdir / "gone.sock")
    held = [listener, client, accepted, moved, gone, *socket.socketpair()]
    duplicate = os.dup(held[-1].fileno())  # one socket, two fds: two owner objects
    try:
        mine = {inode_of(s) for s in held}
        where = SocketFilter(patterns=(f"{sockdir}/*",))
        fast, view = json_listing(where, scan=BackgroundFdScan(json_texts=True))
        assert view.source is Source.NETLINK and view.note is None
        assert fast == json_document(list_sockets(where).sockets)  # byte for byte
        files = {o["address"]: o["file"] for o in json.loads(fast)}
        assert files[f"{sockdir}/moved.sock"] == {
            "state": "renamed",
            "now_at": f"{sockdir}/moved-now.sock",
        }
        assert files[f"{sockdir}/gone.sock"]["state"] == "deleted"
        reference = _by_inode(json_document(list_sockets().sockets), mine)
        # One scan child at a time: a child holds copies of our descriptors, and a
        # second one alive during the first's walk would be listed as their holder.
        for make in (lambda: BackgroundFdScan(json_texts=True), BackgroundFdScan, lambda: None):
            assert _by_inode(json_listing(scan=make())[0], mine) == reference
        without = _by_inode(json_listing(processes=False)[0], mine)
        assert without == _by_inode(json_document(list_sockets(processes=False).sockets), mine)
        assert all(o["processes"] == [] for o in without.values())
    finally:
        os.close(duplicate)
        for sock in held:
            sock.close()


#: Binds a socket in a private mount namespace (a tmpfs over the directory), where
#: nobody outside sees its file, then waits: as a socket in a container does.
_IN_OWN_ROOT = r"""
import os, socket, subprocess, sys
d = sys.argv[1]
subprocess.run(["mount", "-t", "tmpfs", "none", d], check=True)
s = socket.socket(socket.AF_UNIX); s.bind(d + "/inside.sock"); s.listen(1)
print(os.fstat(s.fileno()).st_ino, flush=True)
sys.stdin.read()
"""


def test_a_file_seen_only_from_its_holders_mount_namespace_is_present(
    peers: Peers, sockdir: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to make a mount namespace")
    inner = sockdir / "inner"
    inner.mkdir()
    holder = peers.start(
        "unshare",
        "--mount",
        "--propagation",
        "private",
        sys.executable,
        "-c",
        _IN_OWN_ROOT,
        inner,
        stdin=subprocess.PIPE,
    )
    assert holder.proc.stdout is not None
    inode = int(holder.proc.stdout.readline())
    assert not (inner / "inside.sock").exists()  # not from our root
    found = [s for s in list_sockets() if s.inode == inode]
    assert found and found[0].file is not None
    assert found[0].file.state is FileState.PRESENT  # via /proc/PID/root of its holder
    fast = _by_inode(json_listing(scan=BackgroundFdScan(json_texts=True))[0], {inode})
    assert fast[inode]["file"] == {"state": "present", "now_at": None}
    without = list_sockets(processes=False)
    assert [s.file.state for s in without if s.inode == inode and s.file] == [FileState.DELETED]


def test_json_document_writes_each_records_own_processes() -> None:
    # A library caller may pass records it edited: each object must show that record's
    # own processes and peer_processes, not those of another record for the same inode.
    a, b = socket.socketpair()
    try:
        mine = {inode_of(a), inode_of(b)}
        records = [s for s in list_sockets() if s.inode in mine]
        assert len(records) == 2 and all(r.processes for r in records)
        edited = [records[0]._replace(processes=()), records[1]]
        assert json.loads(json_document(edited)) == [socket_to_json(r) for r in edited]
        cut = [records[0]._replace(peer_processes=()), records[1]]
        assert json.loads(json_document(cut)) == [socket_to_json(r) for r in cut]
    finally:
        a.close()
        b.close()
