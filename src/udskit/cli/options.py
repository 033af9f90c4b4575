"""Argument types and option groups shared by several commands (no library imports)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

#: The largest receive buffer a message option takes. A unix datagram or seqpacket
#: record cannot be longer than its sender's SO_SNDBUF (net.core.wmem_max, 212,992 bytes
#: by default; root can force more), so 64 MiB holds any message a real sender makes
#: while a typo cannot make udskit allocate gigabytes per message.
MAX_BUFFER = 64 * 1024 * 1024
#: The longest wait any SECONDS option takes: a day. Longer is a typo or a wish for
#: "for ever", which the options say differently.
MAX_SECONDS = 86400.0


def octal_mode(text: str) -> int:
    """A socket file mode such as 0660: permission bits only."""
    try:
        value = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an octal mode: {text!r} (e.g. 0660)") from None
    if not 0 <= value <= 0o777:
        raise argparse.ArgumentTypeError(
            f"mode {text} is out of range: 0000 to 0777 (setuid, setgid and sticky bits "
            "mean nothing on a socket file)"
        )
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value


def buffer_size(text: str) -> int:
    """A message buffer in bytes, 1 to MAX_BUFFER."""
    value = positive_int(text)
    if value > MAX_BUFFER:
        raise argparse.ArgumentTypeError(
            f"{text} bytes is more than the maximum, {MAX_BUFFER} (64 MiB): no unix "
            "datagram or record is that long (see net.core.wmem_max)"
        )
    return value


def seconds(*, allow_zero: bool = True) -> Callable[[str], float]:
    """A duration in seconds: a finite number from 0 (or just above) to MAX_SECONDS."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(
                f"{text} is not a duration: give a finite number of seconds "
                f"(at most {MAX_SECONDS:.0f})"
            )
        if value < 0 or (value == 0 and not allow_zero):
            least = "0" if allow_zero else "more than 0"
            raise argparse.ArgumentTypeError(f"{text} seconds: must be {least}")
        if value > MAX_SECONDS:
            raise argparse.ArgumentTypeError(
                f"{text} seconds is more than the maximum, {MAX_SECONDS:.0f} (a day)"
            )
        return value

    parse.__name__ = "seconds"  # argparse names the type in its error line
    return parse


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
        help="accept only clients of this group, primary or supplementary (SO_PEERGROUPS; "
        "name or gid); repeatable",
    )
