"""I/O: the proxy engine of `udskit dump`: take a live socket's place, forward, put back.

Taking over a path with no gap. A client connecting at any instant must reach either
the original server or the proxy, never find the path missing (ENOENT), so the path
is never unlinked and never renamed away:

1. the proxy binds a fresh socket at a staging name in the same directory
   (`.NAME.udskit-dump-new`), born with mode 0000 and then given the original file's
   owner, group and mode;
2. link(2) gives the original socket file a second, hidden name,
   `.NAME.udskit-dump`: connect(2) finds a socket through the file's inode
   (unix_find_bsd in net/unix/af_unix.c), so that name reaches the original server
   and is how the proxy forwards to it;
3. rename(2) moves the staging file over PATH: rename replaces its target atomically
   (rename(2): "there will be no point at which newpath is missing"), so a client sees
   either the original's inode or the proxy's.

Putting it back: link(2) the hidden name to the staging name again and rename(2) that
over PATH (atomic, like the takeover). The hidden name itself stays until close(): the
proxy keeps accepting for a moment, for clients whose connect() had already found its
file, and lets open connections finish for a grace period, and it forwards all of them
through the hidden name. close() then removes the hidden name.

Each link-then-rename runs with SIGINT, SIGTERM and SIGHUP blocked
(pthread_sigmask(2)): a signal handled between the two calls would leave the
original with only its hidden name and a dead proxy at PATH. A signal that arrives
meanwhile stays pending and is handled once both calls are done and recorded. (The mask
is per thread; `udskit dump` runs its proxy in one thread.)

The hidden name is derived from PATH alone, so after a `kill -9` `udskit dump --restore
PATH` finds it, and `udskit dump PATH` notices it and says so. Connections that existed
before the dump started go straight to the server and are never touched.

The kernel's bound name of the proxy socket (getsockname, `ss -x`, /proc/net/unix)
stays the staging name: bind(2) records the name it was given, and there is no way to
bind to a path that exists. `udskit ls` therefore shows the proxy as
`.NAME.udskit-dump-new`, which at least says what it is.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, final

from udskit.address import AddressKind, UnixAddress, parse_address
from udskit.endpoints import DEFAULT_BACKLOG, Listener, directory_lock, open_listener
from udskit.errors import SocketError, UsageError, socket_error
from udskit.identity import IdentityPlan, decide_identity, others_may_connect
from udskit.probe import (
    bound_owners,
    bound_type,
    current_user,
    describe_file,
    file_kind,
    os_errors,
)
from udskit.signals import STOP_SIGNALS, signals_held
from udskit.socktype import SocketType
from udskit.tap import Tap

if TYPE_CHECKING:
    from udskit.relay import Relay

__all__ = [
    "HIDDEN_SUFFIX",
    "STAGING_SUFFIX",
    "Leftovers",
    "ProxyDump",
    "Takeover",
    "find_leftovers",
    "hidden_path",
    "restore_leftovers",
    "staging_path",
]

HIDDEN_SUFFIX: Final = ".udskit-dump"
STAGING_SUFFIX: Final = ".udskit-dump-new"


def hidden_path(path: str) -> str:
    """Where the original socket file is kept during a dump: `DIR/.NAME.udskit-dump`."""
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}{HIDDEN_SUFFIX}")


def staging_path(path: str) -> str:
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}{STAGING_SUFFIX}")


def _inode(path: str) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


def is_live(path: str) -> bool:
    """Is a socket bound behind the socket file at `path`? A datagram connect() tells
    without making a connection: ECONNREFUSED means no socket owns the inode, EPROTOTYPE
    means a socket of another type does (unix_find_other)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        probe.connect(path)
    except OSError as exc:
        return exc.errno not in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK)
    finally:
        probe.close()
    return True


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


# -- leftovers -------------------------------------------------------------------------------
@final
@dataclass(frozen=True, slots=True)
class Leftovers:
    """What a dump that did not finish left next to PATH."""

    path: str
    hidden: str | None  # the original's hidden name, if it is there
    staging: str | None  # a staging socket file, if it is there
    path_live: bool  # something serves PATH (another dump running?)

    def describe(self) -> str:
        found = [p for p in (self.hidden, self.staging) if p is not None]
        return ", ".join(found)


def find_leftovers(path: str) -> Leftovers | None:
    hidden = hidden_path(path)
    staging = staging_path(path)
    has_hidden = os.path.lexists(hidden)
    has_staging = os.path.lexists(staging)
    if not has_hidden and not has_staging:
        return None
    return Leftovers(
        path,
        hidden if has_hidden else None,
        staging if has_staging else None,
        os.path.lexists(path) and is_live(path),
    )


def restore_leftovers(path: str) -> list[str]:
    """`udskit dump --restore PATH`: put the original back after a killed dump.

    Refuses while PATH is live and the hidden original is too (a dump is running: stop
    it instead). Returns what was done, one line each."""
    address = parse_address(path)
    if address.kind is not AddressKind.PATHNAME:
        raise UsageError(f"--restore takes a socket file path, not {address}")
    path = address.path  # `unix:/run/x.sock` names the file /run/x.sock
    done: list[str] = []
    with directory_lock(path):
        left = find_leftovers(path)
        if left is None:
            return [f"nothing to restore: no {hidden_path(path)} next to {path}"]
        if left.hidden is not None and _inode(path) == _inode(left.hidden):
            # Killed between link and rename: PATH is still the original itself.
            os.unlink(left.hidden)
            done.append(f"removed {left.hidden}, a second name of {path} (which is intact)")
        elif left.hidden is not None:
            hidden_live = is_live(left.hidden)
            if left.path_live and hidden_live:
                owners = bound_owners(address)
                who = f" ({owners})" if owners else ""
                raise socket_error(
                    "restore",
                    path,
                    errno.EBUSY,
                    f"a proxy still serves {path}{who}: a udskit dump is running there; "
                    "stop it (Ctrl-C or kill PID) and it restores the original itself",
                )
            if hidden_live or not os.path.lexists(path):
                with os_errors("restore", address), signals_held():
                    os.rename(left.hidden, path)
                done.append(f"restored the original socket file {path} from {left.hidden}")
            else:
                # The server is gone and PATH holds something else: the original file is
                # a dead socket's; keeping it would only make a stale file.
                os.unlink(left.hidden)
                done.append(f"removed {left.hidden}: the original server is no longer there")
        if left.staging is not None and (
            _is_dead_socket_file(left.staging) or _inode(left.staging) == _inode(path)
        ):
            # A dead proxy's file, or (killed while putting the original back) a second
            # name of the original that is already at PATH.
            os.unlink(left.staging)
            done.append(f"removed the staging file {left.staging}")
    return done


def _is_dead_socket_file(path: str) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISSOCK(st.st_mode) and not is_live(path)


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
        path: str,
        sock_type: SocketType | None = None,
        backlog: int = DEFAULT_BACKLOG,
    ) -> None:
        self.address = parse_address(path)
        if self.address.kind is not AddressKind.PATHNAME:
            raise UsageError(
                f"{self.address} is not a socket file: the proxy engine can only take over "
                "a path; point the clients at a new address with --listen ADDR instead"
            )
        self.path = self.address.path
        self.upstream = hidden_path(self.path)
        self.staging = staging_path(self.path)
        self.requested_type = sock_type
        self.sock_type = sock_type or SocketType.STREAM
        self.backlog = backlog
        self.sock: socket.socket | None = None
        self._proxy_inode: tuple[int, int] | None = None
        self._original_inode: tuple[int, int] | None = None
        self.restored = False  # the original is back at PATH
        self._restore_done = False
        self._hidden_kept = False  # the hidden name outlives restore() until close()

    # -- start -----------------------------------------------------------------------------
    def start(self) -> socket.socket:
        path, address = self.path, self.address
        for name in (self.upstream, self.staging):
            if len(os.fsencode(os.path.abspath(name))) > 107:
                raise UsageError(
                    f"{path} is too long to keep a hidden name next to it ({name} would "
                    "exceed 107 bytes); use --listen ADDR with a shorter path"
                )
        with directory_lock(path):
            left = find_leftovers(path)
            if left is not None:
                raise self._leftovers_error(left)
            try:
                st = os.lstat(path)
            except OSError:
                with os_errors("connect", address):
                    raise
            if not stat.S_ISSOCK(st.st_mode):
                raise UsageError(f"{path} is a {file_kind(st.st_mode)}, not a socket file")
            if not is_live(path):
                raise socket_error(
                    "connect",
                    path,
                    errno.ECONNREFUSED,
                    "the socket file exists but no server is behind it (stale); "
                    "start the server first",
                )
            self.sock_type = checked_type(address, self.requested_type)
            self._check_directory()
            sock = self._bind_staging(st)
            original = (st.st_dev, st.st_ino)
            proxy = _inode(self.staging)
            # Both steps, and what records them, with the stop signals held: a signal
            # handled in between would strand the original under its hidden name.
            with signals_held():
                try:
                    with os_errors("dump", address):
                        os.link(path, self.upstream)
                        os.rename(self.staging, path)
                except BaseException:
                    self._undo_start(sock, original, proxy)
                    raise
                self._original_inode = original
                self._proxy_inode = proxy
                self.sock = sock
        return sock

    def _undo_start(
        self, sock: socket.socket, original: tuple[int, int], proxy: tuple[int, int] | None
    ) -> None:
        """A takeover failed part-way: look at what the inodes say happened and undo
        exactly that (never unlink the hidden name while it is the original's only one)."""
        try:
            if proxy is not None and _inode(self.path) == proxy:
                # The rename happened: put the original back over the proxy's file.
                os.rename(self.upstream, self.path)
            elif _inode(self.upstream) == original and _inode(self.path) == original:
                os.unlink(self.upstream)  # only linked: PATH is still the original
        finally:
            sock.close()
            if proxy is not None and _inode(self.staging) == proxy:
                with suppress(OSError):
                    os.unlink(self.staging)

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

    def _leftovers_error(self, left: Leftovers) -> SocketError:
        running = left.hidden is not None and _inode(left.hidden) != _inode(self.path)
        if running and left.path_live and left.hidden is not None and is_live(left.hidden):
            owners = bound_owners(self.address)
            who = f" ({owners})" if owners else ""
            detail = (
                f"another udskit dump already runs on {self.path}{who}; stop it first, "
                f"or dump its clients with --listen"
            )
        else:
            detail = (
                f"found leftovers of a udskit dump that was killed ({left.describe()}); "
                f"run `udskit dump --restore {self.path}` to put the original back"
            )
        return socket_error("dump", self.path, errno.EEXIST, detail)

    def _bind_staging(self, original: os.stat_result) -> socket.socket:
        """The proxy's socket at the staging name, with the original file's mode, owner
        and group. Born with mode 0000 (umask 0777 around bind) so nobody can connect
        before the permissions are right; the staging name is private anyway."""
        if _is_dead_socket_file(self.staging):
            os.unlink(self.staging)
        staging = UnixAddress.pathname(self.staging)
        sock = socket.socket(socket.AF_UNIX, self.sock_type.kernel | socket.SOCK_CLOEXEC)
        try:
            old = os.umask(0o777)
            try:
                with os_errors("listen", staging, self.sock_type):
                    sock.bind(self.staging)
            finally:
                os.umask(old)
            try:
                if (original.st_uid, original.st_gid) != (os.geteuid(), os.getegid()):
                    os.chown(self.staging, original.st_uid, original.st_gid)
                os.chmod(self.staging, stat.S_IMODE(original.st_mode))
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
            else:
                # Before the rename, so the very first datagram carries its sender's
                # credentials (a datagram queued earlier has none: pid 0, uid 65534).
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            with suppress(OSError):
                os.unlink(self.staging)
            raise
        return sock

    # -- restore ---------------------------------------------------------------------------
    def restore(self) -> list[str]:
        """Put the original socket file back at PATH (atomically), once.

        The proxy's socket stays open: the caller drains clients that were already on
        their way in, then closes it. Returns notes for the user (nothing when all is
        as expected). `restored` turns true only once the original is at PATH; if this
        is interrupted before that, calling it again (close() does) tries again."""
        if self._restore_done or self.sock is None:
            return []
        notes: list[str] = []
        with directory_lock(self.path):
            current = _inode(self.path)
            hidden = _inode(self.upstream)
            if hidden is None:
                notes.append(f"{self.upstream} vanished meanwhile: nothing to put back")
                if current == self._proxy_inode:
                    os.unlink(self.path)
            elif current == self._proxy_inode or current is None:
                if current is None and not is_live(self.upstream):
                    os.unlink(self.upstream)
                    notes.append(
                        f"{self.path} was removed meanwhile and its server is gone; left it removed"
                    )
                else:
                    self._put_back()
            elif current == hidden:
                self.restored = True  # an earlier attempt got as far as the rename
            else:
                notes.append(
                    f"{self.path} was replaced meanwhile by another file; "
                    f"the original stays at {self.upstream}"
                )
            self._restore_done = True
        return notes

    def _put_back(self) -> None:
        """A new name over PATH, keeping the hidden one: clients the proxy still accepts
        while it drains are forwarded by the hidden name, which must not vanish under
        them (close() removes it once the relay is done)."""
        with signals_held():
            if _inode(self.staging) == _inode(self.upstream) or _is_dead_socket_file(self.staging):
                os.unlink(self.staging)  # our own link from an attempt cut short
            with os_errors("restore", self.address):
                os.link(self.upstream, self.staging)
                try:
                    os.rename(self.staging, self.path)
                except BaseException:
                    with suppress(OSError):
                        os.unlink(self.staging)
                    raise
            self._hidden_kept = True
            self.restored = True

    def close(self) -> None:
        """Restore (if not yet), close the proxy's socket, drop the hidden second name."""
        try:
            self.restore()
        finally:
            if self.sock is not None:
                self.sock.close()
            if self._hidden_kept:
                self._hidden_kept = False
                with directory_lock(self.path):
                    hidden = _inode(self.upstream)
                    if hidden is not None and hidden == _inode(self.path):
                        os.unlink(self.upstream)

    @property
    def upstream_address(self) -> UnixAddress:
        return UnixAddress.pathname(self.upstream)


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
        target: str,
        *,
        tap: Tap | None = None,
        listen: str | None = None,
        sock_type: SocketType | None = None,
        grace: float = 2.0,
        allow_identity_change: bool = False,
    ) -> None:
        self.target = parse_address(target)
        self.allow_identity_change = allow_identity_change
        #: Decided in start(): whether clients keep their identity upstream.
        self.identity_plan: IdentityPlan | None = None
        #: Lines for the user about what the dump cannot see or changes (start()).
        self.warnings: list[str] = []
        self.listen = parse_address(listen) if listen is not None else None
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
            self.takeover = Takeover(target, sock_type)

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
            self._relay = Relay(
                front,
                upstream,
                tap=self.tap,
                default_type=sock_type,
                carry_identity=self.identity_plan is IdentityPlan.CARRY,
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
        from udskit.cli.env import Terminated

        raise Terminated(signum)

    @contextmanager
    def _signals_stop(self) -> Iterator[None]:
        """While forwarding, a signal stops the loop between two events instead of
        raising in the middle of one (a chunk read but not yet sent would be lost)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, _frame: object) -> None:
            if self._signal is not None:  # the second signal: stop waiting for anyone
                self.grace = 0.0
            self._signal = signum
            self.stop()

        saved = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
        try:
            yield
        finally:
            for signum, old in saved.items():
                signal.signal(signum, old)

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
