"""The face: argv -> library call -> rendered lines and an exit status.

Each command lives in its own module under `udskit.cli` and exposes
`register(subparsers)`, which adds its parser and sets `handler` to a function
`(args, env) -> int` (see `udskit.cli.parser`). The library and any heavy dependency
are imported inside handlers, so `udskit --help` starts fast. This module imports
neither argparse nor typing at the top: `udskit ls` starts its /proc scan before them.
"""

from __future__ import annotations

import contextlib
import signal
import sys

from udskit.cli.env import Env, ExitStatus
from udskit.signals import STOP_SIGNALS, Terminated, stop_handled, stops_reach_the_main_thread

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from types import FrameType

    from udskit.cli.parser import Handler

__all__ = ["Env", "ExitStatus", "build_parser", "main", "run"]


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser for every command, or, given `command`, for that one alone."""
    from udskit.cli import parser

    return parser.build_parser(command)


def _raise_interrupt(_signum: int, _frame: FrameType | None) -> None:
    stop_handled()
    raise KeyboardInterrupt


def _raise_terminated(signum: int, _frame: FrameType | None) -> None:
    stop_handled()
    raise Terminated(signum)


def main(argv: Sequence[str] | None = None, env: Env | None = None) -> int:
    env = env or Env.from_process()
    argv = list(sys.argv[1:] if argv is None else argv)
    first = argv[0] if argv else None
    if first == "ls":
        # Before argparse is even imported: the scan of /proc/*/fd is the longest part
        # of a listing, and a child on the other CPU can start it now.
        from udskit.cli import ls

        try:
            try:
                ls.start_early_scan(argv[1:])
            except (KeyboardInterrupt, Terminated) as exc:
                return _interrupted(exc)
            return _run_command(argv, env)
        finally:
            ls.discard_early_scan()
    return _run_command(argv, env)


def _interrupted(exc: KeyboardInterrupt | Terminated) -> int:
    """The exit status for Ctrl-C (130) or a terminating signal (128 + its number)."""
    if isinstance(exc, KeyboardInterrupt):
        return ExitStatus.INTERRUPTED
    return ExitStatus.TERMINATED if exc.signum == signal.SIGTERM else 128 + exc.signum


def _run_command(argv: list[str], env: Env) -> int:
    try:
        args = build_parser(argv[0] if argv else None).parse_args(argv)
    except (KeyboardInterrupt, Terminated) as exc:
        return _interrupted(exc)
    handler: Handler = args.handler
    from udskit.errors import UdskitError, UsageError

    try:
        return handler(args, env)
    except UsageError as err:
        env.err(f"udskit {args.command}: {err}")
        return ExitStatus.USAGE
    except UdskitError as err:
        env.err(f"udskit {args.command}: {err}")
        return ExitStatus.USAGE if isinstance(err, ValueError) else ExitStatus.FAILED
    except (KeyboardInterrupt, Terminated) as exc:
        return _interrupted(exc)
    except BrokenPipeError:
        # stdout went away (`udskit ls | head`): not an error worth a traceback.
        return ExitStatus.OK


#: Stop signals whose exception CPython could not raise (see below), not yet re-raised.
_swallowed: list[KeyboardInterrupt | Terminated] = []


def _rethrow_swallowed_stops() -> None:
    """A stop signal's exception must never be lost. When the handler's exception is
    raised inside a callback that CPython runs without a caller to pass it to (a weakref
    callback of the import system's module locks, say), CPython prints "Exception
    ignored" and goes on: a Ctrl-C 84 ms into `udskit listen` was lost so, and the
    server never stopped. The unraisable hook keeps such an exception and a 1 ms timer
    raises it again in ordinary code."""
    previous = sys.unraisablehook

    def rethrow(_signum: int, _frame: FrameType | None) -> None:
        if _swallowed:
            raise _swallowed.pop()

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        if isinstance(unraisable.exc_value, (KeyboardInterrupt, Terminated)):
            _swallowed.append(unraisable.exc_value)
            signal.setitimer(signal.ITIMER_REAL, 0.001)
            return
        previous(unraisable)

    signal.signal(signal.SIGALRM, rethrow)
    sys.unraisablehook = hook


def run() -> None:
    """Console-script entry point: signals become exceptions so cleanup always runs."""
    # A non-interactive shell starts background jobs with SIGINT ignored, and Python then
    # leaves it ignored: `udskit listen ... &` in a script would not stop on SIGINT.
    try:  # from the first handler on: a stop signal may strike on the very next line
        signal.signal(signal.SIGINT, _raise_interrupt)
        signal.signal(signal.SIGTERM, _raise_terminated)
        signal.signal(signal.SIGHUP, _raise_terminated)
        _rethrow_swallowed_stops()
        with stops_reach_the_main_thread():
            status = main()
        _on_the_way_out()
        if _swallowed:  # the command ended before the timer could raise it again
            status = _interrupted(_swallowed.pop())
        with contextlib.suppress(BrokenPipeError):
            sys.stdout.flush()
    except (KeyboardInterrupt, Terminated, RuntimeError) as exc:
        # Between the handlers and a command's own try (imports, the parser), or the
        # last lines above: no traceback for a Ctrl-C.
        stop = _wrapped_stop(exc) if isinstance(exc, RuntimeError) else exc
        if stop is None:
            raise
        status = _interrupted(stop)
        _on_the_way_out()
    sys.exit(status)


def _wrapped_stop(exc: RuntimeError) -> KeyboardInterrupt | Terminated | None:
    """The stop signal's exception inside one that CPython wrapped it in. Python 3.11
    turns an exception raised in `__set_name__` into "RuntimeError: Error calling
    __set_name__" (3.12 re-raises it with a note): a SIGINT that reached `udskit listen`
    as a lazy import created a dataclass with a `field()` ended in a traceback and
    exit 1, not 130."""
    cause = exc.__cause__
    for _ in range(8):
        if isinstance(cause, (KeyboardInterrupt, Terminated)):
            return cause
        if not isinstance(cause, RuntimeError):
            return None
        cause = cause.__cause__
    return None


def _on_the_way_out() -> None:
    """The command is over: later stop signals stay pending until the process is gone
    (the status is the first one's, and a second Ctrl-C cannot cut the cleanup below
    or land in the interpreter's own shutdown, where the default action kills it), and
    a socket file whose listener a signal kept from its `with` is unlinked."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    endpoints = sys.modules.get("udskit.endpoints")
    if endpoints is not None:
        endpoints.close_open_listeners()
