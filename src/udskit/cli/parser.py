"""The command line's parser: one subcommand per module under `udskit.cli`.

Each command module exposes `register(subparsers)`, which adds its parser and sets
`handler` to a function `(args, env) -> int`. A run of one command builds only that
command's parser, so `udskit ls` does not import the others.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable

from udskit.cli.env import Env, ExitStatus

__all__ = ["COMMANDS", "COMMAND_MODULES", "Handler", "build_parser", "package_version"]

#: Command modules in the order `udskit --help` lists them.
COMMAND_MODULES = (
    "talk",
    "relay",
    "dump",
    "ls",
    "doctor",
    "files",
    "bench",
    "activate",
    "demo",
    "docs",
)
#: Which module registers each command, so a run of one command imports only its module.
COMMANDS = {
    "listen": "talk",
    "connect": "talk",
    "send": "talk",
    "relay": "relay",
    "dump": "dump",
    "ls": "ls",
    "doctor": "doctor",
    "serve-files": "files",
    "get": "files",
    "put": "files",
    "files": "files",
    "bench": "bench",
    "activate": "activate",
    "demo": "demo",
    "completion": "docs",
    "manpage": "docs",
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
  129  ended by SIGHUP (the terminal closed; cleaned up likewise)
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
        description="A toolkit for UNIX domain sockets: talk, relay, dump, ls, doctor, files, "
        "bench, activate.",
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
        parser.exit(ExitStatus.OK, f"udskit {package_version()}\n")


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("udskit")
    except PackageNotFoundError:
        return "unknown"
