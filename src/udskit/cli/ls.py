"""The `udskit ls` command: every unix socket with its peer, queues and processes."""

from __future__ import annotations

import sys

from udskit.cli.env import Env, ExitStatus

TYPE_CHECKING = False  # typing and argparse are imported after the early scan's fork
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import Any

    from udskit.demo import Tour
    from udskit.inspect.fdscan import BackgroundFdScan
    from udskit.inspect.listing import SocketFilter

DESCRIPTION = """\
List every unix socket on this machine (ss -xp and lsof -U in one): type, state,
queues, address, inode, the peer's inode and processes, and the processes holding it.
Addresses are exact: abstract names print as @name with \\xHH for odd bytes (ss turns
NUL into '@'), unnamed sockets as *. A socket file renamed or deleted since bind is
marked (its inode is compared with the path on disk)."""

EPILOG = """\
examples:
  udskit ls                          every unix socket, with its processes and peer
  udskit ls '/run/*'                 sockets whose address matches a glob
  udskit ls /run/app.sock -c         a listener, then each client and its process
  udskit ls '@app\\x00one'            an exact abstract name (NUL written \\x00)
  udskit ls -l -t seqpacket          listening seqpacket sockets
  udskit ls --pid 812 --pid 900      what these processes hold
  udskit ls -u www-data              sockets owned by or held by a user
  udskit ls --stale                  socket files nobody is bound to (bind fails there)
  udskit ls --stale /run/myapp       ... only under this directory (or glob)
  udskit ls --json | jq '.[] | select(.recv_q > 0)'

columns:
  RECV-Q   bytes waiting to be read; for a listener, connections waiting for accept()
  SEND-Q   send buffer in use (bytes the peer has not read yet); for a listener, the backlog
  PEER     the other end: its inode, its address when it differs, its processes
  PROCESSES  command[pid]:fd for every descriptor that holds the socket

Sockets come from netlink sock_diag; where that is missing (no unix_diag module, a
sandbox), from /proc/net/unix, which lacks peers and queues: a line on stderr says so.
Processes come from one pass over /proc/*/fd; without root, other users' processes
are not shown. Exit status 0, or 2 for a bad pattern or option.
"""


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    import argparse

    parser = subparsers.add_parser(
        "ls",
        help="list unix sockets with peers, queues and processes (ss -xp + lsof -U)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "patterns",
        nargs="*",
        metavar="PATTERN",
        help="addresses or globs over addresses (/run/*.sock, @app*), any of which may "
        "match; a path also matches the socket bound to that file under another name",
    )
    parser.add_argument(
        "-p",
        "--processes",
        dest="processes",
        action="store_true",
        default=True,
        help="show the processes holding each socket and its peer (the default; "
        "-p is accepted as in ss)",
    )
    parser.add_argument(
        "-P",
        "--no-processes",
        dest="processes",
        action="store_false",
        help="skip the scan of /proc/*/fd (faster on hosts with many processes)",
    )
    parser.add_argument("-l", "--listening", action="store_true", help="only listening sockets")
    parser.add_argument(
        "-t",
        "--type",
        action="append",
        default=[],
        metavar="TYPE",
        help="only this type: stream, dgram or seqpacket (repeatable)",
    )
    parser.add_argument(
        "--pid",
        action="append",
        default=[],
        type=int,
        metavar="PID",
        help="only sockets held by this process (repeatable)",
    )
    parser.add_argument(
        "-u",
        "--user",
        action="append",
        default=[],
        metavar="USER",
        help="only sockets owned by USER or held by a process of USER (name or uid; repeatable)",
    )
    parser.add_argument("--abstract", action="store_true", help="only abstract names (@name)")
    parser.add_argument(
        "-c",
        "--connections",
        action="store_true",
        help="only listeners (and bound datagram sockets), each followed by its clients: "
        "accepted connections, those still waiting for accept(), and their processes",
    )
    parser.add_argument(
        "-m",
        "--memory",
        action="store_true",
        help="add the kernel's memory counters (UNIX_DIAG_MEMINFO: buffers, drops) to --json",
    )
    parser.add_argument(
        "--stale",
        action="store_true",
        help="list socket files with no socket bound to them (the debris that makes bind "
        "fail with 'address in use'), under PATTERN or /run, /tmp, /var/tmp, /dev/shm",
    )
    parser.add_argument(
        "--proc",
        action="store_true",
        help="read /proc/net/unix instead of netlink sock_diag (what ls falls back to)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON array, one object a line")
    parser.set_defaults(handler=handle)


def _uid_of(user: str) -> int:
    from udskit.errors import UsageError

    if user.isdigit():
        return int(user)
    import pwd

    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise UsageError(f"no such user: {user!r}; give a login name or a uid") from None


def build_filter(args: argparse.Namespace) -> SocketFilter:
    """The command line's filter options as the library's SocketFilter."""
    from udskit.address import parse_address
    from udskit.errors import UsageError
    from udskit.inspect.listing import SocketFilter
    from udskit.socktype import SocketType

    types = set()
    for text in args.type:
        try:
            types.add(SocketType.parse(text))
        except ValueError:
            raise UsageError(f"unknown --type {text!r}: use stream, dgram or seqpacket") from None
    for pattern in args.patterns:
        if not any(c in pattern for c in "*?["):
            parse_address(pattern)  # a bad escape is an AddressError before any work
    return SocketFilter(
        patterns=tuple(args.patterns),
        listening=args.listening,
        types=frozenset(types),
        pids=frozenset(args.pid),
        uids=frozenset(_uid_of(u) for u in args.user),
        abstract=args.abstract,
    )


#: The scan `start_early_scan` started, until `handle` takes it.
_EARLY: list[BackgroundFdScan] = []
#: Whether the collector was on before `start_early_scan` turned it off.
_GC_WAS_ENABLED: list[bool] = []
#: Options after which a listing needs no scan of /proc/*/fd (or is no listing at all).
_NO_SCAN_OPTIONS = ("--no-processes", "--proc", "--stale", "--help", "--version")


def _wants_scan(argv: Sequence[str]) -> bool:
    """A guess, before argparse, at whether `udskit ls ARGV` will scan /proc/*/fd.

    A wrong guess costs only time: an unneeded scan is killed, a missing one is
    started by `handle`. Long options may be abbreviated (argparse allows it).
    """
    for arg in argv:
        if arg == "--":
            break
        if arg.startswith("--"):
            name = arg.split("=", 1)[0]
            if len(name) > 3 and any(o.startswith(name) for o in _NO_SCAN_OPTIONS):
                return False
        elif arg.startswith("-") and ("P" in arg or "h" in arg):
            return False
    return True


def _forking_is_safe() -> bool:
    """No other thread: a child forked while another thread holds a lock can hang."""
    threading = sys.modules.get("threading")
    return threading is None or threading.active_count() == 1


def start_early_scan(argv: Sequence[str]) -> None:
    """Start the scan of /proc/*/fd in a child now, before argparse and the lister are
    imported (they take ~40 ms), if `udskit ls ARGV` will need it; `handle` takes it.
    The caller calls `discard_early_scan()` afterwards, whatever happened (the scan is
    registered before any signal can interrupt, see BackgroundFdScan)."""
    import gc

    # A listing makes a few objects per socket and no cycles; the collector's passes
    # over a heap that grows to 20,000 sockets' worth would only cost time.
    _GC_WAS_ENABLED[:] = [gc.isenabled()]
    gc.disable()
    if _wants_scan(argv) and _forking_is_safe():
        from udskit.inspect.fdscan import BackgroundFdScan

        wants_json = any(arg.startswith("--j") for arg in argv)
        BackgroundFdScan(json_texts=wants_json, registry=_EARLY)


def discard_early_scan() -> None:
    """Stop a scan still running (a usage error, --help, an exception on the way), and
    give the cyclic garbage collector back (the command may run in-process)."""
    try:
        while _EARLY:
            _EARLY.pop().close()
    finally:
        if _GC_WAS_ENABLED and _GC_WAS_ENABLED.pop():
            import gc

            gc.enable()


def _take_scan(json_texts: bool) -> BackgroundFdScan | None:
    """The early scan, or a new one (registered for `discard_early_scan` too); None
    where forking is not safe, and the lister then scans in-line."""
    if _EARLY:
        return _EARLY[-1]
    if not _forking_is_safe():
        return None
    from udskit.inspect.fdscan import BackgroundFdScan

    return BackgroundFdScan(json_texts=json_texts, registry=_EARLY)


def handle(args: argparse.Namespace, env: Env) -> int:
    if args.stale:
        return _handle_stale(args, env)
    from udskit.inspect.listing import Source

    scan = None
    try:
        if args.processes and not args.proc:
            # The /proc/*/fd scan runs in a child on the other CPU while this process
            # imports the lister and reads netlink (the CLI has no threads yet).
            scan = _take_scan(args.json)
        from udskit.inspect.lister import list_sockets
        from udskit.inspect.owners import owners_from_background

        where = build_filter(args)
        source = Source.PROC if args.proc else None
        if args.json and not args.connections and not where.needs_owners:
            # The document is rendered while the scan child still reads /proc.
            from udskit.inspect.jsonlisting import json_listing

            document, view = json_listing(
                where, processes=args.processes, meminfo=args.memory, source=source, scan=scan
            )
            if view.note:
                env.err(f"udskit ls: {view.note}")
            env.write(document.encode("utf-8", errors="surrogateescape"))
            return ExitStatus.OK
        listing = list_sockets(
            where,
            processes=args.processes,
            meminfo=args.memory,
            connections=args.connections,
            source=source,
            owners=owners_from_background(scan) if scan is not None else None,
        )
    finally:
        if scan is not None:
            scan.close()
    from udskit.sockdiag import SocketState
    from udskit.socktype import SocketType

    if listing.note:
        env.err(f"udskit ls: {listing.note}")
    sockets = listing.sockets
    if args.connections:
        sockets = tuple(
            s
            for s in sockets
            if s.state is SocketState.LISTEN
            or (s.type is SocketType.DGRAM and s.inode in listing.connections)
        )
    if args.json:
        from udskit.inspect.render import json_document

        conns = listing.connections if args.connections else None
        env.write(json_document(sockets, conns).encode("utf-8", errors="surrogateescape"))
        return ExitStatus.OK
    from udskit.inspect.render import format_table

    lines = format_table(
        sockets, listing.connections if args.connections else None, processes=args.processes
    )
    env.write(("\n".join(lines) + "\n").encode("utf-8", errors="surrogateescape"))
    if not sockets and args.patterns:
        env.err(f"udskit ls: no socket matches {' '.join(args.patterns)}")
    return ExitStatus.OK


def _handle_stale(args: argparse.Namespace, env: Env) -> int:
    import glob

    from udskit.inspect.lister import find_stale_files
    from udskit.inspect.owners import user_name

    paths = None
    if args.patterns:
        paths = sorted({p for pattern in args.patterns for p in glob.glob(pattern) or [pattern]})
    stale = find_stale_files(paths)
    if args.json:
        import json

        from udskit.inspect.render import stale_to_json

        objects = [stale_to_json(s) for s in stale]
        env.write((json.dumps(objects, indent=1) + "\n").encode("utf-8", "surrogateescape"))
        return ExitStatus.OK
    from udskit.inspect.render import format_stale_table

    if not stale:
        where = " ".join(args.patterns) or "the usual places (/run, /tmp, /var/tmp, /dev/shm)"
        env.out(f"no stale socket files under {where}")
        return ExitStatus.OK
    users = {s.uid: user_name(s.uid) for s in stale}
    env.write(
        ("\n".join(format_stale_table(stale, users)) + "\n").encode("utf-8", "surrogateescape")
    )
    env.err("udskit ls: remove a stale file (rm PATH) before binding there again")
    return ExitStatus.OK


def demo(tour: Tour) -> None:
    """Sockets this tour's own process holds, listed the way anybody would see them."""
    import os
    import socket

    from udskit.endpoints import open_connection, open_listener, open_socketpair

    tour.section("ls: every unix socket, its peer, its queues and who holds it")
    path = tour.path("ls-app.sock")
    held: list[socket.socket] = []
    with open_listener(path) as listener:
        try:
            held.append(open_connection(path))
            server, _ = listener.accept()
            held.append(server)
            held[0].sendall(b"x" * 100)  # unread: shows in the server end's RECV-Q
            held.append(open_connection(path))  # never accepted: shows as pending
            held.extend(open_socketpair())
            stale = tour.path("ls-stale.sock")
            leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            leftover.bind(stale)
            leftover.close()  # closing does not remove the file: that is a stale file
            tour.say(
                f"this tour (pid {os.getpid()}) listens on {path}, has one accepted "
                "connection with 100 unread bytes, one not yet accepted, and a socketpair:"
            )
            tour.show("ls", "--pid", str(os.getpid()))
            tour.say("the listener and each client, with the client's process:")
            tour.show("ls", "--connections", path)
            moved = path + ".moved"
            os.rename(path, moved)
            tour.say("rename the socket file, as a careless deploy script might:")
            tour.show("ls", "-l", f"{tour.workdir}/*")
            os.rename(moved, path)
            tour.say("a socket file nobody is bound to (bind() there fails until removed):")
            tour.show("ls", "--stale", str(tour.workdir))
        finally:
            for sock in held:
                sock.close()
