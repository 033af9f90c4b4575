"""The talk commands (not built yet)."""

from __future__ import annotations

import argparse
from typing import Any

from udskit.cli.env import Env, ExitStatus


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser("listen", help="(not built yet)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace, env: Env) -> int:
    env.err("udskit listen: not built yet")
    return ExitStatus.FAILED
