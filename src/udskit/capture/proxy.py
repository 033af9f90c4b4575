"""I/O: the proxy engine of `udskit dump`: take a live socket's place, forward, put back.

Taking over a path with no gap. A client connecting at any instant must reach either
the original server or the proxy, never find the path missing (ENOENT), so the path
is never unlinked and never renamed away:

1. the proxy binds a fresh socket at a staging name in the same directory
   (`.NAME.udskit-new-TOKEN`, TOKEN random), born with mode 0000 and then given the
   original file's owner, group and mode on its own inode (`udskit.fsguard`);
2. link(2) gives the original socket file a second, hidden name,
   `.NAME.udskit-dump-TOKEN`: connect(2) finds a socket through the file's inode
   (unix_find_bsd in net/unix/af_unix.c), so that name reaches the original server
   and is how the proxy forwards to it;
3. rename(2) moves the staging file over PATH: rename replaces its target atomically
   (rename(2): "there will be no point at which newpath is missing"), so a client sees
   either the original's inode or the proxy's.

Putting it back: link(2) the hidden name to a fresh random name and rename(2) that
over PATH (atomic, like the takeover). The hidden name itself stays until close(): the
proxy keeps accepting for a moment, for clients whose connect() had already found its
file, and lets open connections finish for a grace period, and it forwards all of them
through the hidden name. close() then removes the hidden name.

Each link-then-rename runs with SIGINT, SIGTERM and SIGHUP blocked
(pthread_sigmask(2)): a signal handled between the two calls would leave the
original with only its hidden name and a dead proxy at PATH. A signal that arrives
meanwhile stays pending and is handled once both calls are done and recorded. (The mask
is per thread; `udskit dump` runs its proxy in one thread.)

The directory may belong to somebody else, who can plant, swap or remove names at any
moment. So the names are unpredictable and created exclusively (link and bind fail on
an existing name), every name is used relative to the directory fd udskit opened, and
before it touches PATH the dump records the inodes it created (the original's and the
proxy's) in a state file only its user can write (`fsguard.write_state`). What to do
with the names, at the end, after a failed start or after a `kill -9` (`udskit dump
--restore PATH`), is decided by `capture.restoreplan` from what each name is compared
with that record; a name no record mentions is never touched, and is reported as what
it is (its kind and owner), never blamed on another process. Connections that existed
before the dump started go straight to the server and are never touched.

The kernel's bound name of the proxy socket (getsockname, `ss -x`, /proc/net/unix)
stays the staging name: bind(2) records the name it was given, and there is no way to
bind to a path that exists. `udskit ls` therefore shows the proxy as
`.NAME.udskit-new-TOKEN`, which at least says what it is.
"""

from __future__ import annotations

import errno
import os
import secrets
import signal
import socket
import stat
from collections.abc import Collection
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final, final

from udskit.address import AddressKind, UnixAddress, parse_address
from udskit.capture.restoreplan import (
    RestoreFacts,
    RestorePlan,
    Seen,
    Start,
    StartFacts,
    Step,
    plan_restore,
    plan_start,
    stat_start_time,
)
from udskit.capture.watchdog import Watchdog
from udskit.endpoints import (
    DEFAULT_BACKLOG,
    AddressLike,
    Listener,
    as_address,
    directory_lock,
    open_listener,
)
from udskit.errors import UsageError, socket_error
from udskit.fsguard import (
    Directory,
    FileSwapped,
    read_state,
    remove_state,
    socket_file_inode,
    write_state,
)
from udskit.identity import IdentityPlan, decide_identity, others_may_connect
from udskit.probe import (
    Liveness,
    bound_type,
    current_user,
    describe_file,
    file_kind,
    os_errors,
    probe_liveness,
)
from udskit.procfs import process_command, user_name
from udskit.signals import signals_held, stop_signals_call
from udskit.socktype import SocketType
from udskit.tap import Tap
from udskit.umask import umask_as

if TYPE_CHECKING:
    from udskit.relay import Relay

__all__ = [
    "HIDDEN_MARK",
    "STAGING_MARK",
    "DumpRecord",
    "ProxyDump",
    "Takeover",
    "dump_record",
    "leftover_names",
    "restore_leftovers",
]

#: The hidden and staging names are `.NAME` + mark + a random token.
HIDDEN_MARK: Final = ".udskit-dump-"
STAGING_MARK: Final = ".udskit-new-"


def checked_type(address: UnixAddress, requested: SocketType | None) -> SocketType:
    """The type of the socket at `address`, found out even when the user gave --type:
    a proxy of the wrong type would break the service for every client (EPROTOTYPE)."""
    try:
        found = detect_type(address)
    except UsageError:
        if requested is None:
            raise
        return requested
    if requested is not None and requested is not found:
        raise UsageError(f"{address} is a {found.value} socket; drop --type")
    return found


def detect_type(address: UnixAddress) -> SocketType:
    """The type of the socket bound at `address`: /proc/net/unix by name first; a
    datagram connect() (no connection is made) and a seqpacket connect() otherwise."""
    found = bound_type(address)
    if found is not None:
        return found
    target = address.to_sockaddr()
    for kind in (SocketType.DGRAM, SocketType.STREAM, SocketType.SEQPACKET):
        probe = socket.socket(socket.AF_UNIX, kind.kernel | socket.SOCK_CLOEXEC)
        try:
            probe.connect(target)
        except OSError as exc:
            if exc.errno == errno.EPROTOTYPE:
                continue
            with os_errors("connect", address):
                raise
        finally:
            probe.close()
        return kind
    raise UsageError(f"cannot tell the socket type of {address}; give --type")


# -- records and leftovers ---------------------------------------------------------------------
@final
@dataclass(frozen=True, slots=True)
class DumpRecord:
    """What a dump created, written to its private state file before it touches PATH."""

    path: str
    hidden: str  # names in PATH's directory
    staging: str
    original: tuple[int, int]  # (st_dev, st_ino) of the service's socket file
    proxy: tuple[int, int]  # of the proxy's socket file
    pid: int
    started: str  # /proc/PID/stat start time: a reused pid is not the dump

    def to_json(self) -> dict[str, object]:
        return {
            "version": _RECORD_VERSION,
            "path": self.path,
            "hidden": self.hidden,
            "staging": self.staging,
            "original": list(self.original),
            "proxy": list(self.proxy),
            "pid": self.pid,
            "started": self.started,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DumpRecord | None:
        try:
            if data.get("version") != _RECORD_VERSION:
                return None
            record = cls(
                str(data["path"]),
                str(data["hidden"]),
                str(data["staging"]),
                (int(data["original"][0]), int(data["original"][1])),
                (int(data["proxy"][0]), int(data["proxy"][1])),
                int(data["pid"]),
                str(data["started"]),
            )
        except (KeyError, TypeError, ValueError, IndexError):
            return None
        for name in (record.hidden, record.staging):
            if "/" in name or not name.startswith("."):
                return None  # only names in PATH's own directory
        return record

    def alive(self) -> bool:
        """Is the dump that wrote this still running? (A record of this very process is
        a takeover that failed part-way here and could not clean up: not running.)"""
        if self.pid == os.getpid():
            return False
        return self.started != "" and _process_started(self.pid) == self.started


_RECORD_VERSION: Final = 1


def _process_started(pid: int) -> str:
    """Field 22 of /proc/PID/stat (start time in clock ticks), or '' if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return ""
    return stat_start_time(raw)


def _new_names(name: str) -> tuple[str, str]:
    """The hidden and staging names: unpredictable, so nobody can plant a file there
    beforehand; both are created exclusively anyway (link and bind fail on EEXIST)."""
    token = secrets.token_hex(6)
    return f".{name}{HIDDEN_MARK}{token}", f".{name}{STAGING_MARK}{token}"


def leftover_names(path: str) -> list[str]:
    """Names next to PATH that look like a dump's (`.NAME.udskit-*`), whoever made them."""
    directory, name = os.path.split(os.path.abspath(path))
    prefix = f".{name}.udskit-"
    try:
        return sorted(
            os.path.join(directory, n) for n in os.listdir(directory) if n.startswith(prefix)
        )
    except OSError:
        return []


def dump_record(path: str) -> DumpRecord | None:
    """This user's record of a dump of the socket file `path` (None: none is left)."""
    with Directory(path) as directory:
        return _load(directory, os.path.basename(path))


def _load(directory: Directory, name: str) -> DumpRecord | None:
    """This user's record of a dump of `name` in `directory`. A record made for another
    path (a directory since removed, whose inode number was reused) is not this one."""
    data = read_state(directory, name)
    record = DumpRecord.from_json(data) if data is not None else None
    if record is None or record.path != os.path.join(directory.path, name):
        return None
    return record


def user_text(uid: int) -> str:
    name = user_name(uid)
    return f"uid {uid} ({name})" if name != str(uid) else f"uid {uid}"


def _what_is(directory: Directory, name: str) -> str:
    """'a socket file owned by uid 65534 (nobody)', for messages about a name that is
    not udskit's. The owner comes from lstat: a symlink is described as one."""
    st = directory.lstat(name)
    if st is None:
        return "gone"
    return f"a {file_kind(st.st_mode)} owned by {user_text(st.st_uid)}"


def _seen(directory: Directory, name: str, record: DumpRecord) -> Seen:
    inode = directory.inode(name)
    if inode is None:
        return Seen.MISSING
    if inode == record.original:
        return Seen.ORIGINAL
    if inode == record.proxy:
        return Seen.PROXY
    return Seen.OTHER


def _facts(
    directory: Directory, name: str, record: DumpRecord, *, keep_hidden: bool, own: bool
) -> RestoreFacts:
    return RestoreFacts(
        path=_seen(directory, name, record),
        hidden=_seen(directory, record.hidden, record),
        staging=_seen(directory, record.staging, record),
        other_dump_running=not own and record.alive(),
        keep_hidden=keep_hidden,
    )


def _carry_out(directory: Directory, name: str, record: DumpRecord, plan: RestorePlan) -> list[str]:
    """Do what `plan` says, each step only on the inode it expects. Returns notes for
    the user about what was in the way (nothing when all went as planned)."""
    notes: list[str] = []
    full = os.path.join(directory.path, name)
    hidden_full = os.path.join(directory.path, record.hidden)
    staging_full = os.path.join(directory.path, record.staging)
    for reason in plan.reasons:
        if reason == "path-missing":
            notes.append(f"{full} had been removed meanwhile; put the original back there")
        elif reason == "path-other":
            keeper = (
                staging_full if plan_has_original_at_staging(directory, record) else hidden_full
            )
            notes.append(
                f"{full} is now {_what_is(directory, name)}, not udskit's proxy: left "
                f"alone; the original stays at {keeper}"
            )
        elif reason == "hidden-missing":
            notes.append(f"the original's second name {hidden_full} is gone: nothing to put back")
        elif reason == "hidden-other":
            notes.append(
                f"{hidden_full} is now {_what_is(directory, record.hidden)}, not the "
                "original socket file: left alone, nothing to put back"
            )
        elif reason == "staging-other":
            notes.append(
                f"{staging_full} is {_what_is(directory, record.staging)}, not udskit's: left alone"
            )
    for step in plan.steps:
        if step is Step.PUT_BACK:
            with signals_held():
                _expect(directory, record.hidden, record.original)
                os.rename(record.hidden, name, src_dir_fd=directory.fd, dst_dir_fd=directory.fd)
        elif step is Step.PUT_BACK_KEEP:
            # A fresh name made exclusively by link(2), checked, then renamed over PATH:
            # the hidden name stays for the clients the proxy still accepts. The caller
            # recorded the fresh name as the staging name first (a kill -9 in between
            # leaves nothing the record does not know).
            fresh = record.staging
            with signals_held():
                os.link(
                    record.hidden,
                    fresh,
                    src_dir_fd=directory.fd,
                    dst_dir_fd=directory.fd,
                    follow_symlinks=False,
                )
                try:
                    _expect(directory, fresh, record.original)
                    os.rename(fresh, name, src_dir_fd=directory.fd, dst_dir_fd=directory.fd)
                except BaseException:
                    with suppress(OSError):
                        directory.unlink_if(fresh, record.original)
                    raise
        elif step is Step.LINK_BACK:
            _expect(directory, record.hidden, record.original)
            os.link(
                record.hidden,
                name,
                src_dir_fd=directory.fd,
                dst_dir_fd=directory.fd,
                follow_symlinks=False,
            )
        elif step is Step.RESCUE_STAGING:
            with signals_held():
                _expect(directory, record.staging, record.original)
                os.rename(record.staging, name, src_dir_fd=directory.fd, dst_dir_fd=directory.fd)
        elif step is Step.DROP_HIDDEN:
            # Only while the original is also at PATH: never its last name.
            if directory.inode(name) == record.original:
                directory.unlink_if(record.hidden, record.original)
        elif step is Step.DROP_STAGING:
            if not directory.unlink_if(record.staging, record.proxy) and (
                directory.inode(name) == record.original
            ):
                directory.unlink_if(record.staging, record.original)
        elif step is Step.DROP_PROXY_AT_PATH:
            directory.unlink_if(name, record.proxy)
        elif step is Step.FORGET:
            remove_state(directory, name)
    return notes


def plan_has_original_at_staging(directory: Directory, record: DumpRecord) -> bool:
    return directory.inode(record.hidden) != record.original and (
        directory.inode(record.staging) == record.original
    )


def _expect(directory: Directory, name: str, inode: tuple[int, int]) -> None:
    if directory.inode(name) != inode:
        raise FileSwapped(
            f"{os.path.join(directory.path, name)} changed under udskit (now "
            f"{_what_is(directory, name)})"
        )


def restore_leftovers(path: str) -> list[str]:
    """`udskit dump --restore PATH`: put the original back after a killed dump.

    Goes by this user's state record only: names next to PATH that no record mentions
    are reported as what they are and left alone. Refuses while the dump that wrote
    the record is still running. Returns what was done, one line each."""
    address = parse_address(path)
    if address.kind is not AddressKind.PATHNAME:
        raise UsageError(f"--restore takes a socket file path, not {address}")
    path = address.path  # `unix:/run/x.sock` names the file /run/x.sock
    name = os.path.basename(path)
    with directory_lock(path, "restore"):
        with os_errors("restore", address):
            directory = Directory(path)
        with directory:
            record = _load(directory, name)
            if record is None:
                done = [
                    f"{p} is {_what_is(directory, os.path.basename(p))}; udskit has no "
                    "record of making it, so it is left alone"
                    for p in leftover_names(path)
                ]
                done.append(
                    f"nothing to restore: no record of a udskit dump of {path} by {current_user()}"
                )
                return done
            facts = _facts(directory, name, record, keep_hidden=False, own=False)
            plan = plan_restore(facts)
            if plan.refused:
                raise socket_error(
                    "restore",
                    path,
                    errno.EBUSY,
                    f"the udskit dump that moved it still runs (pid {record.pid}, "
                    f"{process_command(record.pid)}); stop it (Ctrl-C or kill PID) and it "
                    "restores the original itself",
                )
            with os_errors("restore", address):
                done = _carry_out(directory, name, record, plan)
            if (
                Step.PUT_BACK in plan.steps
                or Step.LINK_BACK in plan.steps
                or (Step.RESCUE_STAGING in plan.steps)
            ):
                done.append(f"restored the original socket file {path}")
            elif plan.restored:
                done.append(f"{path} is the original socket file; removed the dump's other names")
            elif Step.DROP_PROXY_AT_PATH in plan.steps:
                done.append(f"removed the dead proxy's socket file at {path}")
            return done


# -- the takeover ----------------------------------------------------------------------------
@final
class Takeover:
    """The proxy's listener in the original's place; `restore()` (or closing) undoes it.

    After `start()`: `sock` is the proxy's bound (and listening) socket, non-blocking;
    `upstream` is the hidden name that reaches the original server; `sock_type` is the
    original's type.
    """

    def __init__(
        self,
        address: UnixAddress,
        sock_type: SocketType | None = None,
        backlog: int = DEFAULT_BACKLOG,
        *,
        watchdog: bool = False,
    ) -> None:
        """`address` is a value, parsed once where the text came in (the CLI, or
        `ProxyDump`); `parse_address` makes one from text."""
        self.address = address
        if self.address.kind is not AddressKind.PATHNAME:
            raise UsageError(
                f"{self.address} is not a socket file: the proxy engine can only take over "
                "a path; point the clients at a new address with --listen ADDR instead"
            )
        self.path = self.address.path
        self.name = os.path.basename(self.path)
        hidden, staging = _new_names(self.name)
        directory = os.path.dirname(self.path)
        self.upstream = os.path.join(directory, hidden)
        #: The value the relay connects to (made once, not per connection).
        self.upstream_address = UnixAddress.pathname(self.upstream)
        self.staging = os.path.join(directory, staging)
        self.requested_type = sock_type
        self.sock_type = sock_type or SocketType.STREAM
        self.backlog = backlog
        self.sock: socket.socket | None = None
        self.record: DumpRecord | None = None
        #: Lines for the user at start (a directory in other hands).
        self.notes: list[str] = []
        self.restored = False  # the original is back at PATH
        self._restore_done = False
        self._hidden_kept = False  # the hidden name outlives restore() until close()
        #: Start a watchdog that restores after a kill -9 (`capture.watchdog`).
        self.watch = watchdog
        self.watchdog: Watchdog | None = None

    # -- start -----------------------------------------------------------------------------
    def start(self) -> socket.socket:
        path, address = self.path, self.address
        for name in (self.upstream, self.staging):
            if len(os.fsencode(os.path.abspath(name))) > 107:
                raise UsageError(
                    f"{path} is too long to keep a hidden name next to it ({name} would "
                    "exceed 107 bytes); use --listen ADDR with a shorter path"
                )
        with directory_lock(path, "dump"):
            with os_errors("connect", address):
                directory = Directory(path)
            with directory:
                sock = self._start_in(directory)
        if self.watch:
            # Outside the lock: the watchdog inherits none of our fds but the two it
            # is given, and a restore it makes takes the lock itself.
            try:
                # Held until the watchdog is stored, so that close() always finds it.
                with signals_held():
                    self.watchdog = Watchdog.start(self.path)
            except OSError as exc:
                self.notes.append(
                    f"no watchdog ({exc.strerror or exc}): after a kill -9, run "
                    f"`udskit dump --restore {self.path}`"
                )
        return sock

    def _start_in(self, directory: Directory) -> socket.socket:
        path, address, name = self.path, self.address, self.name
        previous = _load(directory, name)
        st = directory.lstat(name)
        is_socket = st is not None and stat.S_ISSOCK(st.st_mode)
        decision = plan_start(
            StartFacts(
                recorded=previous is not None,
                recorded_alive=previous is not None and previous.alive(),
                exists=st is not None,
                is_socket=is_socket,
                # UNKNOWN (we may not connect) is not called stale: connecting to it says why.
                live=is_socket and probe_liveness(path) in (Liveness.LIVE, Liveness.UNKNOWN),
            )
        )
        if decision is Start.RUNNING:
            assert previous is not None
            raise socket_error(
                "dump",
                path,
                errno.EEXIST,
                f"another udskit dump already runs on {path} (pid {previous.pid}, "
                f"{process_command(previous.pid)}); stop it first, or dump its clients "
                "with --listen",
            )
        if decision is Start.KILLED:
            raise socket_error(
                "dump",
                path,
                errno.EEXIST,
                "a udskit dump of it was killed and left it moved; run "
                f"`udskit dump --restore {path}` to put the original back",
            )
        if decision is Start.MISSING:
            with os_errors("connect", address):
                os.lstat(path)
        if decision is Start.NOT_SOCKET:
            assert st is not None
            raise UsageError(f"{path} is a {file_kind(st.st_mode)}, not a socket file")
        if decision is Start.STALE:
            raise socket_error(
                "connect",
                path,
                errno.ECONNREFUSED,
                "the socket file exists but no server is behind it (stale); start the server first",
            )
        assert st is not None
        self.sock_type = checked_type(address, self.requested_type)
        self._check_directory()
        note = directory.exposure_note(name)
        if note is not None:
            self.notes.append(note)
        original = (st.st_dev, st.st_ino)
        hidden = os.path.basename(self.upstream)
        staging = os.path.basename(self.staging)
        sock, proxy = self._bind_staging(directory, st)
        record = DumpRecord(
            os.path.join(directory.path, name),
            hidden,
            staging,
            original,
            proxy,
            os.getpid(),
            _process_started(os.getpid()),
        )
        try:
            # The record first: after a kill -9 at any later instant, --restore knows
            # exactly which inodes are the dump's.
            write_state(directory, name, record.to_json())
        except BaseException:
            sock.close()
            directory.unlink_if(staging, proxy)
            raise
        # Both steps, and what records them, with the stop signals held: a signal
        # handled in between would strand the original under its hidden name.
        with signals_held():
            try:
                with os_errors("dump", address):
                    os.link(
                        name,
                        hidden,
                        src_dir_fd=directory.fd,
                        dst_dir_fd=directory.fd,
                        follow_symlinks=False,
                    )
                    _expect(directory, hidden, original)
                    os.rename(staging, name, src_dir_fd=directory.fd, dst_dir_fd=directory.fd)
            except BaseException:
                self._undo_start(directory, sock, record)
                raise
            self.record = record
            self.sock = sock
        return sock

    def _undo_start(self, directory: Directory, sock: socket.socket, record: DumpRecord) -> None:
        """A takeover failed part-way: the restore plan, from what the inodes say now,
        undoes exactly what happened. A hidden name that leads somewhere else (PATH was
        swapped between lstat and link) was made by this link: it goes too."""
        try:
            inode = directory.inode(record.hidden)
            if inode is not None and inode != record.original:
                directory.unlink_if(record.hidden, inode)
            plan = plan_restore(_facts(directory, self.name, record, keep_hidden=False, own=True))
            _carry_out(directory, self.name, record, plan)
        finally:
            sock.close()

    def _check_directory(self) -> None:
        """Taking the socket's place means creating and renaming files next to it."""
        directory = os.path.dirname(os.path.abspath(self.path))
        if os.access(directory, os.W_OK | os.X_OK, effective_ids=True):
            return
        where = describe_file(directory, os.stat(directory))
        raise socket_error(
            "dump",
            self.path,
            errno.EACCES,
            f"{current_user()} may not create files in {where}, "
            "which taking the socket's place needs; run as root or as the directory's "
            "owner, or capture clients pointed at a new address with --listen ADDR",
        )

    def _bind_staging(
        self, directory: Directory, original: os.stat_result
    ) -> tuple[socket.socket, tuple[int, int]]:
        """The proxy's socket at the staging name, with the original file's mode, owner
        and group, set on the proxy's own inode (never through a swapped name). Born with
        mode 0000 (umask 0777 around bind) so nobody can connect before the permissions
        are right. bind fails if the name exists: it is created exclusively."""
        staging_name = os.path.basename(self.staging)
        staging = UnixAddress.pathname(self.staging)
        sock = socket.socket(socket.AF_UNIX, self.sock_type.kernel | socket.SOCK_CLOEXEC)
        proxy: tuple[int, int] | None = None
        try:
            if not self.sock_type.connection_oriented:
                # Before bind, so the very first datagram carries its sender's
                # credentials (a datagram queued earlier has none: pid 0, uid 65534).
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            with umask_as(0o777), os_errors("listen", staging, self.sock_type):
                sock.bind(self.staging)
            proxy = socket_file_inode(sock)
            if proxy is None:
                if directory.exposure(os.geteuid()) is not None:
                    raise socket_error(
                        "dump",
                        self.path,
                        errno.EPERM,
                        f"{directory.exposure_note(self.name)}, and without sock_diag "
                        "(unix_diag) udskit cannot tell its own file from a swapped one; "
                        "capture with --listen ADDR instead",
                    )
                proxy = directory.inode(staging_name)
            assert proxy is not None
            ids = (original.st_uid, original.st_gid)
            uid, gid = ids if ids != (os.geteuid(), os.getegid()) else (-1, -1)
            try:
                directory.set_owner_and_mode(
                    staging_name, proxy, uid, gid, stat.S_IMODE(original.st_mode)
                )
            except FileSwapped as err:
                raise socket_error(
                    "dump",
                    self.path,
                    errno.EBUSY,
                    f"{err} before udskit could set its mode and owner; nothing was "
                    "changed and the original was not moved",
                ) from None
            except PermissionError:
                raise socket_error(
                    "dump",
                    self.path,
                    errno.EPERM,
                    f"cannot give the proxy's socket file the owner {original.st_uid}:"
                    f"{original.st_gid} of {self.path}; run udskit dump as root or as "
                    "that user",
                ) from None
            if self.sock_type.connection_oriented:
                sock.listen(self.backlog)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            if proxy is not None:
                with suppress(OSError):
                    directory.unlink_if(staging_name, proxy)
            raise
        return sock, proxy

    # -- restore ---------------------------------------------------------------------------
    def restore(self) -> list[str]:
        """Put the original socket file back at PATH (atomically), once.

        The proxy's socket stays open: the caller drains clients that were already on
        their way in, then closes it. Returns notes for the user (nothing when all is
        as expected). `restored` turns true only once the original is at PATH; if this
        is interrupted before that, calling it again (close() does) tries again."""
        if self._restore_done or self.sock is None or self.record is None:
            return []
        record = self.record
        with directory_lock(self.path, "restore"), Directory(self.path) as directory:
            plan = plan_restore(_facts(directory, self.name, record, keep_hidden=True, own=True))
            if Step.PUT_BACK_KEEP in plan.steps:
                # The staging name became PATH at the takeover and anybody may have
                # taken it since: put back through a fresh one, recorded before use.
                record = replace(record, staging=_new_names(self.name)[1])
                write_state(directory, self.name, record.to_json())
                self.record = record
            with os_errors("restore", self.address):
                notes = _carry_out(directory, self.name, record, plan)
            self._hidden_kept = directory.inode(record.hidden) == record.original
            self.restored = plan.restored
            self._restore_done = True
        return notes

    def close(self) -> None:
        """Restore (if not yet), close the proxy's socket, drop the dump's other names
        and its record; then send the watchdog away (it has nothing left to do)."""
        try:
            self.restore()
        finally:
            try:
                if self.sock is not None:
                    self.sock.close()
                record = self.record
                if record is not None and self._restore_done:
                    self.record = None
                    with directory_lock(self.path, "restore"), Directory(self.path) as directory:
                        plan = plan_restore(
                            _facts(directory, self.name, record, keep_hidden=False, own=True)
                        )
                        # Only cleaning up now: the original is where restore() left it.
                        steps = tuple(s for s in plan.steps if s in _CLEANUP)
                        _carry_out(
                            directory, self.name, record, replace(plan, steps=steps, reasons=())
                        )
            finally:
                # Even when the restore failed: it was tried and reported here, and a
                # watchdog trying the same again behind the user's back helps nobody.
                watchdog, self.watchdog = self.watchdog, None
                if watchdog is not None:
                    watchdog.dismiss()


_CLEANUP: Final = frozenset({Step.DROP_HIDDEN, Step.DROP_STAGING, Step.FORGET})


# -- the running dump ------------------------------------------------------------------------
#: After the original is back, how long the proxy still accepts: a client whose
#: connect() looked the path up just before the rename lands in the proxy's backlog
#: microseconds later; a quarter second covers that with a wide margin.
LINGER: Final = 0.25
#: How often a tap with a `flush()` is asked to pass on what it buffered.
FLUSH_INTERVAL: Final = 0.2
#: How soon it is asked again while records wait for room in the writer's pipe.
BACKLOG_INTERVAL: Final = 0.01


@final
class ProxyDump:
    """`udskit dump` as a library: take over (or listen beside) a socket and forward
    every client through the relay engine with `tap` watching.

    ``start()`` takes over; ``run()`` forwards until ``stop()`` (any thread), a signal
    (SIGINT, SIGTERM, SIGHUP) or an error; ``close()`` puts the original back, lets
    connections through the proxy finish for `grace` seconds, and closes everything.
    A signal that stopped `run()` is raised again (KeyboardInterrupt or the CLI's
    Terminated) once the original is back, so exit statuses stay truthful.
    """

    def __init__(
        self,
        target: AddressLike,
        *,
        tap: Tap | None = None,
        listen: AddressLike | None = None,
        sock_type: SocketType | None = None,
        grace: float = 2.0,
        allow_identity_change: bool = False,
        allow_uids: Collection[int] = (),
        allow_gids: Collection[int] = (),
        watchdog: bool = True,
    ) -> None:
        self.allow_uids = frozenset(allow_uids)
        self.allow_gids = frozenset(allow_gids)
        # Text is parsed here, once (the library's edge); a UnixAddress travels on as is.
        self.target = as_address(target)
        self.allow_identity_change = allow_identity_change
        #: Decided in start(): whether clients keep their identity upstream.
        self.identity_plan: IdentityPlan | None = None
        #: Lines for the user about what the dump cannot see or changes (start()).
        self.warnings: list[str] = []
        self.listen = as_address(listen) if listen is not None else None
        self.tap = tap
        self.grace = grace
        self.sock_type = sock_type
        self.takeover: Takeover | None = None
        self._listener: Listener | None = None
        self._relay: Relay | None = None
        self._signal: int | None = None
        self._saved: dict[int, object] = {}
        self._closed = False
        self._notes: list[str] = []
        if self.listen is None:
            self.takeover = Takeover(self.target, sock_type, watchdog=watchdog)

    @property
    def display_path(self) -> str:
        """The address clients use: the taken-over path, or the --listen address."""
        return str(self.listen if self.listen is not None else self.target)

    @property
    def connections(self) -> int:
        return self._relay.stats.accepted if self._relay is not None else 0

    def start(self) -> None:
        from udskit.relay import Relay

        upstream: UnixAddress
        front: Listener | socket.socket
        if self.takeover is not None:
            try:
                st = os.lstat(self.takeover.path)
            except OSError:
                st = None  # Takeover.start() says what is wrong
            if st is not None:
                self.takeover._check_directory()  # a plainer reason to stop comes first
                self._decide_identity(stat.S_IMODE(st.st_mode), st.st_uid)
                self._count_earlier_connections(st)
            front = self.takeover.start()
            upstream = self.takeover.upstream_address
            sock_type = self.takeover.sock_type
        else:
            assert self.listen is not None
            sock_type = checked_type(self.target, self.sock_type)
            self._listener = open_listener(self.listen, sock_type)
            if self.listen.kind is AddressKind.AUTOBIND:
                # The kernel picked the name: it is what clients must be pointed at, and
                # what the events and the start line show.
                self.listen = self._listener.address
                if self.tap is not None and hasattr(self.tap, "path"):
                    self.tap.path = str(self.listen)
            try:
                if self.listen.is_pathname:
                    st = os.stat(self.listen.path)
                    self._decide_identity(stat.S_IMODE(st.st_mode), st.st_uid)
                else:  # an abstract name: anyone in the network namespace may connect
                    self._decide_identity(None, None)
            except BaseException:
                self._listener.close()
                raise
            if sock_type is SocketType.DGRAM:
                self._listener.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            front = self._listener
            upstream = self.target
        self.sock_type = sock_type
        try:
            # A front beside the file (--listen) admits only who could have connected
            # to the file itself (or the allow lists); the proxy in the file's place has
            # the file's own mode and owner, which the kernel checks already.
            self._relay = Relay(
                front,
                upstream,
                tap=self.tap,
                default_type=sock_type,
                carry_identity=self.identity_plan is IdentityPlan.CARRY,
                allow_uids=self.allow_uids,
                allow_gids=self.allow_gids,
                guard=self.takeover is None,
            )
            self._relay.open()
        except BaseException:
            self.close()
            raise
        flush = getattr(self.tap, "flush", None)
        if callable(flush):
            loop = self._relay.loop

            def tick() -> None:
                behind = flush()
                loop.call_later(BACKLOG_INTERVAL if behind else FLUSH_INTERVAL, tick)

            loop.call_later(FLUSH_INTERVAL, tick)

    def _decide_identity(self, mode: int | None, owner: int | None) -> None:
        """Carry each client's identity upstream if we can; else refuse to start when
        other users' clients would be taken for us, unless the user allowed it."""
        from udskit.credswitch import switching_possible

        euid = os.geteuid()
        plan = decide_identity(
            can_switch=switching_possible(),
            others=others_may_connect(mode, owner, euid),
            allow_change=self.allow_identity_change,
        )
        self.identity_plan = plan
        where = self.display_path
        if plan is IdentityPlan.REFUSE:
            raise UsageError(
                f"clients of other users may connect to {where}, and as {current_user()} "
                "(without CAP_SETUID and CAP_SETGID) the proxy cannot connect upstream as "
                f"them: the server would take every client for uid {euid}, which can "
                "grant or deny access wrongly; run udskit dump as root, or pass "
                "--allow-identity-change to accept that"
            )
        if plan is IdentityPlan.CHANGE:
            self.warnings.append(
                f"WARNING: the server sees every client of {where} as {current_user()}, "
                "not as itself (--allow-identity-change): its access checks by peer "
                "credentials (SO_PEERCRED) now judge the proxy's user"
            )
        elif plan is IdentityPlan.CARRY and (self.allow_uids or self.allow_gids):
            self.warnings.append(
                f"WARNING: clients let in by --allow-uid/--allow-gid who could not connect "
                f"to {self.target} themselves reach it as {current_user()}, and the server "
                "sees them so; every other client is seen as itself"
            )

    def _count_earlier_connections(self, st: os.stat_result) -> None:
        """Connections made before the takeover go straight to the server: say how
        many there are (pooled keep-alive clients may never reconnect)."""
        from udskit.inspect.lister import open_connections

        count = open_connections(st.st_dev, st.st_ino)
        if count:
            self.warnings.append(
                f"{count} connection{'s' if count != 1 else ''} opened before the capture "
                f"{'go' if count != 1 else 'goes'} straight to the server and "
                f"{'are' if count != 1 else 'is'} not seen (pooled keep-alive clients "
                "show up only once they reconnect)"
            )

    @property
    def start_notes(self) -> list[str]:
        """Lines for the user once started: a directory in other hands, and for a front
        beside the file, who may connect to it."""
        notes = list(self.takeover.notes) if self.takeover is not None else []
        if self.listen is not None and self._relay is not None:
            notes.append(f"{self.listen} admits {self._relay.admission_text()}")
        return notes

    def describe(self) -> str:
        kind = self.sock_type.value if self.sock_type is not None else "?"
        if self.takeover is not None:
            return (
                f"capturing {self.target} ({kind}) in its place; the original is reached "
                f"as {self.takeover.upstream}"
            )
        return f"capturing clients of {self.listen}, forwarded to {self.target} ({kind})"

    def stop(self) -> None:
        """Ask run() to return; safe from any thread and from the tap."""
        if self._relay is not None:
            self._relay.loop.stop()

    def run(self) -> None:
        assert self._relay is not None, "start() first"
        with self._signals_stop():
            self._relay.loop.run()
        self.raise_signal()

    def raise_signal(self) -> None:
        """Raise the signal that stopped the dump, if one did and it was not raised yet
        (KeyboardInterrupt for SIGINT, the CLI's Terminated otherwise)."""
        signum, self._signal = self._signal, None
        if signum is None:
            return
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        from udskit.signals import Terminated

        raise Terminated(signum)

    def _signals_stop(self) -> AbstractContextManager[None]:
        """While forwarding, a signal stops the loop between two events instead of
        raising in the middle of one (a chunk read but not yet sent would be lost)."""

        def on_signal(signum: int) -> None:
            if self._signal is not None:  # the second signal: stop waiting for anyone
                self.grace = 0.0
            self._signal = signum
            self.stop()

        return stop_signals_call(on_signal)

    def restored_text(self) -> str:
        if self.takeover is None or self.takeover.sock is None:
            return "nothing was moved"
        if self.takeover.restored:
            return f"{self.target} is back in place"
        return f"{self.target} is NOT back in place: run `udskit dump --restore {self.target}`"

    def close(self) -> list[str]:
        """Put the original back first, then drain, then close. Returns notes.

        The signal handler that only stops the loop stays in place throughout, so a
        second Ctrl-C cuts the drain short but never interrupts the putting back; a
        signal that arrived meanwhile is kept for `raise_signal()`."""
        if self._closed:
            return self._notes
        self._closed = True
        notes = self._notes
        relay = self._relay
        with self._signals_stop():
            try:
                if self.takeover is not None:
                    notes += self.takeover.restore()
                if relay is not None and not relay.loop.epoll.closed and self._signal is None:
                    relay.drain(linger=LINGER, grace=self.grace)
            finally:
                try:
                    if relay is not None:
                        relay.close()
                finally:
                    if self.takeover is not None:
                        self.takeover.close()
                    if self._listener is not None:
                        self._listener.close()
        return notes
