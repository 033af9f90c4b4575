"""Ctrl-C at any moment of a command's first 100 ms (counted from its first line of udskit):
status 130, no traceback, nothing left behind (no file, no moved socket, no process of
its group)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ROOT, Peers, threads_report
from tests.io.test_dump import ECHO_SERVER

UDSKIT_SCRIPT = Path(sys.executable).parent / "udskit"
POINTS = 10


def _caught(pid: int) -> int:
    """The signals `pid` has handlers for (SigCgt of /proc/PID/status); 0 once it ended."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"SigCgt:"):
                    return int(line.split()[1], 16)
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


#: udskit_start handles SIGTERM; the interpreter by itself leaves it at the default.
_SIGTERM_BIT = 1 << (signal.SIGTERM - 1)


def ctrl_c_after(argv: list[str], delay: float, cwd: Path) -> tuple[int, str]:
    """Start the command, wait until its first line of udskit has run, then Ctrl-C it
    `delay` seconds later.

    Before that line a Ctrl-C is the interpreter's to handle (its start-up, site, the
    console script's own imports), so the points are counted from the moment the
    kernel shows udskit_start's SIGTERM handler, not from the spawn: a start-up made
    slow by a busy machine then moves the points with it instead of swallowing them.
    """
    proc = subprocess.Popen(
        [str(UDSKIT_SCRIPT), *argv],
        stdin=subprocess.PIPE,  # kept open: `connect` runs until it is interrupted
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        cwd=cwd,
    )
    deadline = time.monotonic() + 30
    while not _caught(proc.pid) & _SIGTERM_BIT and proc.poll() is None:
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise AssertionError(f"{argv}: udskit_start never ran")
        time.sleep(0.0005)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    try:
        _out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        doing = threads_report(proc.pid)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(
            f"{argv} did not stop on Ctrl-C after {delay * 1000:.0f} ms:\n{doing}"
        ) from None
    try:  # nothing of its process group may outlive it (writers, peers, children)
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        pass
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"{argv}: a process of its group outlived it")
    return proc.returncode, err.decode(errors="replace")


#: Commands that end by themselves, possibly before a late Ctrl-C on a busy machine.
FINITE = frozenset({"send", "ls", "doctor"})

COMMANDS: dict[str, Callable[[Path, Path], list[str]]] = {
    "listen": lambda d, _s: ["listen", str(d / "new.sock"), "--echo"],
    "connect": lambda _d, s: ["connect", str(s)],
    "send": lambda _d, s: ["send", str(s), "a", "--timeout", "20"],
    "relay": lambda d, s: ["relay", f"unix-listen:{d / 'front.sock'}", f"unix:{s}"],
    "dump": lambda d, s: ["dump", "--engine", "proxy", str(s), "-w", str(d / "c.pcapng")],
    "ls": lambda _d, _s: ["ls", "-p"],
    "doctor": lambda _d, s: ["doctor", str(s)],
    "bench": lambda d, _s: ["bench", "--quick", "-t", "unix-stream", "--dir", str(d)],
    "activate": lambda d, _s: ["activate", "-l", str(d / "act.sock"), "--", "sleep", "30"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_ctrl_c_in_the_first_100_ms(peers: Peers, sockdir: Path, command: str) -> None:
    server = sockdir / "server.sock"
    peers.start(sys.executable, "-c", ECHO_SERVER, server, "stream", wait_for=server)
    inode = os.lstat(server).st_ino
    argv = COMMANDS[command](sockdir, server)
    if command == "bench" and "--dir" not in _help(command):
        argv = argv[:-2]
    for point in range(POINTS):
        delay = 0.1 * point / (POINTS - 1)
        status, err = ctrl_c_after(argv, delay, sockdir)
        at = f"{command} at {delay * 1000:.0f} ms after udskit_start"
        assert "Traceback" not in err, f"{at}: {err}"
        done = status == 0 and command in FINITE  # it finished before the Ctrl-C came
        assert done or status == 130, f"{at}: status {status}: {err}"
        assert len(err.splitlines()) <= 2, f"{at}: {err}"
        left = sorted(p.name for p in sockdir.iterdir() if p.name not in ("server.sock",))
        assert [n for n in left if n.endswith(".sock") or n.startswith(".")] == [], (at, left)
        assert os.lstat(server).st_ino == inode, f"{at}: the dumped socket was not put back"
        for name in left:
            (sockdir / name).unlink()  # a capture file the dump wrote is fine: start clean


def _help(command: str) -> str:
    shown = subprocess.run(
        [str(UDSKIT_SCRIPT), command, "--help"], capture_output=True, check=False, cwd=ROOT
    )
    return shown.stdout.decode()


#: The command line around a command that creates a class whose `__set_name__` meets the
#: stop signal, as `udskit listen` did when a SIGINT came during a lazy import of a module
#: with a dataclass `field()`. The handler runs right after raise_signal returns.
WRAPPED_STOP = """\
import signal, sys
import udskit.cli as cli

def main():
    class Descriptor:
        def __set_name__(self, owner, name):
            signal.raise_signal(int(sys.argv[1]))
            print("the stop signal was not handled", file=sys.stderr)

    class Owner:
        attribute = Descriptor()

    return 0

cli.main = main
cli.run()
"""


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_that_python_wraps_in_another_error_still_exits_as_the_stop(
    signum: int, status: int
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", WRAPPED_STOP, str(int(signum))],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stderr.decode()) == (status, "")
