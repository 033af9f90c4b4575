"""`udskit completion SHELL` and `udskit manpage`: generated from the parsers."""

from __future__ import annotations

import argparse
from typing import Any

from udskit.cli.env import Env, ExitStatus

SHELLS = ("bash", "zsh", "fish")

COMPLETION_EXAMPLES = """\
examples:
  source <(udskit completion bash)                 this bash session
  udskit completion bash > ~/.local/share/bash-completion/completions/udskit
  udskit completion zsh > "${fpath[1]}/_udskit"    zsh (then: compinit)
  udskit completion fish > ~/.config/fish/completions/udskit.fish

pip installs the same files under its prefix (share/bash-completion, share/zsh,
share/fish), and the man page as share/man/man1/udskit.1 (man udskit).
"""


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "completion",
        help="print a shell completion script (bash, zsh, fish)",
        description="Print the completion script for SHELL, generated from udskit's own "
        "parsers so it always knows every command and option.",
        epilog=COMPLETION_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("shell", metavar="SHELL", choices=SHELLS, help="bash, zsh or fish")
    p.set_defaults(handler=handle_completion)
    p = subparsers.add_parser(
        "manpage",
        help="print the udskit(1) man page (roff)",
        description="Print udskit(1) in man(7) macros: udskit manpage | man -l -",
    )
    p.set_defaults(handler=handle_manpage)


def full_parser() -> argparse.ArgumentParser:
    from udskit.cli.parser import build_parser

    return build_parser()


def handle_completion(args: argparse.Namespace, env: Env) -> int:
    from udskit.cli import docgen

    make = {
        "bash": docgen.bash_completion,
        "zsh": docgen.zsh_completion,
        "fish": docgen.fish_completion,
    }[args.shell]
    env.write(make(full_parser()).encode())
    return ExitStatus.OK


def handle_manpage(args: argparse.Namespace, env: Env) -> int:
    from udskit.cli import docgen
    from udskit.cli.parser import package_version

    env.write(docgen.man_page(full_parser(), package_version()).encode())
    return ExitStatus.OK
