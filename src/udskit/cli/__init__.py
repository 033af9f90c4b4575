"""The face: argv -> library call -> rendered lines and an exit status.

Each command lives in its own module under `udskit.cli` and exposes
`register(subparsers)`, which adds its parser and sets `handler` to a function
`(args, env) -> int`. Modules import only argparse at the top: the library and any
heavy dependency are imported inside handlers, so `udskit --help` starts fast.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType

from udskit.cli.env import Env, ExitStatus, Terminated

__all__ = ["Env", "ExitStatus", "build_parser", "main", "run"]

#: Command modules in the order `udskit --help` lists them.
COMMAND_MODULES = ("talk", "relay", "dump", "ls", "bench", "demo")
#: Which module registers each command, so a run of one command imports only its module.
COMMANDS = {
    "listen": "talk",
    "connect": "talk",
    "send": "talk",
    "relay": "relay",
    "dump": "dump",
    "ls": "ls",
    "bench": "bench",
    "demo": "demo",
}

Handler = Callable[[argparse.Namespace, Env], int]

EPILOG = """\
addresses:
  /run/app.sock, ./rel.sock, unix:PATH    a socket file (pathname; at most 107 bytes)
  @name, abstract:name                    an abstract name: exact bytes, \\xHH escapes
  @                                       autobind (the kernel picks a name)
  *                                       unnamed (socketpair ends, unbound sockets)

exit statuses:
  0    success
  1    a socket operation failed (the one-line message says what to do)
  2    bad arguments or a bad address (nothing was done)
  130  interrupted by Ctrl-C (everything moved or created was cleaned up)
  143  terminated by SIGTERM (likewise cleaned up)

Run `udskit COMMAND --help` for each command's options and examples.
"""


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad usage in our one-line style (exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(ExitStatus.USAGE, f"{self.prog}: {message} (see --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser for every command, or, given `command`, for that one alone (which
    spares `udskit ls` the import of every other command module)."""
    parser = _Parser(
        prog="udskit",
        description="A toolkit for UNIX domain sockets: talk, relay, dump, ls, bench.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_VersionAction, nargs=0, help="print the version")
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=_Parser, required=True
    )
    names = (COMMANDS[command],) if command in COMMANDS else COMMAND_MODULES
    for name in names:
        module = importlib.import_module(f"udskit.cli.{name}")
        module.register(subparsers)
    return parser


class _VersionAction(argparse.Action):
    """--version, looked up only when asked (importlib.metadata costs ~10 ms at start)."""

    def __call__(self, parser: argparse.ArgumentParser, *_args: object, **_kw: object) -> None:
        parser.exit(ExitStatus.OK, f"udskit {_version()}\n")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("udskit")
    except PackageNotFoundError:
        return "unknown"


def _raise_terminated(signum: int, _frame: FrameType | None) -> None:
    raise Terminated(signum)


def main(argv: Sequence[str] | None = None, env: Env | None = None) -> int:
    env = env or Env.from_process()
    argv = list(sys.argv[1:] if argv is None else argv)
    first = argv[0] if argv else None
    args = build_parser(first).parse_args(argv)
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
    except KeyboardInterrupt:
        return ExitStatus.INTERRUPTED
    except Terminated as sig:
        return ExitStatus.TERMINATED if sig.signum == signal.SIGTERM else 128 + sig.signum
    except BrokenPipeError:
        # stdout went away (`udskit ls | head`): not an error worth a traceback.
        return ExitStatus.OK


def run() -> None:
    """Console-script entry point: signals become exceptions so cleanup always runs."""
    signal.signal(signal.SIGTERM, _raise_terminated)
    signal.signal(signal.SIGHUP, _raise_terminated)
    status = main()
    with contextlib.suppress(BrokenPipeError):
        sys.stdout.flush()
    sys.exit(status)
