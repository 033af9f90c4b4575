"""The `udskit demo` command: a short tour of every capability on real sockets."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from udskit.cli.env import Env, ExitStatus


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="a guided tour of udskit on real sockets",
        description="Run a short tour, started from nothing, that shows each capability "
        "on real sockets and says where its output files are.",
    )
    parser.add_argument(
        "--outdir",
        type=Path,
        default=Path("udskit-demo"),
        help="where files worth keeping (captures, charts) go (default: ./udskit-demo)",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="SECTION",
        help="run only this section (talk, relay, dump, ls, doctor, bench, activate); repeatable",
    )
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace, env: Env) -> int:
    import io

    from udskit.demo import run_tour

    out = io.TextIOWrapper(env.stdout, encoding="utf-8", write_through=True)
    try:
        run_tour(out, args.outdir, args.only)
    except RuntimeError as err:
        env.err(f"udskit demo: {err}")
        return ExitStatus.FAILED
    finally:
        out.detach()
    return ExitStatus.OK
