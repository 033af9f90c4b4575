"""Ctrl-C at any moment of a command's first 100 ms: status 130, no traceback, nothing
left behind (no file, no moved socket, no process of its group)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ROOT, Peers
from tests.io.test_dump import ECHO_SERVER

UDSKIT_SCRIPT = Path(sys.executable).parent / "udskit"
POINTS = 10


def interpreter_start() -> float:
    """How long this machine takes, right now, to start Python and run the console
    script's first module (udskit_start), which makes the stop signals quiet: before
    that no code of udskit has run, and a Ctrl-C is the interpreter's to handle (its
    start-up, site and the wrapper's import: about 20 ms on a quiet machine)."""
    runs = []
    for _ in range(3):
        began = time.monotonic()
        subprocess.run([sys.executable, "-c", "import udskit_start"], check=True)
        runs.append(time.monotonic() - began)
    return sorted(runs)[1]


def ctrl_c_after(argv: list[str], delay: float, cwd: Path) -> tuple[int, str]:
    proc = subprocess.Popen(
        [str(UDSKIT_SCRIPT), *argv],
        stdin=subprocess.PIPE,  # kept open: `connect` runs until it is interrupted
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        cwd=cwd,
    )
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    try:
        _out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"{argv} did not stop on Ctrl-C after {delay * 1000:.0f} ms") from None
    try:  # nothing of its process group may outlive it (writers, peers, children)
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        pass
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"{argv}: a process of its group outlived it")
    return proc.returncode, err.decode(errors="replace")


def before_udskit(status: int, err: str) -> bool:
    """Did the Ctrl-C land before udskit's first line (udskit_start) ran? Then Python
    reports it its own way: killed by the signal, or a traceback in which no frame is
    in udskit's own source (site, the import system, the pip-made wrapper)."""
    if status == -signal.SIGINT and not err:
        return True
    frames = re.findall(r'File "([^"]+)"', err)
    source = str(ROOT / "src") + os.sep  # not the wrapper, which may sit under a .../udskit/
    ours = [f for f in frames if f.startswith(source)]
    return "Traceback" in err and err.rstrip().endswith("KeyboardInterrupt") and not ours


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
    start = interpreter_start()
    judged = 0
    for point in range(POINTS):
        delay = start + (0.1 - start) * point / (POINTS - 1) if start < 0.1 else start
        status, err = ctrl_c_after(argv, delay, sockdir)
        at = f"{command} at {delay * 1000:.0f} ms"
        if before_udskit(status, err):
            # It landed in the interpreter's own start-up or the console-script wrapper's
            # import (a busy moment made them longer than measured), before the first
            # line of udskit ran: not ours to judge.
            continue
        judged += 1
        assert "Traceback" not in err, f"{at}: {err}"
        done = status == 0 and command in FINITE  # it finished before the Ctrl-C came
        assert done or status in (130, -signal.SIGINT), f"{at}: status {status}: {err}"
        assert len(err.splitlines()) <= 2, f"{at}: {err}"
        left = sorted(p.name for p in sockdir.iterdir() if p.name not in ("server.sock",))
        assert [n for n in left if n.endswith(".sock") or n.startswith(".")] == [], (at, left)
        assert os.lstat(server).st_ino == inode, f"{at}: the dumped socket was not put back"
        for name in left:
            (sockdir / name).unlink()  # a capture file the dump wrote is fine: start clean
    assert judged >= POINTS // 2, f"only {judged} of {POINTS} points fell after start-up"


def _help(command: str) -> str:
    shown = subprocess.run(
        [str(UDSKIT_SCRIPT), command, "--help"], capture_output=True, check=False, cwd=ROOT
    )
    return shown.stdout.decode()
