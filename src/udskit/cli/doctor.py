"""`udskit doctor ADDR`: why does this unix socket address not work?"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from udskit.cli.env import Env, ExitStatus

if TYPE_CHECKING:
    from udskit.demo import Tour

DESCRIPTION = """\
Check ADDR step by step and say, for each step, ok / problem / note / skipped and
the fix: the address itself (fits sun_path?), every directory on the path, the file
(a socket? a regular file?), permissions for USER (search on each directory, write on
the socket; write+search on the directory for a server that binds), the socket bound
to the file (sock_diag UNIX_DIAG_VFS) or a stale file, its type, its accept queue, the
process holding it, other mount namespaces (a container's private /tmp, found through
/proc/PID/root) and network namespaces (abstract names), a connected datagram socket
that refuses other senders, AppArmor/SELinux, and finally one real connect.

doctor never disturbs the service: it reads /proc and sock_diag, and its one connect
is opened and closed without sending a byte (a datagram connect() sends nothing;
--send-test sends one empty datagram).
"""

EPILOG = """\
examples:
  udskit doctor /run/app.sock                    why does connect fail?
  udskit doctor /run/app.sock --as-user www-data can user www-data connect? (root
                                                 connects as that user for real)
  udskit doctor @myservice                       an abstract name: which network
                                                 namespace has it?
  udskit doctor /tmp/d.sock --type dgram --send-test
  udskit doctor /run/app.sock --json | jq '.checks[] | select(.verdict=="problem")'

exit statuses:
  0    the final connect worked
  1    it did not (the problem lines say why)
  2    bad arguments or a bad address (nothing was connected to)
  130  interrupted by Ctrl-C
"""


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "doctor",
        help="explain why a unix socket address does not work",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("address", metavar="ADDR", help="socket path or @abstract-name")
    p.add_argument(
        "-t",
        "--type",
        choices=("stream", "dgram", "seqpacket"),
        help="the type the client wants (default: whatever is bound there)",
    )
    p.add_argument(
        "-u",
        "--as-user",
        metavar="USER",
        help="check permissions for USER (name or uid), and connect as USER when root",
    )
    p.add_argument("--json", action="store_true", help="every check's verdict as one JSON object")
    p.add_argument(
        "--send-test",
        action="store_true",
        help="dgram: also send one empty datagram (and wait --timeout for a reply)",
    )
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=1.0,
        metavar="SECONDS",
        help="--send-test: how long to wait for a reply (default: 1)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="also print skipped checks")
    p.set_defaults(handler=handle)


def _seconds(text: str) -> float:
    """A duration in seconds, 0 or more and finite (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value < float("inf"):  # also false for nan
        raise argparse.ArgumentTypeError(f"must be 0 seconds or more: {text}")
    return value


def handle(args: argparse.Namespace, env: Env) -> int:
    import json

    from udskit.doctor import diagnose, diagnosis_lines, diagnosis_to_json, gather_facts
    from udskit.socktype import SocketType

    facts = gather_facts(
        args.address,
        wanted=SocketType(args.type) if args.type else None,
        as_user=args.as_user,
        send_test=args.send_test,
        timeout=args.timeout,
    )
    diagnosis = diagnose(facts)
    if args.json:
        text = json.dumps(diagnosis_to_json(diagnosis), ensure_ascii=False, indent=1)
        env.write((text + "\n").encode("utf-8"))
    else:
        for line in diagnosis_lines(diagnosis, verbose=args.verbose):
            env.write((line + "\n").encode("utf-8"))
    if facts.address is None or facts.connect is None:  # bad text, or `*` / `@`
        return ExitStatus.USAGE
    return ExitStatus.OK if diagnosis.connected else ExitStatus.FAILED


def demo(tour: Tour) -> None:
    """Three addresses that do not work, and doctor saying why; then one that does."""
    import socket

    tour.section("doctor: why an address does not work")
    stale = tour.path("doctor-stale.sock")
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(stale)
    leftover.close()
    tour.say("a socket file whose server died (connect says ECONNREFUSED; doctor says why):")
    tour.show("doctor", stale, check=False)
    tour.say("a missing directory:")
    tour.show("doctor", tour.path("no-such-dir/app.sock"), check=False)
    dgram = tour.path("doctor-dgram.sock")
    server = tour.spawn("listen", dgram, "--type", "dgram", "--echo", wait_for=dgram)
    tour.say("a datagram server, asked for a stream:")
    tour.show("doctor", dgram, "--type", "stream", check=False)
    tour.say("without --type, doctor (like connect and send) uses the type bound there:")
    tour.show("doctor", dgram)
    tour.show("send", dgram, "no --type needed")
    tour.stop(server)
