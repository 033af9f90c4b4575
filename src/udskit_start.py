"""I/O: the `udskit` console script's first module, imported before the udskit package.

A Ctrl-C in the first tens of milliseconds of a command used to land in the middle of
an import and print a KeyboardInterrupt traceback. Nothing has been created yet at that
point, so the first thing this module does is make the stop signals leave quietly with
the usual status (128 + the signal, 130 for Ctrl-C); `udskit.cli.run` then replaces
these handlers with the ones that clean up. Only Python's own start-up, before this
module runs, is left to the interpreter's default (killed by the signal, which a shell
also shows as 130).
"""

# No `from __future__ import`: it reads a file, long enough to be hit by a Ctrl-C.
# `_signal`, the C module under `signal`: `import signal` takes about 10 ms (it builds
# enums), long enough to be hit by a Ctrl-C itself. `os` was imported by site already.
import _signal  # type: ignore[import-not-found]
import os


def _leave(signum: int, _frame: object) -> None:
    os._exit(128 + signum)


for _signum in (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP):
    _signal.signal(_signum, _leave)
# A blocked mask survives exec: a parent that started us while it held the stop signals
# (a Python program inside pthread_sigmask, some supervisors) would leave a server that
# neither Ctrl-C nor SIGTERM could stop. The same reasoning as for an inherited ignored
# SIGINT (udskit.cli.run). After the handlers: one already pending leaves quietly.
_signal.pthread_sigmask(_signal.SIG_UNBLOCK, (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP))


def main() -> None:
    from udskit.cli import run

    run()
