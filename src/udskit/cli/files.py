"""The file commands: `udskit serve-files`, `get`, `put`, `files` (moving files across a
chroot through an abstract socket)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from udskit.cli.env import Env, ExitStatus

SERVE_EXAMPLES = """\
examples:
  udskit serve-files @files --root /srv/export                 only your own uid may connect
  udskit serve-files @files --root /srv/export --read-only --allow-uid 1000
  udskit serve-files @files --root . --allow-gid adm --max-size 2G

An abstract name (@NAME) is reachable from any chroot in the same network namespace,
and it has no file permissions: clients are admitted by their SO_PEERCRED uid/gid
(the server's own uid always). Paths are relative to --root; `..`, absolute paths,
symbolic links (even ones swapped in during a request), FIFOs and devices are refused.
Each request is logged on stderr. Ctrl-C stops the server.
"""

GET_EXAMPLES = """\
examples:
  udskit get @files images/boot.img                 into ./boot.img
  udskit get @files images/boot.img /tmp/           into /tmp/boot.img
  udskit get @files notes.txt copy.txt --json

The file is written under a hidden temporary name and renamed into place once its
SHA-256 matches the server's: a failed transfer leaves nothing behind.
"""

PUT_EXAMPLES = """\
examples:
  udskit put @files ./report.pdf inbox/report.pdf
  udskit put @files /var/log/install.log logs/install.log --json

The server keeps the file only once complete and verified (SHA-256), under a
temporary name until then; a --read-only server refuses.
"""

FILES_EXAMPLES = """\
examples:
  udskit files @files                 the root
  udskit files @files images --json   one JSON object per entry
"""


def size_text(text: str) -> int:
    """A byte count: 1048576, 512K, 100M, 2G (powers of 1024)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    scale = units.get(text[-1:].upper(), 1)
    number = text[:-1] if scale > 1 else text
    if number.upper().endswith("I"):  # 100Mi reads as 100M
        number = number[:-1]
    try:
        value = int(number) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 100M, 2G)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "serve-files",
        help="serve a directory's files on an address (for get, put, files)",
        description="Serve the files beneath --root on ADDR, confined to it.",
        epilog=SERVE_EXAMPLES,
        formatter_class=fmt,
    )
    p.add_argument("address", metavar="ADDR", help="@abstract-name (or a socket path)")
    p.add_argument("--root", required=True, metavar="DIR", help="the directory served")
    p.add_argument(
        "--allow-uid",
        action="append",
        default=[],
        metavar="USER",
        help="also admit clients of this user, by SO_PEERCRED (name or uid); repeatable",
    )
    p.add_argument(
        "--allow-gid",
        action="append",
        default=[],
        metavar="GROUP",
        help="also admit clients whose primary group is this (name or gid); repeatable",
    )
    p.add_argument("--read-only", action="store_true", help="refuse put")
    p.add_argument(
        "--max-size",
        type=size_text,
        metavar="N",
        help="refuse files larger than N bytes (512K, 100M, 2G), both ways",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="do not log each request")
    p.set_defaults(handler=handle_serve)

    p = subparsers.add_parser(
        "get",
        help="fetch a file from a serve-files server",
        description="Fetch REMOTE (relative to the server's root) into LOCAL.",
        epilog=GET_EXAMPLES,
        formatter_class=fmt,
    )
    p.add_argument("address", metavar="ADDR")
    p.add_argument("remote", metavar="REMOTE")
    p.add_argument("local", metavar="LOCAL", nargs="?", help="file or directory (default: ./NAME)")
    p.add_argument("--json", action="store_true", help="print what moved as a JSON object")
    p.set_defaults(handler=handle_get)

    p = subparsers.add_parser(
        "put",
        help="send a file to a serve-files server",
        description="Send the regular file LOCAL to REMOTE (relative to the server's root).",
        epilog=PUT_EXAMPLES,
        formatter_class=fmt,
    )
    p.add_argument("address", metavar="ADDR")
    p.add_argument("local", metavar="LOCAL")
    p.add_argument("remote", metavar="REMOTE")
    p.add_argument("--json", action="store_true", help="print what moved as a JSON object")
    p.set_defaults(handler=handle_put)

    p = subparsers.add_parser(
        "files",
        help="list a directory of a serve-files server",
        description="List DIR (default: the root) of the server on ADDR.",
        epilog=FILES_EXAMPLES,
        formatter_class=fmt,
    )
    p.add_argument("address", metavar="ADDR")
    p.add_argument("directory", metavar="DIR", nargs="?", default="")
    p.add_argument("--json", action="store_true", help="one JSON object per entry, a line each")
    p.set_defaults(handler=handle_files)


def handle_serve(args: argparse.Namespace, env: Env) -> int:
    from udskit.endpoints import resolve_group, resolve_user
    from udskit.files.server import FileServer, serve_files

    def log(line: str) -> None:
        env.err(f"udskit serve-files: {line}")

    def ready(server: FileServer) -> None:
        mode = "read-only" if server.read_only else "read-write"
        env.err(f"udskit serve-files: serving {server.root} on {server.listener.address} ({mode})")

    serve_files(
        args.address,
        args.root,
        allow_uids=[resolve_user(u) for u in args.allow_uid],
        allow_gids=[resolve_group(g) for g in args.allow_gid],
        read_only=args.read_only,
        max_size=args.max_size,
        log=None if args.quiet else log,
        ready=ready,
    )
    return ExitStatus.OK


@contextmanager
def _progress_bar(env: Env, label: str) -> Iterator[Callable[[int, int], None] | None]:
    """A rich progress bar on stderr when it is a terminal; None (no bar) otherwise."""
    if not env.stderr_isatty:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from udskit.signals import signals_held

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(file=env.stderr),
        transient=False,
    )
    task = progress.add_task(label, total=None)
    with signals_held():  # rich's refresh thread must leave Ctrl-C to the main thread
        progress.start()
    try:
        yield lambda done, total: progress.update(task, completed=done, total=total)
    finally:
        progress.stop()


def _transfer_json(transfer: Any) -> str:
    import json

    from udskit.address import escape_bytes

    return json.dumps(
        {
            "remote": escape_bytes(transfer.remote),
            "local": escape_bytes(transfer.local.encode("utf-8", "surrogateescape")),
            "size": transfer.size,
            "sha256": transfer.sha256,
        }
    )


def handle_get(args: argparse.Namespace, env: Env) -> int:
    from udskit.address import escape_bytes
    from udskit.files.client import get_file

    label = escape_bytes(args.remote.encode("utf-8", "surrogateescape"))
    with _progress_bar(env, f"get {label}") as progress:
        transfer = get_file(args.address, args.remote, args.local, progress=progress)
    if args.json:
        env.out(_transfer_json(transfer))
    return ExitStatus.OK


def handle_put(args: argparse.Namespace, env: Env) -> int:
    from udskit.address import escape_bytes
    from udskit.files.client import put_file

    label = escape_bytes(args.local.encode("utf-8", "surrogateescape"))
    with _progress_bar(env, f"put {label}") as progress:
        transfer = put_file(args.address, args.local, args.remote, progress=progress)
    if args.json:
        env.out(_transfer_json(transfer))
    return ExitStatus.OK


def handle_files(args: argparse.Namespace, env: Env) -> int:
    import json
    import stat
    import time

    from udskit.address import escape_bytes
    from udskit.files.client import list_files
    from udskit.files.protocol import EntryKind

    entries = list_files(args.address, args.directory)
    for entry in entries:
        name = escape_bytes(entry.name)
        if args.json:
            env.out(
                json.dumps(
                    {
                        "name": name,
                        "kind": entry.kind.name.lower(),
                        "size": entry.size,
                        "mode": f"{entry.mode:04o}",
                        "mtime_ns": entry.mtime_ns,
                    }
                )
            )
            continue
        type_bits = {
            EntryKind.FILE: stat.S_IFREG,
            EntryKind.DIRECTORY: stat.S_IFDIR,
            EntryKind.SYMLINK: stat.S_IFLNK,
            EntryKind.OTHER: 0,
        }[entry.kind]
        mtime = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.mtime_ns / 1e9))
        suffix = "/" if entry.kind is EntryKind.DIRECTORY else ""
        env.out(f"{stat.filemode(type_bits | entry.mode)} {entry.size:>14} {mtime} {name}{suffix}")
    return ExitStatus.OK
