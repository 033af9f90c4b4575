"""A stop signal at any line of a server's start must leave no socket file behind.

A Ctrl-C that landed between bind() and the moment the Listener existed left the socket
file of `udskit listen` and `udskit relay` in place with exit status 130 (twice in the
soaks, never by hand). Signals are too quick to aim, so these tests aim for them: a
trace function raises KeyboardInterrupt at the Nth point of udskit's own source where
CPython runs signal handlers, for every N until the start completes, as the handler
would raise it there.
"""

from __future__ import annotations

import contextlib
import dis
import gc
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

import udskit
from tests.conftest import pids_whose_argv
from udskit.endpoints import close_open_listeners, open_listener
from udskit.socktype import SocketType
from udskit.umask import current_umask

# A socket object dropped by the interrupt (an accept() whose result was never stored)
# is closed by its finalizer, with a ResourceWarning; not a leak. Raw descriptors are
# what can leak, and every attempt counts them (`open_fds`).
pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")

SOURCE = str(Path(udskit.__file__).parent) + os.sep
#: The instructions after which CPython 3.11 checks for pending signals, and RESUME.
AFTER = {dis.opmap[name] for name in ("CALL", "CALL_FUNCTION_EX", "JUMP_BACKWARD")}
RESUME = dis.opmap["RESUME"]


class Interrupter:
    """A trace function that raises KeyboardInterrupt at the `at`-th point of udskit's
    own source, run by the main thread, where CPython would run a signal handler: right
    after a call returns, at a backward jump, at a function's start (3.11's eval
    breaker). Where the stop signals are blocked in that thread, it raises at the first
    such point after they are unblocked, as the kernel would deliver the signal then."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.seen = 0
        self.where = ""
        self.main = threading.main_thread()
        self._previous: dict[int, int] = {}

    def __call__(self, frame: FrameType, event: str, _arg: object) -> Any:
        if threading.current_thread() is not self.main:
            return None
        if not frame.f_code.co_filename.startswith(SOURCE):
            return None
        if event == "call":
            if _in_finalizer(frame):
                return None  # a KeyboardInterrupt there is "ignored" by CPython, not ours
            frame.f_trace_opcodes = True
            frame.f_trace_lines = False
            return self
        if event != "opcode":
            return self
        op = frame.f_code.co_code[frame.f_lasti]
        previous = self._previous.get(id(frame))
        self._previous[id(frame)] = op
        if previous not in AFTER and op != RESUME:
            return self
        self.seen += 1
        if not self.at or self.seen < self.at or self.where:
            return self
        if signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []):
            return self  # held here: the kernel delivers it once unblocked
        name = frame.f_code.co_filename[len(SOURCE) :]
        self.where = f"{name}:{frame.f_lineno} ({frame.f_code.co_name})"
        raise KeyboardInterrupt

    def run(self, call: Callable[[], object]) -> BaseException | None:
        sys.settrace(self)
        try:
            call()
        except BaseException as exc:  # what escaped is the finding
            return exc
        finally:
            sys.settrace(None)
        return None


def _in_finalizer(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


def _open_and_close(path: str, sock_type: SocketType, mode: int | None) -> None:
    open_listener(path, sock_type, mode=mode).close()


def open_fds() -> set[str]:
    gc.collect(1)  # the dropped socket objects above (young: a full collection is slow)
    return {
        f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}"
        for fd in os.listdir("/proc/self/fd")
        if os.path.exists(f"/proc/self/fd/{fd}")
    }


def fresh_dir() -> str:
    path = tempfile.mkdtemp(prefix="udsk-stop-", dir="/tmp")
    os.chmod(path, 0o755)
    return path


@pytest.mark.parametrize(
    ("sock_type", "mode"),
    [
        (t, m)
        for t in (SocketType.STREAM, SocketType.DGRAM, SocketType.SEQPACKET)
        for m in (None, 0o600)
    ],
)
def test_open_listener_interrupted_at_every_line_leaves_no_file(
    sock_type: SocketType, mode: int | None
) -> None:
    leftovers = []
    umask = current_umask()
    at = 1
    while True:
        where = fresh_dir()
        path = os.path.join(where, "s.sock")
        stop = Interrupter(at)
        before = open_fds()
        try:
            escaped = stop.run(partial(_open_and_close, path, sock_type, mode))
            if escaped is None:
                break  # the whole start ran: every line has been tried
            assert isinstance(escaped, KeyboardInterrupt), (stop.where, escaped)
            del escaped  # its traceback holds the frames, and what they made, alive
            # What the command line does last, however the command ended.
            close_open_listeners()
            if os.path.lexists(path):
                leftovers.append(stop.where)
            if leaked := open_fds() - before:
                leftovers.append(f"{stop.where}: {sorted(leaked)}")
            if current_umask() != umask:  # the host process would keep it
                leftovers.append(f"{stop.where}: umask {current_umask():o}")
                os.umask(umask)
        finally:
            shutil.rmtree(where, ignore_errors=True)
        at += 1
    assert at > 20, "the trace saw almost nothing of open_listener"
    assert not leftovers, f"a Ctrl-C here left the socket file: {leftovers}"


def _client(path: str, kind: int, done: threading.Event) -> None:
    """One client, so that `listen --count 1` ends by itself once it runs."""
    while not done.is_set():
        try:
            with socket.socket(socket.AF_UNIX, kind) as sock:
                sock.settimeout(5)
                sock.connect(path)
                sock.sendall(b"x")
                sock.recv(1)
            return
        except OSError:
            time.sleep(0.002)


def run_cli(
    argv: list[str],
    stop: Interrupter,
    path: str,
    peer: Callable[[threading.Event], None] | None = None,
) -> tuple[int | str | None, bool]:
    """`udskit.cli.run()` in this process, as the console script runs it, with `peer`
    (by default one client of `path`) in a thread until it is done; its exit status
    (or what escaped it) and whether the socket file `path` is left."""
    from udskit.cli import run

    done = threading.Event()
    if peer is None:
        kind = socket.SOCK_SEQPACKET if "seqpacket" in argv else socket.SOCK_STREAM
        peer = partial(_client, path, kind)
    client = threading.Thread(target=peer, args=(done,), daemon=True)
    client.start()
    saved_argv, saved = sys.argv, {s: signal.getsignal(s) for s in (2, 15, 1)}
    saved_mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    sys.argv = ["udskit", *argv]
    threads_before = set(threading.enumerate())
    try:
        escaped = stop.run(run)
    finally:
        sys.argv = saved_argv
        done.set()
        client.join(10)
        # A --concurrent server's connection threads are daemons that a stop does not
        # wait for past its grace (the process is about to end): let them finish
        # closing, so that what is counted below is what nobody would ever close.
        for thread in set(threading.enumerate()) - threads_before:
            thread.join(10)
        for signum, handler in saved.items():
            signal.signal(signum, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, saved_mask)
    status: int | str | None
    if isinstance(escaped, SystemExit):
        status = escaped.code if isinstance(escaped.code, int) else str(escaped.code)
    else:
        status = f"escaped: {escaped!r}"
    return status, os.path.lexists(path)


#: In the command line of the shell that runs each --exec command: found in /proc, it is
#: a command the interrupted server left running.
EXEC_MARK = f"udskit-stop-anywhere-{os.getpid()}"


def _kill_commands_left() -> list[int]:
    """Commands with the mark that an interrupted run left running, killed by PID."""
    mark = EXEC_MARK.encode()
    left = pids_whose_argv(lambda argv: any(mark in arg for arg in argv))
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


@pytest.mark.parametrize(
    "extra",
    [
        ["--concurrent"],
        ["--type", "seqpacket"],
        # Echoes the client's one byte; the `:` keeps the shell (and the mark) there.
        ["--exec", f"head -c 1; : {EXEC_MARK}"],
    ],
)
def test_listen_interrupted_at_every_line_exits_130_and_leaves_no_file(extra: list[str]) -> None:
    where = fresh_dir()
    try:
        warm = os.path.join(where, "warm.sock")
        # Once through, so that the imports of the first run are not what is interrupted
        # (Ctrl-C during imports is tests/cli/test_early_ctrl_c.py's subject).
        echo = [] if "--exec" in extra else ["--echo"]
        argv = ["listen", warm, *echo, "--count", "1", *extra]
        status, _left = run_cli(argv, Interrupter(0), warm)
        assert status == 0
        bad = []
        umask = current_umask()
        at = 1
        while True:
            path = os.path.join(where, f"s{at}.sock")
            stop = Interrupter(at)
            before = open_fds()
            argv = ["listen", path, *echo, "--count", "1", *extra]
            status, left = run_cli(argv, stop, path)
            if leaked := open_fds() - before:
                bad.append((stop.where, status, f"leaked {sorted(leaked)}"))
            if current_umask() != umask:
                bad.append((stop.where, status, f"umask {current_umask():o}"))
                os.umask(umask)
            if left_running := _kill_commands_left():
                bad.append((stop.where, status, f"--exec command left running: {left_running}"))
            if not stop.where:
                assert status == 0
                break
            if status != 130 or left:
                bad.append((stop.where, status, "file left" if left else ""))
            at += 1
        assert at > 50, "the trace saw almost nothing of listen"
        assert not bad, "\n".join(map(str, bad))
    finally:
        shutil.rmtree(where, ignore_errors=True)


def _right_server(listener: socket.socket, done: threading.Event) -> None:
    """RIGHT of the relay below: says one byte to each connection, then reads it to its
    end, or until the run is over (an interrupted relay may leave its end open)."""
    listener.settimeout(0.05)
    while not done.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        with conn, contextlib.suppress(OSError):
            conn.settimeout(0.05)
            conn.sendall(b"x")
            while not done.is_set():
                try:
                    if not conn.recv(4096):
                        break
                except TimeoutError:
                    continue


def test_relay_of_one_command_interrupted_at_every_line_leaves_nothing_running() -> None:
    """`udskit relay exec:CMD unix:PATH`: one connection, no listener. The command
    must end with the relay wherever Ctrl-C strikes, and the status is 130.

    Descriptors are not counted here, unlike for listen: an interrupted Relay
    constructor or close() leaves the loop's and the splice pipes open (about sixty
    points found). The process ends right after, so the command line loses nothing;
    a library user who catches KeyboardInterrupt and goes on would.

    Every third point of about 1,250: each run is a whole relay under an opcode trace
    (60 ms), and all of them would add a minute and a half of CPU to the suite. The
    windows found so far (a command spawned but not yet known, a close() cut in two)
    each spanned several points."""
    where = fresh_dir()
    right = os.path.join(where, "right.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(right)
    listener.listen(16)
    serve = partial(_right_server, listener)
    # `head` copies RIGHT's byte back; then the shell (and the mark) lets go of the
    # socket, which ends the session, and stays on: only the relay can end it (a
    # command that ended at EOF would hide one the relay forgot).
    argv = ["relay", f"exec:head -c 1; exec <&- >&-; sleep 30; : {EXEC_MARK}", f"unix:{right}"]
    try:
        status, _ = run_cli(argv, Interrupter(0), right, serve)
        assert status == 0
        bad = []
        at = 1
        while True:
            stop = Interrupter(at)
            status, _ = run_cli(argv, stop, right, serve)
            if left_running := _kill_commands_left():
                bad.append((stop.where, status, f"command left running: {left_running}"))
            if not stop.where:
                assert status == 0
                break
            if status != 130:
                bad.append((stop.where, status, ""))
            at += 3
        assert at > 500, "the trace saw almost nothing of relay"
        assert not bad, "\n".join(map(str, bad))
    finally:
        listener.close()
        shutil.rmtree(where, ignore_errors=True)
