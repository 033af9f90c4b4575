"""I/O: run a bench plan: one fresh pair of processes per trial, medians per cell.

Each trial makes a transport's two ends, forks, and leaves one end to each process:
this process measures (it sends the pings, or counts what arrives), the child is
the peer (it echoes, or sends). os.fork rather than a new interpreter: the peer is
ready in a millisecond and needs nothing but the end it inherits. The child runs only
the peer loop and leaves with os._exit, so nothing of the parent (buffered output,
atexit handlers, the progress bar) runs twice.

Nothing is left behind: the child dies with us (PR_SET_PDEATHSIG), is killed by PID
if a trial fails or we are interrupted, and the directory for socket files is
removed at the end.
"""

from __future__ import annotations

import mmap
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Final

from udskit.bench.machine import machine_facts
from udskit.bench.patterns import StopFlag, blast, echo, pingpong, sink
from udskit.bench.plan import BenchPlan, Trial, count_trials, format_size, trial_order
from udskit.bench.results import (
    BenchFailed,
    BenchReport,
    Pattern,
    Skipped,
    Transport,
    TrialResult,
)
from udskit.bench.stats import summarise, with_tcp_ratios
from udskit.bench.transports import End, default_sndbuf, message_caps, open_pair
from udskit.errors import UdskitError, UsageError
from udskit.signals import die_with_parent

#: Seconds any single blocked call may wait for a silent peer before the trial fails.
STALL_SECONDS: Final = 10.0

#: Called before each trial with (trial, how many are done, how many in all).
OnTrial = Callable[[Trial, int, int], None]


def run_bench(
    plan: BenchPlan, *, sockdir: Path | None = None, on_trial: OnTrial | None = None
) -> BenchReport:
    """Run every trial of `plan` and return the report (medians over rounds)."""
    caps = message_caps()
    machine = machine_facts(caps, default_sndbuf())
    skipped = tuple(
        Skipped(t, size, f"over the {cap}-byte message limit of {t.value} on this machine")
        for t, cap in caps.items()
        if t in plan.transports
        for size in plan.sizes
        if size > cap
    )
    total = count_trials(plan, caps)
    cells: dict[tuple[Pattern, int, Transport], list[TrialResult]] = {}
    with _socket_dir(sockdir) as directory, _pinned(plan.pin):
        for done, trial in enumerate(trial_order(plan, caps)):
            if on_trial is not None:
                on_trial(trial, done, total)
            result = run_trial(trial, plan.trial_seconds, directory, plan.pin)
            cells.setdefault((trial.pattern, trial.size, trial.transport), []).append(result)
    rows = [
        summarise(cells[key])
        for pattern in plan.patterns
        for size in plan.sizes
        for transport in plan.transports
        if (key := (pattern, size, transport)) in cells
    ]
    return BenchReport(machine, plan.settings(), tuple(with_tcp_ratios(rows)), skipped)


@contextmanager
def _socket_dir(given: Path | None) -> Iterator[Path]:
    if given is not None:
        if not given.is_dir():
            raise UsageError(f"--dir {given}: no such directory; create it or leave --dir out")
        yield given
        return
    # Short, under /tmp: socket paths must fit in sun_path's 108 bytes.
    path = Path(tempfile.mkdtemp(prefix="udskit-bench-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def _pinned(pin: tuple[int, int] | None) -> Iterator[None]:
    if pin is None:
        yield
        return
    before = os.sched_getaffinity(0)
    _set_affinity(pin[0])
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _set_affinity(cpu: int) -> None:
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError as exc:
        usable = sorted(os.sched_getaffinity(0))
        raise UsageError(
            f"--pin: cannot run on CPU {cpu} ({exc.strerror}); usable: {usable}"
        ) from None


def run_trial(
    trial: Trial, seconds: float, sockdir: Path, pin: tuple[int, int] | None = None
) -> TrialResult:
    """One trial in a fresh pair of processes (this one measures, a forked child is the peer)."""
    ours, theirs = open_pair(trial.transport, sockdir, STALL_SECONDS + seconds)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    stop = mmap.mmap(-1, 1)  # shared with the child: the measuring side says when to stop
    try:
        pid = os.fork()
    except BaseException:
        for fd in (err_r, err_w):
            os.close(fd)
        ours.close()
        theirs.close()
        raise
    if pid == 0:  # pragma: no cover - the child never returns
        os.close(err_r)
        ours.close()
        _child(trial, seconds, theirs, err_w, pin, stop)
    os.close(err_w)
    theirs.close()
    # "done": the peer is leaving on its own; "failed": already reaped; anything else
    # (Ctrl-C, SIGTERM): kill it by PID at once.
    outcome = "interrupted"
    try:
        try:
            result = _measure(trial, seconds, ours, stop)
        except (OSError, BenchFailed) as exc:
            if isinstance(exc, UdskitError) and not isinstance(exc, BenchFailed):
                raise
            # Our end closed, a healthy peer ends too; give it a moment to say what broke.
            ours.close()
            _reap(pid, grace=1.0)
            outcome = "failed"
            raise BenchFailed(_failure(trial, exc, _read_all(err_r))) from None
        outcome = "done"
        return result
    finally:
        ours.close()
        if outcome != "failed":
            _reap(pid, grace=5.0 if outcome == "done" else 0.0)
        os.close(err_r)
        stop.close()


def _measure(trial: Trial, seconds: float, end: End, stop: StopFlag) -> TrialResult:
    keeps = trial.transport.keeps_boundaries
    if trial.pattern is Pattern.PINGPONG:
        samples = pingpong(end, trial.size, seconds, keeps)
        return TrialResult(trial.transport, trial.pattern, trial.size, samples_ns=tuple(samples))
    moved, elapsed = sink(end, trial.size, seconds, keeps, stop)
    return TrialResult(
        trial.transport, trial.pattern, trial.size, bytes_moved=moved, elapsed_ns=elapsed
    )


def _child(
    trial: Trial,
    seconds: float,
    end: End,
    err_w: int,
    pin: tuple[int, int] | None,
    stop: StopFlag,
) -> None:
    """The peer process: run the peer loop, report any failure on `err_w`, never return."""
    code = 1
    try:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        # Killed with the measuring process, even while asleep in recv on a
        # datagram socket, which sees no end of file.
        die_with_parent()
        if pin is not None:
            os.sched_setaffinity(0, {pin[1]})
        keeps = trial.transport.keeps_boundaries
        if trial.pattern is Pattern.PINGPONG:
            echo(end, trial.size, keeps)
        else:
            blast(end, trial.size, stop, STALL_SECONDS + seconds)
        end.close()
        code = 0
    except BaseException as exc:
        with suppress(OSError):
            os.write(err_w, f"{type(exc).__name__}: {exc}".encode()[:1000])
    finally:
        os._exit(code)


def _reap(pid: int, *, grace: float) -> None:
    """Wait for the child (it leaves once its end sees ours close); after `grace`
    seconds, or at once if we are being interrupted, kill it by PID."""
    deadline = time.monotonic() + grace
    try:
        while not os.waitpid(pid, os.WNOHANG)[0]:
            if time.monotonic() > deadline:
                break
            time.sleep(0.0005)
        else:
            return
    except BaseException:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def _read_all(fd: int) -> str:
    """What the child wrote on its error pipe (its end is closed once it has exited)."""
    chunks = []
    with suppress(OSError):
        while chunk := os.read(fd, 1000):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")[:1000]


def _failure(trial: Trial, exc: BaseException, child: str) -> str:
    what = f"{trial.transport.value} {trial.pattern.value} at {format_size(trial.size)}"
    detail = str(exc) or type(exc).__name__
    peer = f"; the peer said: {child}" if child else ""
    return f"bench trial {what} failed: {detail}{peer}; is the machine short of memory or fds?"
