"""I/O: systemd's socket activation, both ends, and readiness notification.

The service end: `listen_fds()` takes the sockets a service manager (systemd,
`systemd-socket-activate`, `udskit activate`) passed from fd 3 on, after checking
LISTEN_PID names this very process; `notify("READY=1")` tells the manager we serve.

The manager end: `Activator` binds nothing itself (the caller hands it the listening
sockets), starts a command with them as fd 3, 4, ... and LISTEN_FDS, LISTEN_PID (set
in the child itself, after fork, so it is the pid the command will have),
LISTEN_FDNAMES and NOTIFY_SOCKET, and waits for READY=1 if asked. On SIGHUP it starts
a second child on the same sockets, waits until that one is ready, and only then sends
SIGTERM to the first: the listening sockets never close, so no client is refused
during a reload. SIGTERM and SIGINT are passed on; it exits with the child's status.

The supervisor is one thread: fork() in a threaded Python process can deadlock the
child on a lock some other thread held.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Final, final

from udskit.address import UnixAddress, decode_sockaddr
from udskit.ancillary import enable_passcred, recv_message
from udskit.errors import ActivationError, PassError, UsageError
from udskit.sdprotocol import (
    LISTEN_VARS,
    SD_LISTEN_FDS_START,
    check_fdname,
    listen_environment,
    parse_listen_env,
    parse_notify,
)
from udskit.signals import die_with_parent
from udskit.socktype import SocketType

__all__ = [
    "Activator",
    "InheritedSocket",
    "listen_fds",
    "listen_fds_by_name",
    "notify",
]

#: How long children get after SIGTERM before SIGKILL when udskit itself must end
#: them (a child that never got ready, or a stop). A guess that fits HTTP servers.
STOP_GRACE: Final = 10.0
Log = Callable[[str], None]


# -- the service end --------------------------------------------------------------------
@final
@dataclass(frozen=True, slots=True)
class InheritedSocket:
    """One socket inherited by socket activation: its fd, its LISTEN_FDNAMES name."""

    sock: socket.socket
    name: str

    @property
    def address(self) -> UnixAddress | tuple[str, int] | None:
        """The unix address it is bound to, (host, port) for TCP, None if unknown."""
        try:
            raw = self.sock.getsockname()
        except OSError:
            return None
        if self.sock.family == socket.AF_UNIX:
            return decode_sockaddr(raw)
        return (str(raw[0]), int(raw[1]))

    @property
    def type(self) -> SocketType | None:
        """The unix socket type; None for TCP (always a stream)."""
        if self.sock.family != socket.AF_UNIX:
            return None
        return SocketType.from_kernel(self.sock.type & 0xF)


def listen_fds(
    *, unset_environment: bool = True, environ: dict[str, str] | None = None
) -> list[InheritedSocket]:
    """The sockets this process inherited by socket activation, in order (fd 3 on).

    Refuses (ActivationError) when LISTEN_PID names another process, and when an
    announced fd is not an open socket. Each fd is made close-on-exec, as
    sd_listen_fds does, and with `unset_environment` the LISTEN_* variables are
    removed so that commands we start do not take them for theirs.
    """
    env = os.environ if environ is None else environ
    spec = parse_listen_env(env, os.getpid())
    found: list[InheritedSocket] = []
    try:
        for fd, name in zip(spec.fds, spec.names, strict=True):
            try:
                sock = socket.socket(fileno=fd)
            except OSError as exc:
                what = "not open" if exc.errno == errno.EBADF else "not a socket"
                raise ActivationError(
                    f"LISTEN_FDS={spec.count} but fd {fd} ({name}) is {what}: the service "
                    "manager passed fewer sockets than it announced"
                ) from None
            os.set_inheritable(fd, False)
            found.append(InheritedSocket(sock, name))
    except BaseException:
        for inherited in found:
            inherited.sock.detach()
        raise
    if unset_environment:
        for var in LISTEN_VARS:
            env.pop(var, None)
    return found


def listen_fds_by_name(*, unset_environment: bool = True) -> dict[str, list[InheritedSocket]]:
    """`listen_fds()` grouped by name (several sockets may share one)."""
    grouped: dict[str, list[InheritedSocket]] = {}
    for inherited in listen_fds(unset_environment=unset_environment):
        grouped.setdefault(inherited.name, []).append(inherited)
    return grouped


def notify(state: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """Send `state` ("READY=1", "STATUS=...", "STOPPING=1") to NOTIFY_SOCKET, as
    sd_notify(3). Returns False when there is no NOTIFY_SOCKET (not supervised)."""
    env = os.environ if environ is None else environ
    target = env.get("NOTIFY_SOCKET")
    if not target:
        return False
    # "@name" is an abstract name here, as systemd writes it.
    sockaddr: str | bytes = "\0" + target[1:] if target.startswith("@") else target
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(state.encode(), sockaddr)
        except OSError as exc:
            raise ActivationError(
                f"notify {target}: {os.strerror(exc.errno or errno.EIO).lower()}: the "
                "supervisor's NOTIFY_SOCKET is gone (did it exit?)"
            ) from None
    return True


# -- the manager end --------------------------------------------------------------------
@final
@dataclass(slots=True)
class _Child:
    pid: int
    pidfd: int
    started: float
    ready: bool = False
    retiring: bool = False
    status: int | None = None
    fields: dict[str, str] = field(default_factory=dict)


def _exit_status(wait_status: int) -> int:
    """The shell's convention: the exit code, or 128 + the signal that killed it."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.WEXITSTATUS(wait_status)


@final
class Activator:
    """Run `argv` with `sockets` as fds 3.. (see the module docstring).

    `ready_timeout`: wait at most this long for READY=1 from each child (None: a child
    counts as ready once started, for servers that do not speak sd_notify). The caller
    keeps owning the sockets (and, for socket files, removes them afterwards).
    """

    def __init__(
        self,
        sockets: Sequence[socket.socket],
        argv: Sequence[str],
        *,
        names: Sequence[str] = (),
        ready_timeout: float | None = None,
        log: Log | None = None,
        verbose: bool = False,
    ) -> None:
        if not argv:
            raise UsageError("no command to run: give it after --, e.g. -- python3 server.py")
        if not sockets:
            raise UsageError("no socket to pass: give at least one --listen ADDR")
        if len(names) > len(sockets):
            raise UsageError(f"{len(names)} --fdname for {len(sockets)} --listen")
        if len(names) == 1:
            names = list(names) * len(sockets)  # one name for all, like FileDescriptorName=
        self.names = [check_fdname(n) for n in names] + ["unknown"] * (len(sockets) - len(names))
        self.sockets = list(sockets)
        self.argv = list(argv)
        import ctypes  # noqa: F401  (die_with_parent uses it in the child: import it now)

        self.program = shutil.which(self.argv[0])
        if self.program is None:
            raise UsageError(
                f"command not found: {self.argv[0]!r} (not in PATH, or not executable)"
            )
        if ready_timeout is not None and not 0 < ready_timeout < float("inf"):
            raise UsageError(f"--ready-timeout must be more than 0 seconds, not {ready_timeout}")
        self.ready_timeout = ready_timeout
        self.log: Log = log or (lambda _line: None)
        self.verbose = verbose
        self.children: dict[int, _Child] = {}
        self.current: _Child | None = None
        self.pending: _Child | None = None
        self._signals: list[int] = []
        self._dir = tempfile.mkdtemp(prefix="udskit-activate-")
        self.notify_path = os.path.join(self._dir, "notify")
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._notify.bind(self.notify_path)
        enable_passcred(self._notify)
        self._notify.setblocking(False)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stopping: int | None = None
        self.reloads = 0

    # -- lifecycle --------------------------------------------------------------------
    def close(self) -> None:
        for child in self.children.values():
            with suppress(OSError):
                os.close(child.pidfd)
        self.children.clear()
        self._notify.close()
        for fd in (self._wake_r, self._wake_w):
            with suppress(OSError):
                os.close(fd)
        shutil.rmtree(self._dir, ignore_errors=True)

    def run(self) -> int:
        """Start the command and supervise it until it exits; its exit status (128+N
        for a signal). Raises ActivationError when the first child never gets ready."""
        handled = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
        old_handlers = {s: signal.getsignal(s) for s in handled}
        old_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        try:
            for signum in handled:
                signal.signal(signum, self._on_signal)
            first = self._spawn()
            self.current = first
            if not self._wait_ready(first):
                stops = [s for s in self._signals if s != signal.SIGHUP]
                message = self._not_ready(first)
                self._end([first])
                if stops:
                    return 128 + stops[0]
                raise ActivationError(message)
            return self._supervise()
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for signum, handler in old_handlers.items():
                signal.signal(signum, handler)
            self._end(list(self.children.values()))
            self.close()

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals.append(signum)

    # -- children ---------------------------------------------------------------------
    def _spawn(self) -> _Child:
        """fork, move the sockets to 3.., set LISTEN_PID to our own pid, exec."""
        count = len(self.sockets)
        fds = [s.fileno() for s in self.sockets]
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:  # the child: no Python-level cleanup may run here
            try:
                os.close(err_r)
                die_with_parent()
                for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGPIPE):
                    signal.signal(signum, signal.SIG_DFL)
                signal.set_wakeup_fd(-1)
                # Above 3+count first, so that dup2 onto 3.. never meets a source fd
                # (dup2(fd, fd) would keep its close-on-exec flag).
                high = [
                    fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, SD_LISTEN_FDS_START + count)
                    for fd in fds
                ]
                for i, fd in enumerate(high):
                    os.dup2(fd, SD_LISTEN_FDS_START + i, inheritable=True)
                env = listen_environment(
                    os.environ, count, self.names, os.getpid(), self.notify_path
                )
                os.execve(self.program or self.argv[0], self.argv, env)
            except OSError as exc:
                with suppress(OSError):
                    os.write(err_w, str(exc.errno or 0).encode())
            finally:
                os._exit(127)
        os.close(err_w)
        try:
            failed = os.read(err_r, 32)
        finally:
            os.close(err_r)
        if failed:
            os.waitpid(pid, 0)
            code = int(failed)
            raise ActivationError(
                f"cannot run {self.argv[0]!r}: {os.strerror(code).lower()} "
                f"({errno.errorcode.get(code, code)})"
            )
        child = _Child(pid, os.pidfd_open(pid), time.monotonic(), ready=self.ready_timeout is None)
        self.children[pid] = child
        if self.verbose:
            self.log(f"started pid {pid}: {' '.join(self.argv)}")
        return child

    def _reap(self, child: _Child) -> None:
        if child.status is not None:
            return
        try:
            _pid, wait_status = os.waitpid(child.pid, 0)
        except ChildProcessError:
            wait_status = 0
        child.status = _exit_status(wait_status)
        with suppress(OSError):
            os.close(child.pidfd)
        self.children.pop(child.pid, None)

    def _signal(self, child: _Child, signum: int) -> None:
        if child.status is None:
            with suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(child.pidfd, signum)

    def _end(self, children: list[_Child]) -> None:
        """SIGTERM, a grace period, SIGKILL; then reap."""
        live = [c for c in children if c.status is None]
        for child in live:
            self._signal(child, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for child in live:
            poller = select.poll()
            poller.register(child.pidfd, select.POLLIN)
            poller.poll(max(0, int((deadline - time.monotonic()) * 1000)))
            self._signal(child, signal.SIGKILL)
            self._reap(child)

    # -- waiting ----------------------------------------------------------------------
    def _poll(self, timeout: float | None) -> list[tuple[int, int]]:
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        poller.register(self._notify.fileno(), select.POLLIN)
        for child in self.children.values():
            poller.register(child.pidfd, select.POLLIN)
        ms = None if timeout is None else max(0, int(timeout * 1000))
        return poller.poll(ms)

    def _step(self, timeout: float | None) -> None:
        """One round: wait for a signal, a notification or a child's exit, handle it."""
        self._poll(timeout)
        with suppress(BlockingIOError):
            while os.read(self._wake_r, 512):
                pass
        self._read_notifications()
        for child in list(self.children.values()):
            poller = select.poll()
            poller.register(child.pidfd, select.POLLIN)
            if poller.poll(0):
                self._reap(child)
                if self.verbose or child is not self.current:
                    self.log(f"pid {child.pid} exited with status {child.status}")

    def _wait_ready(self, child: _Child) -> bool:
        if child.ready:
            return True
        assert self.ready_timeout is not None
        deadline = child.started + self.ready_timeout
        while not child.ready and child.status is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._step(left)
            if self._signals and any(s != signal.SIGHUP for s in self._signals):
                return False  # a stop while waiting
        return child.ready

    def _not_ready(self, child: _Child) -> str:
        if child.status is not None:
            return (
                f"{self.argv[0]} (pid {child.pid}) exited with status {child.status} "
                "before it was ready"
            )
        if self._signals:
            return f"stopped before {self.argv[0]} (pid {child.pid}) was ready"
        return (
            f"{self.argv[0]} (pid {child.pid}) did not send READY=1 to NOTIFY_SOCKET within "
            f"{self.ready_timeout:g} s; it was stopped (does it speak sd_notify? without "
            "--ready-timeout a started child counts as ready)"
        )

    def _read_notifications(self) -> None:
        while True:
            try:
                got = recv_message(self._notify, 4096, 0)
            except PassError:
                continue  # a sender that tried to pass fds: dropped, closed, ignored
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    return
                raise
            sender = got.credentials.pid if got.credentials is not None else None
            child = self._child_of(sender)
            if child is None and got.credentials is not None and _gone(sender):
                # A helper like systemd-notify may be gone (reaped) before we read its
                # message, so its parent cannot be looked up. Only our own user can
                # reach the socket (a 0700 directory): give it to the newest child
                # that is not ready yet.
                waiting = [c for c in self.children.values() if not c.ready]
                if waiting and got.credentials.uid in (os.geteuid(), 0):
                    child = max(waiting, key=lambda c: c.started)
            if child is None:
                if self.verbose:
                    self.log(f"ignored a notification from pid {sender}, not our child")
                continue
            fields = parse_notify(got.data)
            child.fields.update(fields)
            if fields.get("READY") == "1" and not child.ready:
                child.ready = True
                if self.verbose:
                    self.log(f"pid {child.pid} is ready")

    def _child_of(self, pid: int | None) -> _Child | None:
        """Our child `pid`, or the child that `pid` descends from (a shell script's
        systemd-notify), as NotifyAccess=all would allow within the service."""
        for _ in range(64):
            if pid is None or pid <= 1:
                return None
            if pid in self.children:
                return self.children[pid]
            pid = _parent_of(pid)
        return None

    # -- supervising ------------------------------------------------------------------
    def _supervise(self) -> int:
        while True:
            current = self.current
            assert current is not None
            if current.status is not None:
                # The service ended (by itself or after a stop we passed on): let the
                # ones still draining finish, then exit with its status.
                for child in list(self.children.values()):
                    self._wait_exit(child)
                return current.status
            while self._signals:
                self._handle(self._signals.pop(0))
            if self.current is not current:
                continue
            self._step(None)

    def _wait_exit(self, child: _Child) -> None:
        poller = select.poll()
        poller.register(child.pidfd, select.POLLIN)
        while not poller.poll(100):
            while self._signals:
                signum = self._signals.pop(0)
                if signum != signal.SIGHUP:
                    self._signal(child, signum)
        self._reap(child)

    def _handle(self, signum: int) -> None:
        if signum == signal.SIGHUP and self._stopping is None:
            self._reload()
            return
        if signum == signal.SIGHUP:
            return
        self._stopping = signum
        for child in list(self.children.values()):
            self._signal(child, signum)

    def _reload(self) -> None:
        old = self.current
        assert old is not None
        try:
            new = self._spawn()
        except ActivationError as err:
            self.log(f"reload failed: {err}; the old child (pid {old.pid}) keeps serving")
            return
        if not self._wait_ready(new):
            message = self._not_ready(new)
            self._end([new])
            self.log(f"reload failed: {message}; the old child (pid {old.pid}) keeps serving")
            return
        self.reloads += 1
        self.current = new
        old.retiring = True
        self.log(f"reloaded: pid {new.pid} serves; pid {old.pid} was sent SIGTERM")
        self._signal(old, signal.SIGTERM)


def _gone(pid: int | None) -> bool:
    return pid is not None and pid > 0 and not os.path.exists(f"/proc/{pid}")


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command may hold spaces and parentheses: the fields start after the last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    return int(fields[1]) if len(fields) > 1 else None
