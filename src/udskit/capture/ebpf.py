"""I/O: `udskit dump --engine ebpf`: capture unix socket traffic without interposing.

Nobody is moved, restarted or reconnected: the BPF program (bpf/unixdump.bpf.c)
watches the syscalls that move data on the descriptors of interest and copies what
they carried into a ring buffer; this module decides which descriptors those are
(`plan_watch` over sock_diag and /proc/*/fd), turns ring-buffer records into the
same `Tap` calls the proxy engine makes, and counts what the kernel dropped.

So connections that were open before the capture are seen, abstract names and
socketpairs too, and the server's SO_PEERCRED still names the real client.

Who the client is: for a connection accepted during the capture, what the BPF
program read at the accept's exit from the new socket (the pid and credentials
connect(2) left there, as SO_PEERCRED returns them): never through the server's
descriptor later, whose number may name the next client by then. For a connection
open before the start, its SO_PEERCRED through a copy of the server's descriptor
(pidfd_getfd(2)) closed at once; at the client's end, the holding process itself.

sendmmsg/recvmmsg are one chunk per message (up to 64 per call); splice and sendfile
move bytes that never pass through the process's memory, so their chunks carry the
length and are marked as cut, with nothing captured.

A call already in progress on a watched descriptor when the capture starts (a server
waiting in accept(2), a reader in read(2)) entered before the program ran: the entry
its enter would have made is made from /proc/PID/task/TID/syscall, so what it returns
is recorded (x86_64 and aarch64; elsewhere a start note says it is not).

What is not seen (yet): descriptors a process inherits by fork() after the start;
connections accepted in the few milliseconds between the scan and the start of the
watch.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Final, final

from udskit.address import AddressKind, parse_address
from udskit.capture.bpf_loader import RING_BYTES, BpfProgram
from udskit.capture.ebpf_records import (
    CALL,
    HEADER,
    CallOp,
    Plan,
    PlannedConn,
    Record,
    RecordKind,
    Target,
    WatchFlags,
    decode_made,
    decode_peer,
    decode_record,
    direction_of,
    in_progress_call,
    plan_watch,
    supports_in_progress,
)
from udskit.errors import BpfUnavailable, UdskitError
from udskit.procfs import process_command, walk_socket_fds
from udskit.signals import start_worker, stop_signals_call
from udskit.sockdiag import Show, VfsInode
from udskit.socktype import SocketType
from udskit.tap import ClientInfo, ConnectionInfo, Direction, Tap

__all__ = ["EbpfDump", "EbpfStats", "target_from"]

#: How often the pcapng writer is fed while traffic flows (as the proxy engine).
FLUSH_INTERVAL: Final = 0.2
#: How often the ring buffer is read when it does not wake us (the program wakes the
#: reader only once 1 MiB waits, see WAKEUP_BYTES in the BPF source): the most a
#: record waits before it is printed; also how soon stop() and signals are noticed.
POLL_MS: Final = 20
_C_LOST_EVENTS, _C_LOST_BYTES, _C_READ_FAILED = 0, 1, 2
_SYS_PIDFD_GETFD: Final = 438  # the same number on every architecture
_libc = ctypes.CDLL(None, use_errno=True)
#: The command's first moments: wait at the gate (until its pid is traced), then
#: become the command (same pid); a missing program is one line and status 127.
_GATE = """\
import os, sys
gate = int(sys.argv[1])
os.read(gate, 1)
os.close(gate)
try:
    os.execvp(sys.argv[2], sys.argv[2:])
except OSError as exc:
    sys.stderr.write(f"udskit dump: cannot run {sys.argv[2]!r}: {exc.strerror}\\n")
    sys.exit(127)
"""
# The hot path's view of a record (see ebpf_records for the whole of it).
_HEADER = HEADER.unpack_from
_HEADER_SIZE: Final = HEADER.size
_K_SEND: Final = int(RecordKind.SEND)
_K_RECV: Final = int(RecordKind.RECV)
_MORE_BIT: Final = 0x400
_SERVER_BIT: Final = int(WatchFlags.SERVER) << 16
_S2C: Final = Direction.S2C
_C2S: Final = Direction.C2S


def target_from(
    address: str | None = None, inode: int | None = None, pid: int | None = None
) -> Target:
    """The capture target from what a user gives: an address, an inode or a pid."""
    if address is not None:
        addr = parse_address(address)
        if addr.kind is AddressKind.PATHNAME:
            try:
                st = os.stat(addr.path)
            except OSError as exc:
                raise UdskitError(
                    f"cannot capture {addr}: {exc.strerror}; give the path a server is bound to"
                ) from None
            return Target(address=addr, vfs=VfsInode(st.st_dev, st.st_ino))
        if addr.kind is not AddressKind.ABSTRACT:
            raise UdskitError(f"cannot capture {addr}: give a path or an abstract name")
        return Target(address=addr)
    if inode is not None:
        return Target(inode=inode)
    if pid is not None:
        return Target(pid=pid)
    raise UdskitError("give an address, --inode N or --pid PID to capture")


@contextmanager
def _borrowed(pid: int, fd: int, inode: int | None = None) -> Iterator[socket.socket | None]:
    """Another process's socket, through a copy of its descriptor (pidfd_getfd(2)),
    closed again at once: our copy must not keep a connection open. None when the
    process or the descriptor is gone, or (given `inode`) when the number now names
    another socket: closed and reused since the scan, it would tell of someone else."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        yield None
        return
    copy = -1
    try:
        copy = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
    finally:
        os.close(pidfd)
    if copy < 0:
        yield None
        return
    if inode is not None and os.fstat(copy).st_ino != inode:
        os.close(copy)
        yield None
        return
    sock = socket.socket(fileno=copy)
    try:
        yield sock
    finally:
        sock.close()


def _peer_cred_of(pid: int, fd: int, inode: int) -> ClientInfo:
    """SO_PEERCRED of another process's socket `inode`: who its peer is (unknown if
    the descriptor no longer names that socket)."""
    with _borrowed(pid, fd, inode) as sock:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12) if sock else None
        except OSError:
            raw = None
    if raw is None:
        return ClientInfo()
    peer, uid, gid = struct.unpack("3i", raw)
    if peer <= 0:
        return ClientInfo(None, uid, gid, None)
    return ClientInfo(peer, uid, gid, process_command(peer))


def _socket_type_of(pid: int, fd: int, default: SocketType) -> SocketType:
    """The type of another process's socket (`default` if it is gone already)."""
    with _borrowed(pid, fd) as sock:
        try:
            kernel = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) if sock else None
        except OSError:
            kernel = None
    return next((t for t in SocketType if t.kernel == kernel), default)


def _syscall_line(pid: int, tid: int) -> str:
    """/proc/PID/task/TID/syscall: the call a thread is blocked in ('' if gone)."""
    try:
        with open(f"/proc/{pid}/task/{tid}/syscall", encoding="ascii") as f:
            return f.read().strip()
    except (OSError, ValueError):
        return ""


def _process_info(pid: int) -> ClientInfo:
    """The holder itself as the client (its real uid and gid)."""
    uid = gid = None
    with (
        suppress(OSError, ValueError, IndexError),
        open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as f,
    ):
        for line in f:
            if line.startswith("Uid:"):
                uid = int(line.split()[1])
            elif line.startswith("Gid:"):
                gid = int(line.split()[1])
    return ClientInfo(pid, uid, gid, process_command(pid))


@final
@dataclass(slots=True, eq=False)
class _Conn:
    info: ConnectionInfo
    server_side: bool
    fds: set[tuple[int, int]] = field(default_factory=set)
    open: bool = True
    #: The direction whose sender closed first, once a read at our end saw EOF.
    first: Direction | None = None


@final
@dataclass(slots=True)
class EbpfStats:
    """What the capture saw and what it lost (reported at the end, never silently)."""

    connections: int = 0
    lost_events: int = 0
    lost_bytes: int = 0
    read_failed: int = 0
    orphans: int = 0  # records of descriptors whose connection we did not know

    def loss_notes(self) -> list[str]:
        notes = []
        if self.lost_events:
            notes.append(
                f"{self.lost_events} records ({self.lost_bytes} bytes) dropped by kernel: "
                "the ring buffer was full (the capture reader fell behind)"
            )
        if self.read_failed:
            notes.append(
                f"{self.read_failed} chunks recorded without their bytes (the kernel could "
                "not read the process's buffer)"
            )
        if self.orphans:
            notes.append(f"{self.orphans} records of unknown connections ignored")
        return notes


class EbpfDump:
    """`udskit dump --engine ebpf` as a library, with the surface of `ProxyDump`:
    ``start()`` loads the program and starts watching, ``run()`` turns records into
    `tap` calls until ``stop()`` (any thread) or a stop signal, ``close()`` stops the
    program, drains the ring buffer and returns notes (losses)."""

    def __init__(
        self,
        target: Target,
        *,
        tap: Tap | None = None,
        command: Sequence[str] | None = None,
        ring_bytes: int = RING_BYTES,
    ) -> None:
        self.target = target
        #: The kernel's ring buffer: what it holds while the reader is busy (-B).
        self.ring_bytes = ring_bytes
        self.tap = tap
        #: `udskit dump -- CMD`: run it, record the unix connections it (and what it
        #: forks) makes, stop when it exits; its exit status is `command_status`.
        self.command = list(command) if command is not None else None
        self.process: subprocess.Popen[bytes] | None = None
        self.command_status: int | None = None
        #: Lines for the user at start, as ProxyDump has them (none needed here: the
        #: engine changes nobody's identity and moves no file).
        self.warnings: list[str] = []
        self.start_notes: list[str] = []
        self.stats = EbpfStats()
        self._program: BpfProgram | None = None
        self._cookies: dict[int, _Conn] = {}
        self._by_fd: dict[tuple[int, int], _Conn] = {}
        self._pieces: dict[int, list[Any]] = {}  # tid -> [bytes so far, real length]
        self._listeners: set[tuple[int, int]] = set()
        self._next_cookie = 1
        self._next_id = 0
        self._stopping = threading.Event()
        self._signal: int | None = None
        self._closed = False
        self._notes: list[str] = []
        self._offset = 0
        self.sock_type: SocketType | None = None
        self.watched_listeners = 0
        #: Calls already in progress at the start that are recorded at their end.
        self.resumed_calls = 0

    # -- ProxyDump's surface ------------------------------------------------------------
    @property
    def display_path(self) -> str:
        if self.command is not None:
            return f"command:{self.command[0]}"
        if self.target.address is not None:
            return str(self.target.address)
        if self.target.inode is not None:
            return f"socket:[{self.target.inode}]"
        return f"pid:{self.target.pid}"

    @property
    def connections(self) -> int:
        return self.stats.connections

    def describe(self) -> str:
        if self.command is not None and self.process is not None:
            return (
                f"capturing the unix connections of {self.command[0]} (pid "
                f"{self.process.pid}) and its children with eBPF (engine ebpf)"
            )
        open_now = sum(1 for c in set(self._cookies.values()) if c.open)
        return (
            f"capturing {self.target.describe()} with eBPF (engine ebpf): "
            f"{open_now} open connections and {self.watched_listeners} listening "
            "descriptors watched; nobody was moved"
        )

    def restored_text(self) -> str:
        return "nothing was moved"

    def raise_signal(self) -> None:
        signum, self._signal = self._signal, None
        if signum is None:
            return
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        from udskit.signals import Terminated

        raise Terminated(signum)

    def stop(self) -> None:
        self._stopping.set()

    # -- start ----------------------------------------------------------------------------
    def load(self) -> None:
        """Compile (once), load and attach the program: where the engine cannot run,
        this raises BpfUnavailable before anything else happens."""
        if self._program is None:
            self._program = BpfProgram(self._on_record, self.ring_bytes)

    def start(self) -> None:
        self._offset = time.time_ns() - time.monotonic_ns()
        self.load()
        assert self._program is not None
        self._program.set_handler(self._hot_path())
        if self.command is not None:
            self._spawn()
            return
        try:
            self._watch(self._plan())
        except BaseException:
            self._program.close()
            self._program = None
            raise

    def _spawn(self) -> None:
        """Start the command held at a gate until its pid is traced, so that not
        even its first connection is missed; the gate then execs it in place."""
        assert self.command is not None and self._program is not None
        gate_r, gate_w = os.pipe()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _GATE, str(gate_r), *self.command],
                pass_fds=(gate_r,),
            )
        finally:
            os.close(gate_r)
        try:
            self.target = Target(pid=self.process.pid)
            self._program.trace(self.process.pid)
        finally:
            os.write(gate_w, b"x")
            os.close(gate_w)

    def _plan(self) -> Plan:
        from udskit.netlink import dump_unix_sockets

        try:
            sockets = dump_unix_sockets(Show.NAME | Show.VFS | Show.PEER)
        except OSError as exc:
            raise BpfUnavailable(
                f"sock_diag is not available ({exc}): the eBPF engine needs it to find the "
                "connections; use --engine proxy"
            ) from None
        triples, _facts = walk_socket_fds(skip_pid=os.getpid())
        holders: dict[int, list[tuple[int, int]]] = {}
        for i in range(0, len(triples), 3):
            holders.setdefault(triples[i], []).append((triples[i + 1], triples[i + 2]))
        plan = plan_watch(sockets, holders, self.target)
        if plan.empty and self.target.address is not None:
            raise UdskitError(
                f"cannot capture {self.target.address}: no process here holds a socket "
                "bound to it (is the server running, in this network namespace?)"
            )
        if plan.empty:
            raise UdskitError(f"cannot capture {self.target.describe()}: no such socket is held")
        return plan

    def _watch(self, plan: Plan) -> None:
        program = self._program
        assert program is not None
        for pid, fd in plan.listeners:
            program.watch(pid, fd, 0, WatchFlags.LISTENER)
            self._listeners.add((pid, fd))
        for pid in {pid for pid, _fd in plan.listeners} | {
            pid for planned in plan.conns for pid, _fd in planned.fds
        }:
            program.watch_process(pid)
        self.watched_listeners = len(plan.listeners)
        watched: dict[tuple[int, int], tuple[int, int]] = {
            key: (0, int(WatchFlags.LISTENER)) for key in plan.listeners
        }
        now = time.time_ns()
        for planned in plan.conns:
            cookie = self._next_cookie
            self._next_cookie += 1
            conn = self._new_conn(cookie, planned.sock_type, planned.server_side, planned)
            flags = WatchFlags.RECORD | (WatchFlags.SERVER if planned.server_side else 0)
            for pid, fd in planned.fds:
                conn.fds.add((pid, fd))
                self._by_fd[(pid, fd)] = conn
                program.watch(pid, fd, cookie, flags)
                watched[(pid, fd)] = (cookie, int(flags))
            self._opened(conn, now)
        if plan.conns:
            self.sock_type = plan.conns[0].sock_type
        self._resume_in_progress(watched)

    def _resume_in_progress(self, watched: dict[tuple[int, int], tuple[int, int]]) -> None:
        """Calls already blocked on a watched descriptor (a server in accept(2), a
        reader in read(2)) entered before the program ran: their exit would find no
        entry and what they return would be lost. Each thread's /proc syscall line
        says which call it is in and its arguments: the entry its enter would have
        made is made now, and undone if the thread has left that call meanwhile (the
        entry holds the call's number too: the exit of another call ignores it)."""
        import platform

        program = self._program
        assert program is not None
        machine = platform.machine()
        if not supports_in_progress(machine):
            self.start_notes.append(
                f"calls already in progress at the start (a server waiting in accept, a "
                f"reader in read) are not recorded on {machine}: their next calls are"
            )
            return
        for pid in sorted({pid for pid, _fd in watched}):
            try:
                tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
            except (OSError, ValueError):
                continue
            for tid in tids:
                line = _syscall_line(pid, tid)
                call = in_progress_call(line, machine) if line else None
                target = watched.get((pid, call.fd)) if call is not None else None
                if call is None or target is None:
                    continue
                cookie, flags = target
                need = WatchFlags.LISTENER if call.op is CallOp.ACCEPT else WatchFlags.RECORD
                if not flags & need:
                    continue
                entry = CALL.pack(call.ptr, call.count, call.fd, call.op, cookie, flags, call.nr)
                if not program.resume_call(pid, tid, entry):
                    continue
                if _syscall_line(pid, tid) != line:
                    program.forget_call(pid, tid, entry)
                else:
                    self.resumed_calls += 1

    def _new_conn(
        self, cookie: int, sock_type: SocketType, server_side: bool, planned: PlannedConn | None
    ) -> _Conn:
        self._next_id += 1
        if planned is not None:
            pid, fd = planned.fds[0]
            client = (
                _peer_cred_of(pid, fd, planned.inode) if planned.server_side else _process_info(pid)
            )
        else:
            client = ClientInfo()
        path = self.display_path
        # A connection the scan found was open before us: seen from its middle.
        info = ConnectionInfo(self._next_id, sock_type, path, path, client, planned is not None)
        conn = _Conn(info, server_side)
        self._cookies[cookie] = conn
        self.stats.connections += 1
        return conn

    def _opened(self, conn: _Conn, time_ns: int) -> None:
        if self.tap is not None:
            self.tap.opened(conn.info, time_ns)

    # -- records ---------------------------------------------------------------------------
    def _on_record(self, raw: memoryview) -> None:
        """One ring-buffer record (a view into the ring: copy what is kept)."""
        self._other_record(decode_record(raw))

    def _hot_path(self) -> Callable[[memoryview, int, int], None]:
        """The per-record handler, as a closure over everything it touches: plain
        data chunks (nearly every record) take the short way. Runs once per syscall
        watched, so every attribute lookup here costs redis requests."""
        unpack = HEADER.unpack_from
        cookies = self._cookies
        pieces = self._pieces
        offset = self._offset
        other = self._other_record
        tap = self.tap
        stats = self.stats
        data_of = tap.data if tap is not None else None

        def on_record(buf: memoryview, at: int, size: int) -> None:
            time_ns, kind_flags, _tgid, tid, _fd, cookie, caplen, length = unpack(buf, at)
            kind = kind_flags & 0xFF
            if kind > _K_RECV or kind_flags & _MORE_BIT or (pieces and tid in pieces):
                other(decode_record(buf[at : at + size]))
                return
            conn = cookies.get(cookie)
            if conn is None:
                stats.orphans += 1
                return
            if data_of is None:
                return
            server = kind_flags & _SERVER_BIT
            direction = _S2C if bool(server) == (kind == _K_SEND) else _C2S
            start = at + _HEADER_SIZE
            if length == caplen:
                data_of(conn.info, direction, buf[start : start + caplen], time_ns + offset)
            else:
                data_of(conn.info, direction, buf[start : start + caplen], time_ns + offset, length)  # type: ignore[call-arg]

        return on_record

    def _other_record(self, record: Record) -> None:
        kind = record.kind
        if kind is RecordKind.SEND or kind is RecordKind.RECV:
            conn = self._cookies.get(record.cookie)
            if conn is None:
                self.stats.orphans += 1
                return
            if self.tap is None:
                return
            data, length = record.data, record.length
            if conn.info.sock_type is not SocketType.STREAM and (
                record.more or record.tid in self._pieces
            ):
                # A message recorded in pieces is one chunk again.
                held = self._pieces.setdefault(record.tid, [bytearray(), 0])
                held[0] += data
                held[1] += length
                if record.more:
                    return
                del self._pieces[record.tid]
                data, length = bytes(held[0]), held[1]
            direction = direction_of(kind, record.flags)
            t = record.time_ns + self._offset
            if length == len(data):
                self.tap.data(conn.info, direction, data, t)
            else:
                self.tap.data(conn.info, direction, data, t, length)  # type: ignore[call-arg]
        elif kind is RecordKind.ACCEPT:
            self._accepted(record)
        elif kind is RecordKind.DUP:
            conn = self._cookies.get(record.cookie)
            if conn is not None:
                conn.fds.add((record.tgid, record.new_fd))
                self._by_fd[(record.tgid, record.new_fd)] = conn
        elif kind is RecordKind.CLOSE:
            self._fd_closed(record.tgid, record.fd, record.cookie, record.time_ns)
        elif kind is RecordKind.EOF:
            conn = self._cookies.get(record.cookie)
            if conn is not None and conn.first is None:
                # Our end read EOF: the other end stopped sending first.
                conn.first = Direction.C2S if conn.server_side else Direction.S2C
        elif kind is RecordKind.EXIT:
            self._process_exited(record.tgid, record.time_ns)
        elif kind is RecordKind.CONNECT or kind is RecordKind.PAIR:
            self._connected(record)

    def _accepted(self, record: Record) -> None:
        key = (record.tgid, record.new_fd)
        known = self._by_fd.get(key)
        if known is not None and known.open:
            # Accepted while we were planning: the scan found it already.
            self._cookies[record.cookie] = known
            return
        # Who connected and the socket's type, as the kernel read them at the accept's
        # exit: by now the client may be gone and the server may have closed this
        # descriptor and accepted the next client under the same number, so nothing
        # is read through it here (it would name the next client).
        peer = decode_peer(record.data)
        if peer is None:
            client = ClientInfo()
            sock_type = self.sock_type or SocketType.STREAM
        else:
            command = peer.command
            if command is None and peer.pid is not None:
                command = process_command(peer.pid)
            client = ClientInfo(peer.pid, peer.uid, peer.gid, command)
            sock_type = next(
                (t for t in SocketType if t.kernel == peer.kernel_type),
                self.sock_type or SocketType.STREAM,
            )
        conn = self._new_conn(record.cookie, sock_type, True, None)
        conn.info = ConnectionInfo(
            conn.info.id, sock_type, conn.info.listen, conn.info.upstream, client
        )
        conn.fds.add(key)
        self._by_fd[key] = conn
        self._opened(conn, record.time_ns + self._offset)

    def _connected(self, record: Record) -> None:
        """A traced process's new connection (or socketpair): recorded at its end."""
        key = (record.tgid, record.new_fd)
        made = decode_made(record.data)
        sock_type = _socket_type_of(*key, SocketType.STREAM)
        if record.kind is RecordKind.PAIR:
            path = "socketpair"
        elif made.address is not None:
            path = str(made.address)
        else:
            path = self.display_path
        client = ClientInfo(record.tgid, made.uid, made.gid, made.command)
        conn = self._new_conn(record.cookie, sock_type, False, None)
        conn.info = ConnectionInfo(conn.info.id, sock_type, path, path, client)
        conn.fds.add(key)
        self._by_fd[key] = conn
        self._opened(conn, record.time_ns + self._offset)

    def _fd_closed(self, pid: int, fd: int, cookie: int, time_ns: int) -> None:
        key = (pid, fd)
        self._listeners.discard(key)
        conn = self._cookies.get(cookie)
        if conn is None:  # a listener (cookie 0), or a connection we never knew
            return
        if self._by_fd.get(key) is conn:
            del self._by_fd[key]
        conn.fds.discard(key)
        if not conn.fds and conn.open:
            conn.open = False
            # No EOF seen first: our end closed first.
            first = conn.first or (Direction.S2C if conn.server_side else Direction.C2S)
            if self.tap is not None:
                self.tap.closed(conn.info, first, time_ns + self._offset)

    def _process_exited(self, pid: int, time_ns: int) -> None:
        """Its descriptors closed without close(2): forget them, here and in the map."""
        program = self._program
        for key in [k for k in self._listeners if k[0] == pid]:
            self._listeners.discard(key)
            if program is not None:
                program.unwatch(*key)
        for key, conn in [(k, c) for k, c in self._by_fd.items() if k[0] == pid]:
            if program is not None:
                program.unwatch(*key)
            cookie = next((c for c, v in self._cookies.items() if v is conn), 0)
            self._fd_closed(key[0], key[1], cookie, time_ns)

    # -- run and close ---------------------------------------------------------------------
    def run(self) -> None:
        program = self._program
        assert program is not None, "start() first"
        flush = getattr(self.tap, "flush", None)
        next_flush = time.monotonic() + FLUSH_INTERVAL
        if self.process is not None:
            process = self.process

            def wait_for_command() -> None:
                status = process.wait()
                self.command_status = 128 - status if status < 0 else status
                self.stop()

            start_worker(wait_for_command, name="udskit-dump-command")
        with self._signals_stop():
            while not self._stopping.is_set():
                program.poll(POLL_MS)
                if flush is not None and time.monotonic() >= next_flush:
                    flush()
                    next_flush = time.monotonic() + FLUSH_INTERVAL
        self.raise_signal()

    def _signals_stop(self) -> AbstractContextManager[None]:
        """A stop signal ends the loop between two records instead of in one."""

        def on_signal(signum: int) -> None:
            self._signal = signum
            self.stop()

        return stop_signals_call(on_signal)

    def close(self) -> list[str]:
        """Stop the program, pass on what is still in the ring buffer, count losses."""
        if self._closed:
            return self._notes
        self._closed = True
        program, self._program = self._program, None
        if program is None:
            return self._notes
        with self._signals_stop():
            try:
                program.detach()
                program.consume()
                self.stats.lost_events = program.counter(_C_LOST_EVENTS)
                self.stats.lost_bytes = program.counter(_C_LOST_BYTES)
                self.stats.read_failed = program.counter(_C_READ_FAILED)
            finally:
                program.close()
        self._notes += self.stats.loss_notes()
        return self._notes
