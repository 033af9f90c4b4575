"""Fixtures: short socket directories, and real peers that are stopped by PID.

`peers` starts programs nobody here wrote (socat, nc, curl, redis-server, tshark) and
udskit itself as a subprocess, waits until their socket is really there (from
/proc/net/unix, without connecting, so servers see no stray connection), and kills
each one by PID at teardown, also when the test fails.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

import pytest
from hypothesis import HealthCheck, settings

from udskit.address import UnixAddress, parse_address
from udskit.inspect.owners import read_proc_net_unix
from udskit.probe import _wanted_names as probe_names
from udskit.probe import is_bound
from udskit.umask import current_umask

# Hypothesis fails an example that takes over 200 ms, and a health check fails slow data
# generation: on a busy 2-core machine both happen with correct code
# (test_every_path_round_trips failed so in a soak). Timing never decides a test here.
settings.register_profile(
    "udskit", deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=False
)
settings.load_profile("udskit")

# A suite started as a background job of a non-interactive shell (a soak script, `make
# test &`) inherits SIGINT ignored, and Python leaves it so: pthread_kill(SIGINT) then
# did nothing and the in-process Ctrl-C tests failed with "DID NOT RAISE" (2 of 2 soak
# runs), never when run by hand. The CLI resets it the same way (udskit.cli.run).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

ROOT = Path(__file__).resolve().parent.parent
UDSKIT = [sys.executable, "-m", "udskit"]


def wait_until(predicate: object, timeout: float = 10.0, what: str = "condition") -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing uses right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def tcp_listening(port: int) -> bool:
    """Does a TCP socket listen on `port` (from /proc/net/tcp, without connecting)?"""
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return any(r[1].endswith(f":{port:04X}") and r[3] == "0A" for r in rows)


def pids_whose_argv(match: Callable[[list[bytes]], bool]) -> list[int]:
    """Pids of the processes whose argv (from /proc/PID/cmdline, as bytes) `match`
    accepts: how a test finds a command that udskit started and must have stopped."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                raw = f.read()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if match(raw.removesuffix(b"\0").split(b"\0") if raw else []):
            found.append(int(entry))
    return found


def threads_report(pid: int) -> str:
    """What each thread of a process that should have ended is doing: its state, the
    syscall it sleeps in, the signals it blocks and has pending (one line each)."""
    lines = []
    try:
        tids = sorted(os.listdir(f"/proc/{pid}/task"), key=int)
    except OSError as exc:
        return f"pid {pid}: {exc.strerror}"
    for tid in tids:
        base = f"/proc/{pid}/task/{tid}"
        try:
            with open(f"{base}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            with open(f"{base}/syscall") as f:
                call = f.read().split()
        except OSError:
            continue
        show = ("Name", "State", "SigPnd", "ShdPnd", "SigBlk", "SigCgt")
        facts = " ".join(f"{k}={fields.get(k, '?').strip()}" for k in show)
        lines.append(f"  tid {tid}: {facts} syscall={' '.join(call[:3]) or '?'}")
    # The Python stacks too, where py-spy happens to be installed (not a test peer).
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=os.path.dirname(sys.executable))
    if spy is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(
                [spy, "dump", "--pid", str(pid)],
                check=False,
                capture_output=True,
                text=True,
                timeout=20,
            )
            lines.append(done.stdout + done.stderr)
    return "\n".join(lines)


def ready(address: UnixAddress) -> bool:
    """Can a client use `address` now? A datagram socket once it is bound; a stream or
    seqpacket one only once it listens: its file appears at bind(), and a connect()
    before listen() is refused (a test that waited for the file alone failed so)."""
    if not is_bound(address):
        return False
    if is_bound(address, listening=True):
        return True
    wanted = probe_names(address)
    return any(e.name in wanted and e.type == socket.SOCK_DGRAM for e in read_proc_net_unix())


#: socat's -t: after EOF on one side it gives the other direction this long, then quits
#: (0.5 s by default). A reply that comes later on a busy machine was lost and the test
#: failed (test_decode_as_sets_the_server_port). Servers here close after their reply,
#: which ends socat at once; the bound only matters when something is broken.
SOCAT_CLOSING_SECONDS = "30"


def as_other_user(args: list[str]) -> list[str]:
    """`setpriv ... sys.executable ...` with our interpreter replaced by one that any
    user can run (`nobody_python`): the checkout's .venv may sit where other users
    cannot enter, such as under /root (0700) or in a soak's private clone."""
    if not args or os.path.basename(args[0]) != "setpriv" or sys.executable not in args:
        return args
    at = args.index(sys.executable)
    return [*args[:at], nobody_python(), *args[at + 1 :]]


def patient_socat(args: list[str]) -> list[str]:
    """`args` with `-t SOCAT_CLOSING_SECONDS` for a socat that was given no -t."""
    for i, arg in enumerate(args):
        if os.path.basename(arg) == "socat":
            if "-t" not in args[i + 1 :]:
                return [*args[: i + 1], "-t", SOCAT_CLOSING_SECONDS, *args[i + 1 :]]
            break
    return args


class ExitOf(int):
    """An exit status that says, when an assertion about it fails, which program it
    is and what that program wrote on stderr (a bare `assert -2 == 130` gave no clue)."""

    peer: Peer

    def __new__(cls, status: int, peer: Peer) -> ExitOf:
        value = super().__new__(cls, status)
        value.peer = peer
        return value

    def __repr__(self) -> str:
        err = self.peer.unread_stderr().strip()
        argv = " ".join(self.peer.argv[-6:])
        how = f"killed by {signal.Signals(-self).name}, " if self < 0 else ""
        return f"{int(self)} ({how}exit of ...{argv}; stderr: {err or 'nothing'})"


class Peer:
    """A running program; teardown stops it by PID (SIGKILL to its process group, unless
    it was started with its own `teardown_signal`)."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        argv: Sequence[str],
        teardown_signal: int = signal.SIGKILL,
    ) -> None:
        self.proc = proc
        self.argv = list(argv)
        self.teardown_signal = teardown_signal
        self.stdout_data = b""
        self.stderr_data = b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send_signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def wait(self, timeout: float = 10.0) -> int:
        """Its exit status; in a failed assertion it shows what the program said on
        stderr (read only then, so a test may still read the pipe itself). One that
        outlives `timeout` fails with what each of its threads was doing."""
        try:
            return ExitOf(self.proc.wait(timeout), self)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{' '.join(self.argv[-6:])} still runs after {timeout}s:\n"
                f"{threads_report(self.proc.pid)}"
            ) from None

    def unread_stderr(self) -> str:
        """What is left in its stderr pipe, without waiting for a grandchild that
        may hold the pipe open."""
        pipe = self.proc.stderr
        if pipe is None or pipe.closed:
            return self.stderr_data.decode(errors="replace")
        os.set_blocking(pipe.fileno(), False)
        chunks = [self.stderr_data]
        with contextlib.suppress(OSError, TypeError):
            while chunk := pipe.read(65536):
                chunks.append(chunk)
        self.stderr_data = b"".join(chunks)
        return self.stderr_data.decode(errors="replace")

    def stop(self, signum: int = signal.SIGKILL) -> tuple[bytes, bytes]:
        """Stop it (SIGKILL to its process group unless told otherwise) and return what
        it printed on stdout and stderr."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                if signum == signal.SIGKILL:
                    os.killpg(self.proc.pid, signum)
                else:
                    os.kill(self.proc.pid, signum)
        try:
            out, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            out, err = self.proc.communicate(timeout=10)
        except ValueError:  # already collected
            out, err = b"", b""
        self.stdout_data += out or b""
        self.stderr_data += err or b""
        return self.stdout_data, self.stderr_data

    def __enter__(self) -> Peer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


NOBODY_RUNTIME = (
    "udskit_start",
    "udskit",
    "rich",
    "pygments",
    "markdown_it",
    "mdurl",
    "jeepney",  # a test's D-Bus client run as nobody
)
_nobody: dict[str, str] = {}


def nobody_python() -> str:
    """An interpreter that user nobody can run with udskit importable, made once per
    session in a world-readable temporary directory: a minimal venv (pyvenv.cfg and a
    link to a system interpreter nobody may execute) holding copies of udskit and its
    runtime dependencies. Skips the test, with the reason, when no interpreter works."""
    if "python" in _nobody:
        return _nobody["python"]
    if "skip" in _nobody:
        pytest.skip(_nobody["skip"])
    import importlib.util

    top = Path(tempfile.mkdtemp(prefix="udsk-nobody-", dir="/tmp"))
    _nobody["dir"] = str(top)
    site = top / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    site.mkdir(parents=True)
    for name in NOBODY_RUNTIME:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            continue
        origin = Path(spec.origin)
        if origin.name == "__init__.py":
            shutil.copytree(
                origin.parent, site / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:  # a top-level module
            shutil.copy2(origin, site / origin.name)
    (top / "bin").mkdir()
    tried: list[str] = []
    candidates = [
        shutil.which(f"python{sys.version_info[0]}.{sys.version_info[1]}", path="/usr/bin"),
        os.path.realpath(getattr(sys, "_base_executable", sys.executable)),
    ]
    for candidate in dict.fromkeys(c for c in candidates if c):
        link = top / "bin" / "python"
        link.unlink(missing_ok=True)
        link.symlink_to(candidate)
        (top / "pyvenv.cfg").write_text(f"home = {os.path.dirname(candidate)}\n")
        subprocess.run(["chmod", "-R", "a+rX", str(top)], check=True)
        check = subprocess.run(
            [
                "setpriv",
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                str(link),
                "-c",
                "import udskit.cli, rich.table",
            ],
            check=False,
            capture_output=True,
        )
        if check.returncode == 0:
            _nobody["python"] = str(link)
            return str(link)
        tried.append(f"{candidate}: {check.stderr.decode(errors='replace').strip()[-200:]}")
    _nobody["skip"] = "no interpreter that user nobody may run: " + "; ".join(tried)
    pytest.skip(_nobody["skip"])


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if "dir" in _nobody:
        shutil.rmtree(_nobody["dir"], ignore_errors=True)


class Peers:
    def __init__(self) -> None:
        self._started: list[Peer] = []

    @staticmethod
    def require(*programs: str) -> None:
        missing = [p for p in programs if shutil.which(p) is None]
        if missing:
            pytest.fail(f"test peers missing: {' '.join(missing)} (run `make peers` as root)")

    def start(
        self,
        *argv: str | os.PathLike[str],
        wait_for: str | os.PathLike[str] | None = None,
        listening: bool | None = None,
        stdin: int | IO[bytes] | None = subprocess.DEVNULL,
        stdout: int | IO[bytes] | None = subprocess.PIPE,
        stderr: int | IO[bytes] | None = subprocess.PIPE,
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        timeout: float = 10.0,
        teardown_signal: int = signal.SIGKILL,
    ) -> Peer:
        """Start a program in its own session; teardown stops it with `teardown_signal`
        (then SIGKILL to its group after 10 s). A server that must clean up after itself
        gets its own stop signal: a SIGKILLed postmaster leaves its shared memory behind."""
        args = as_other_user(patient_socat([os.fspath(a) for a in argv]))
        if args[0] != sys.executable:
            self.require(args[0])
        proc = subprocess.Popen(
            args,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        peer = Peer(proc, args, teardown_signal)
        self._started.append(peer)
        if wait_for is not None:
            address = parse_address(os.fspath(wait_for))

            def up() -> bool:
                if proc.poll() is not None:
                    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                    raise AssertionError(f"{args} exited with {proc.returncode}: {err}")
                if listening is not None:
                    return is_bound(address, listening=listening)
                return ready(address)

            wait_until(up, timeout, f"{address} from {args[0]}")
        return peer

    def postgres(self, *argv: str | os.PathLike[str], **kwargs: object) -> Peer:
        """Start a PostgreSQL server (argv after the program, perhaps behind setpriv). Its
        teardown is a fast shutdown (SIGINT): killed, the postmaster leaves its segments
        in /dev/shm and in SysV shared memory, and each suite run left two of each."""
        return self.start(*argv, teardown_signal=signal.SIGINT, **kwargs)  # type: ignore[arg-type]

    def udskit(self, *args: str | os.PathLike[str], **kwargs: object) -> Peer:
        return self.start(*UDSKIT, *args, **kwargs)  # type: ignore[arg-type]

    def run(
        self,
        *argv: str | os.PathLike[str],
        input: bytes | None = None,
        timeout: float = 60.0,
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a program to completion (killed by PID if it outlives `timeout`)."""
        args = as_other_user(patient_socat([os.fspath(a) for a in argv]))
        if args[0] not in (sys.executable, "setpriv"):
            self.require(args[0])
        with subprocess.Popen(
            args,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            start_new_session=True,
        ) as proc:
            try:
                out, err = proc.communicate(input, timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                out, err = proc.communicate()
                raise AssertionError(f"{args} did not finish in {timeout}s: {err!r}") from None
            return subprocess.CompletedProcess(args, proc.returncode, out, err)

    def udskit_run(
        self, *args: str | os.PathLike[str], **kwargs: object
    ) -> subprocess.CompletedProcess[bytes]:
        return self.run(*UDSKIT, *args, **kwargs)  # type: ignore[arg-type]

    @staticmethod
    def as_nobody(*argv: str | os.PathLike[str]) -> list[str]:
        """The argv to run a program as user nobody (for permission checks as root).

        Our own interpreter becomes one that nobody can run (`nobody_python`), since
        the checkout and its .venv may sit where nobody cannot enter (/root is 0700)."""
        args = [os.fspath(a) for a in argv]
        if args and args[0] == sys.executable:
            args[0] = nobody_python()
        return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *args]

    def stop_all(self) -> None:
        for peer in reversed(self._started):
            peer.stop(peer.teardown_signal)


@pytest.fixture(autouse=True)
def process_state_is_left_as_found() -> Iterator[None]:
    """Every test leaves the stop signals' handlers and mask, and the umask, as it
    found them. A handler left behind by an in-process run (one that stops a loop
    instead of raising) made a later test's Ctrl-C do nothing; a umask of 0777 left by
    an interrupted bind made later tests' directories mode 0000, seen as EACCES for
    nobody and postgres. This names the test that left it, not its victim."""
    stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    before = {s: signal.getsignal(s) for s in stops}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    umask = current_umask()
    yield
    after = {s: signal.getsignal(s) for s in stops}
    for signum, handler in before.items():
        signal.signal(signum, handler)
    changed = [signal.Signals(s).name for s in stops if after[s] is not before[s]]
    assert not changed, f"this test left its own handler for {', '.join(changed)}"
    left_mask = signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    assert left_mask == mask, f"this test left signals blocked: {sorted(left_mask - mask)}"
    left_umask = current_umask()
    os.umask(umask)
    assert left_umask == umask, f"this test left umask {left_umask:04o} (was {umask:04o})"


@pytest.fixture
def peers() -> Iterator[Peers]:
    p = Peers()
    try:
        yield p
    finally:
        p.stop_all()


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short, world-traversable directory for socket files (sun_path is 108 bytes).

    pytest's tmp_path is long and private (0700); permission tests need a directory
    that user nobody can enter.
    """
    path = Path(tempfile.mkdtemp(prefix="udsk-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def abstract_name(request: pytest.FixtureRequest) -> str:
    """A unique abstract name for this test (abstract names are machine-wide)."""
    safe = "".join(c if c.isalnum() else "-" for c in request.node.name)[:48]
    return f"@udskit-test-{os.getpid()}-{safe}"


def postgres_program(name: str) -> str:
    """The path of one of PostgreSQL's programs (Debian keeps them out of PATH)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name) or ""]
    if not found[-1]:
        pytest.fail(f"PostgreSQL's {name} is missing (run `make peers` as root)")
    return found[-1]
