"""I/O: a dump's watchdog, which puts the original socket file back when the dump dies
without doing so itself (kill -9, the OOM killer, a crash).

A proxy dump moves the service's socket file aside and stands in its place; on any
stop it can handle (Ctrl-C, SIGTERM, SIGHUP, an error) it puts the file back itself.
SIGKILL leaves no such chance: without a watchdog the service stays unreachable until
somebody runs `udskit dump --restore PATH`. So once the takeover is done the dump
starts a small process, `udskit-watchdog` in ps (`python -m udskit.capture.watchdog_child
PATH`), that holds:

- a pidfd of the dump (pidfd_open(2)): it becomes readable when the dump has exited,
  once the dump is a zombie, which is when its state record stops reading as a
  running dump's (`restoreplan.stat_start_time`);
- one end of a socketpair (the "pipe" below): the dump writes `done` on its end after
  its own restore, then closes it. A socketpair rather than a pipe so that `udskit ls`
  shows the pair, with the dump and `udskit-watchdog` as its two holders. An end that
  closes without that word is not proof of death on its own:
  the kernel closes a dying process's files before it becomes a zombie.

What to do with those two facts is `restoreplan.plan_watch`. When the dump died
without its word, the watchdog runs exactly what `udskit dump --restore PATH` runs
(`proxy.restore_leftovers`): it goes by the dump's state record and the inodes it
names, with the same locks and the same rules for directories in other hands (no
symlink is followed, every inode is checked right before each link, rename or
unlink; a name the record does not mention is never touched).

Signals. The watchdog is started in a session of its own (setsid), so a Ctrl-C on the
terminal (SIGINT to the foreground process group), a hangup (SIGHUP to the session)
and `kill -9 -PGID` of the dump's group do not reach it: those are the very deaths
it is there for. Nor does it need them: it follows the dump, and leaves as soon as
the dump says it is done (the dump waits for that, so no watchdog outlives a clean
stop). SIGTERM sent to the watchdog itself ends it: whoever does that wants it gone.
Its stderr is the dump's, so what it did is said where the dump's lines went.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from contextlib import suppress
from typing import Final, final

__all__ = ["DISMISS", "WATCHDOG_COMM", "Watchdog"]

#: What the dump writes to its watchdog's pipe once it put everything back itself.
DISMISS: Final = b"done\n"
#: The watchdog's name in ps, top and /proc/PID/comm (at most 15 bytes: TASK_COMM_LEN).
WATCHDOG_COMM: Final = "udskit-watchdog"
#: How long a dump that stops waits for its dismissed watchdog to exit, in seconds. It
#: only reads a few bytes and exits; the bound is for a machine that is thrashing.
DISMISS_WAIT: Final = 5.0


@final
class Watchdog:
    """The dump's side of its watchdog: `start()` it once the takeover is done,
    `dismiss()` it after the dump's own restore."""

    def __init__(self, proc: subprocess.Popen[bytes], pipe: socket.socket) -> None:
        self.proc = proc
        self._pipe: socket.socket | None = pipe  # the dump's end; closed by dismiss()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    def start(cls, path: str) -> Watchdog:
        """Start a watchdog for the dump of socket file `path` (this process).

        Raises OSError when it cannot be started (no pidfd support, no processes left):
        the dump still runs, and says that --restore is needed after a kill -9.

        Call it with the stop signals held (`udskit.signals.signals_held`) until the
        result is stored: a Ctrl-C in between would leave a watchdog running that the
        dump does not know of and cannot dismiss. The child inherits that mask, and
        `main()` lifts it."""
        pidfd = os.pidfd_open(os.getpid())
        try:
            # Both ends close-on-exec: no other child of the dump gets them.
            write_end, read_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            read_end = read_sock.detach()
        except BaseException:
            os.close(pidfd)
            raise
        try:
            proc = subprocess.Popen(
                _command(path, pidfd, read_end),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                pass_fds=(pidfd, read_end),
                start_new_session=True,
                # Not the directory of PATH, which may be somebody else's: `-m` would
                # look for modules there first (-P says not to, as well).
                cwd="/",
                env=_environment(),
            )
        except BaseException:
            write_end.close()
            raise
        finally:
            os.close(pidfd)
            os.close(read_end)
        return cls(proc, write_end)

    def dismiss(self, timeout: float = DISMISS_WAIT) -> None:
        """Tell the watchdog the dump is done, and wait until it has exited; one that
        does not exit in time is killed, so no watchdog outlives a clean stop."""
        if self._pipe is not None:
            with suppress(OSError):  # a watchdog already gone (somebody killed it)
                self._pipe.sendall(DISMISS)
            self._pipe.close()
            self._pipe = None
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _command(path: str, pidfd: int, pipe: int) -> list[str]:
    return [
        sys.executable,
        "-P",
        "-m",
        "udskit.capture.watchdog_child",
        "--pid",
        str(os.getpid()),
        "--pidfd",
        str(pidfd),
        "--pipe",
        str(pipe),
        "--",
        path,
    ]


def _environment() -> dict[str, str]:
    """Our environment, with the directory udskit was imported from first on the
    module path: the watchdog must run this very udskit, wherever it came from."""
    import udskit

    env = dict(os.environ)
    top = os.path.dirname(os.path.dirname(os.path.abspath(udskit.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (top, env.get("PYTHONPATH")) if p)
    return env
