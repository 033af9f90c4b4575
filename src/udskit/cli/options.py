"""Argument types and option groups shared by several commands (no library imports)."""

from __future__ import annotations

import argparse


def octal_mode(text: str) -> int:
    """A file mode such as 0660."""
    try:
        value = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an octal mode: {text!r} (e.g. 0660)") from None
    if not 0 <= value <= 0o7777:
        raise argparse.ArgumentTypeError(f"mode out of range: {text}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value


def add_listener_options(parser: argparse.ArgumentParser) -> None:
    """--backlog, --mode/--owner/--group and --allow-uid/--allow-gid, as every command
    that listens on a unix socket takes them (udskit.endpoints.open_listener)."""
    parser.add_argument(
        "--backlog",
        type=positive_int,
        default=4096,
        metavar="N",
        help="listen backlog (default: 4096, capped by net.core.somaxconn)",
    )
    parser.add_argument("--mode", type=octal_mode, help="socket file mode, e.g. 0660")
    parser.add_argument("--owner", help="socket file owner (name or uid)")
    parser.add_argument("--group", help="socket file group (name or gid)")
    parser.add_argument(
        "--allow-uid",
        action="append",
        default=[],
        metavar="USER",
        help="accept only clients of this user (name or uid), by SO_PEERCRED, and for "
        "datagrams by each one's SCM_CREDENTIALS; repeatable",
    )
    parser.add_argument(
        "--allow-gid",
        action="append",
        default=[],
        metavar="GROUP",
        help="accept only clients of this group (name or gid); repeatable",
    )
