"""The `udskit dump` command: a tcpdump for unix sockets (parse -> library -> render)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from udskit.cli.env import Env, ExitStatus
from udskit.cli.options import positive_int, seconds

if TYPE_CHECKING:
    from udskit.demo import Tour

DESCRIPTION = """\
Capture the traffic of a live unix socket, as tcpdump does for network interfaces.

Two engines: --engine auto (the default) uses eBPF where it can run (root, BPF allowed,
clang) and otherwise the proxy, saying why; the start line names the engine in use.

The proxy engine takes the socket file's place without a gap: the original file gets a
hidden second name (.NAME.udskit-dump-RANDOM) and a proxy with the same mode, owner and group
is renamed over PATH; each new client is forwarded to the original and every chunk is
recorded with its time, direction and the client's pid, uid, gid and command.
Connections that were open before the dump are not touched (nor seen: their count is
printed at start). On exit (Ctrl-C, SIGTERM,
SIGHUP, -c reached, an error) the original file is put back. After a kill -9 a
watchdog (udskit-watchdog in ps, in a session of its own so that Ctrl-C and hangups
do not reach it) puts it back at once; without one (--no-watchdog), run
`udskit dump --restore PATH`.

The eBPF engine (--engine ebpf, root) moves nothing: it watches the syscalls that move
data on the connections of ADDR (open ones too, and new ones from their first byte),
of a socket inode (--inode, socketpairs) or of a process (--pid without ADDR). Losses
in the kernel's ring buffer are counted and reported at the end. Connections open
before the capture are written so that Wireshark still dissects them (HTTP/2 and gRPC
get a synthetic preface, marked synthetic=1 in the packet comment).
"""

EPILOG = """\
examples:
  udskit dump /run/app.sock                      one line per event
  udskit dump -A /tmp/http.sock                  with the payload as text (-X: hex)
  udskit dump --json /var/run/redis.sock         JSON lines (data in base64)
  udskit dump -w cap.pcapng /tmp/redis.sock      pcapng for Wireshark; add --print to
                                                 see lines too
  udskit dump -w cap.pcapng --decode-as postgres /run/postgresql/.s.PGSQL.5432
  udskit dump -r cap.pcapng -X                   read a capture back
  udskit dump -w - /tmp/redis.sock | tshark -r - -Y resp     pcapng on stdout
  udskit dump --pname curl -Q in -c 10 /run/app.sock   only what curl sends; 10 chunks
  udskit dump --uid www-data -Q out /run/app.sock      only replies to www-data's clients
  udskit dump --listen @dbg /run/app.sock        abstract or immovable: clients that
                                                 connect to @dbg are recorded; @dbg admits
                                                 only who could connect to the file
  udskit dump --listen @dbg --allow-uid 1000 /run/app.sock   ...and user 1000, on purpose
  udskit dump --restore /run/app.sock            after a kill -9 of a dump
  udskit dump --engine ebpf /run/app.sock        connections already open too; nobody
                                                 moved or reconnected (root)
  udskit dump --engine ebpf -A @app-debug        an abstract name, as is
  udskit dump --engine ebpf --inode 123456       one socketpair (inode from `udskit ls`)
  udskit dump --engine ebpf --pid 4242 --json    every unix connection of process 4242
  udskit dump --engine ebpf -w c.pcapng -- curl --unix-socket /run/app.sock http://x/
                                                 a command's traffic; exits as it did
  udskit dump --engine proxy /run/app.sock       pin the proxy (new clients only)
  tshark -r cap.pcapng -Y http.request -T fields -e http.request.uri
  tshark -r cap.pcapng -T fields -e frame.comment    client pid and command
  tshark -r cap.pcapng -Y http2.header -T fields -e http2.headers.path    gRPC methods

pcapng: each connection is a synthetic TCP flow between 127.0.0.1 (the server, on
port 80, 6379, 5432 or the --decode-as port) and 127.1.X.Y (the client) that exists
only in the file, so Wireshark dissects HTTP, Redis and PostgreSQL and "Follow TCP
stream" works; datagram and seqpacket messages are one UDP packet each. Each
packet's comment holds pid, command, uid, gid, the socket path and the connection.

identity: as root (or with CAP_SETUID and CAP_SETGID) the proxy connects upstream as
each client, with its uid, gid and groups, so the server's SO_PEERCRED checks (peer
auth of PostgreSQL, D-Bus, polkit) and the socket file's permissions judge the client,
not the dump; only the pid the server sees is the proxy's. SO_PASSCRED servers get
each chunk with the client's pid, uid and gid (SCM_CREDENTIALS). Without those
capabilities udskit dump refuses a socket that other users' clients may reach, unless
--allow-identity-change: then the server takes every client for you (one WARNING).
File descriptors passed either way (SCM_RIGHTS) go on with their bytes and show as
"fds N: pipe:[...]" lines, "fds" JSON events and pcapng comments.
who can connect: in the file's place the proxy has the file's mode, owner and group.
A --listen front (an abstract name has no permissions at all) admits, by each client's
SO_PEERCRED and SO_PEERGROUPS, only users who could have connected to ADDR's file
(write on the file, search on each directory; root always), unless --allow-uid or
--allow-gid name who else; the start line says who. Refused clients never reach ADDR.

files: -w creates FILE with mode 0600 (a capture holds whatever the socket carried),
exclusively and never through a symlink; an existing FILE is used only if it is your
own regular file. The dump's hidden and staging names are random and made
exclusively; its record (in /run/udskit for root, else $XDG_RUNTIME_DIR/udskit) lets
--restore put back exactly what it moved, and nothing that another user planted.

exit statuses: 0 done, 1 a socket operation failed, 2 bad arguments,
130 Ctrl-C and 143 SIGTERM (the original socket is back in both cases).
"""


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "dump",
        help="capture a live unix socket's traffic (text, hex, JSON, pcapng)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("address", nargs="?", metavar="ADDR", help="the socket to capture")
    source = parser.add_argument_group("source")
    source.add_argument("-r", "--read", metavar="FILE", help="read a pcapng capture instead")
    source.add_argument(
        "--listen",
        metavar="ADDR",
        help="leave ADDR in place; listen here and forward to ADDR (abstract sockets, "
        "or files that may not be moved)",
    )
    source.add_argument(
        "--allow-uid",
        action="append",
        default=[],
        metavar="USER",
        help="with --listen: admit clients of this user (name or uid) to the front; "
        "repeatable. Without it the front admits only who could connect to ADDR's file "
        "itself (its mode, owner, group and directories; root always)",
    )
    source.add_argument(
        "--allow-gid",
        action="append",
        default=[],
        metavar="GROUP",
        help="with --listen: admit clients of this group; repeatable",
    )
    source.add_argument(
        "--type",
        choices=("stream", "dgram", "seqpacket"),
        help="the socket's type (default: found from /proc/net/unix)",
    )
    source.add_argument(
        "--engine",
        choices=("proxy", "ebpf", "auto"),
        default="auto",
        help="proxy: take the socket's place (new clients only); ebpf: watch the "
        "syscalls in the kernel (existing connections too, abstract names, socketpairs; "
        "root, clang, BPF allowed); auto: ebpf where it can run, else proxy, saying why "
        "(default: auto; the start line names the engine in use)",
    )
    source.add_argument(
        "--inode",
        type=int,
        metavar="N",
        help="(ebpf) capture the connection of socket inode N (a socketpair: see "
        "`udskit ls`), instead of ADDR",
    )
    source.add_argument(
        "--restore",
        action="store_true",
        help="put the original socket file ADDR back after a dump was killed (kill -9)",
    )
    source.add_argument(
        "--no-watchdog",
        action="store_true",
        help="(proxy) start no watchdog: after a kill -9 the original stays moved until "
        "`udskit dump --restore PATH`",
    )
    out = parser.add_argument_group("output")
    shape = out.add_mutually_exclusive_group()
    shape.add_argument("-X", dest="hex", action="store_true", help="payload in hex and ASCII")
    shape.add_argument("-A", dest="ascii", action="store_true", help="payload as ASCII text")
    shape.add_argument("--json", action="store_true", help="one JSON object per event")
    out.add_argument(
        "-w", "--write", metavar="FILE", help="write pcapng (for Wireshark); - is stdout"
    )
    out.add_argument(
        "--print", action="store_true", help="with -w, also print events (as tcpdump --print)"
    )
    out.add_argument(
        "--decode-as",
        metavar="PROTO",
        help="pcapng server port: http, redis, postgres or a number (default: guessed "
        "from each connection's first bytes)",
    )
    out.add_argument("--utc", action="store_true", help="times in UTC instead of local time")
    limits = parser.add_argument_group("filters and limits")
    limits.add_argument(
        "-c", "--count", type=positive_int, metavar="N", help="stop after N data events"
    )
    limits.add_argument(
        "--pid",
        type=positive_int,
        metavar="PID",
        help="only clients with this pid; (ebpf) without ADDR: every unix connection PID holds",
    )
    limits.add_argument(
        "--pname",
        metavar="NAME",
        help="only clients whose command name (comm, as `ps -o comm` shows it) is NAME",
    )
    limits.add_argument("--uid", metavar="USER", help="only clients of this user (name or uid)")
    limits.add_argument(
        "-Q",
        "--direction",
        choices=("in", "out", "inout"),
        default="inout",
        help="only data received (in) or sent (out) by the watched side: the server of "
        "ADDR; with --pid and no ADDR, process PID; with --inode or -- CMD, the holder "
        "of the inode or the command (default: inout)",
    )
    limits.add_argument(
        "-s",
        "--snaplen",
        type=positive_int,
        metavar="N",
        help="record at most N bytes of each chunk",
    )
    source.add_argument(
        "--allow-identity-change",
        action="store_true",
        help="run even when the proxy cannot connect upstream as each client (not root): "
        "the server then sees every client as the user running udskit dump",
    )
    limits.add_argument(
        "-B",
        "--buffer-size",
        type=int,
        metavar="KIB",
        help="(ebpf) the kernel's ring buffer in KiB, as tcpdump -B (default 65536: "
        "64 MiB); what it cannot hold while udskit is busy is counted as dropped",
    )
    limits.add_argument(
        "--grace",
        type=seconds(),
        default=2.0,
        metavar="SECONDS",
        help="on exit, how long open connections through the proxy may finish (default 2)",
    )
    parser.set_defaults(handler=handle)
    _split_command(parser)


def _split_command(parser: argparse.ArgumentParser) -> None:
    """`udskit dump [OPTIONS] -- CMD ARGS`: what follows `--` is a command to run and
    capture (args.run), not more of udskit's arguments; argparse alone cannot say
    so while ADDR may come before or after the options."""
    parse = parser.parse_known_args

    def parse_known_args(
        args: Any = None, namespace: Any = None
    ) -> tuple[argparse.Namespace, list[str]]:
        words = list(args) if args is not None else []
        run = None
        if "--" in words:
            cut = words.index("--")
            words, run = words[:cut], words[cut + 1 :]
        ns, extras = parse(words, namespace)
        ns.run = run
        return ns, extras

    parser.parse_known_args = parse_known_args  # type: ignore[method-assign,assignment]


def handle(args: argparse.Namespace, env: Env) -> int:
    from udskit.capture.events import Flow, Selection
    from udskit.capture.printers import Format
    from udskit.endpoints import resolve_user
    from udskit.errors import UsageError

    for name in ("count", "snaplen"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name} must be at least 1")
    selection = Selection(
        pid=args.pid,
        count=args.count,
        snaplen=args.snaplen,
        pname=args.pname,
        uid=resolve_user(args.uid) if args.uid is not None else None,
        flow=None if args.direction == "inout" else Flow(args.direction),
    )
    fmt = (
        Format.HEX
        if args.hex
        else Format.ASCII
        if args.ascii
        else Format.JSON
        if args.json
        else Format.LINE
    )
    printing = args.write is None or args.print or fmt is not Format.LINE
    if args.write == "-" and printing:
        raise UsageError(
            "-w - writes the capture to standard output: leave out --print, -A, -X and --json"
        )
    if args.restore:
        return _restore(args, env)
    if args.read is not None:
        if args.address is not None or args.listen is not None:
            raise UsageError("-r reads a file: give no ADDR or --listen with it")
        return _read(args, env, selection, fmt if printing else None)
    if args.run is not None and not args.run:
        raise UsageError("give the command to run after --: udskit dump -- CMD ARGS")
    if (
        args.address is None
        and args.inode is None
        and not args.run
        and not (args.pid is not None and args.engine != "proxy")
    ):
        raise UsageError("give the socket to capture (ADDR), or -r FILE")
    return _capture(args, env, selection, fmt if printing else None)


def _restore(args: argparse.Namespace, env: Env) -> int:
    from udskit.capture.proxy import restore_leftovers
    from udskit.errors import UsageError

    if args.address is None:
        raise UsageError("--restore needs the socket file path: udskit dump --restore PATH")
    for note in restore_leftovers(args.address):
        env.err(f"udskit dump: {note}")
    return ExitStatus.OK


def _read(args: argparse.Namespace, env: Env, selection: Any, fmt: Any) -> int:
    import os
    from collections.abc import Callable

    from udskit.capture.events import Event
    from udskit.capture.reader import ReadReport, cut_short_warning, replay
    from udskit.capture.sinks import LineSink, PcapngSink
    from udskit.errors import UsageError

    sinks: list[Callable[[Event], None]] = []
    if fmt is not None:
        sinks.append(LineSink(env.stdout, fmt, args.utc))
    writer = None
    if args.write is not None:
        from udskit.capture.pcapng import parse_decode_as

        both = os.path.exists(args.read) and os.path.exists(args.write)
        if both and os.path.samefile(args.read, args.write):
            raise UsageError(
                f"-r {args.read} and -w {args.write} are the same file: writing it "
                "would destroy what is being read; give -w another file"
            )
        port = parse_decode_as(args.decode_as) if args.decode_as else None
        writer = PcapngSink(args.write, port)
        sinks.append(writer.encoder.event)
    report = ReadReport()
    try:
        replay(args.read, sinks, selection, report)
    except BrokenPipeError:
        _quiet_stdout(env)  # `udskit dump -r F | head`: the reader has what it wanted
        return ExitStatus.OK
    finally:
        if writer is not None:
            writer.close()
    warning = cut_short_warning(args.read, report)
    if warning is not None:
        env.err(f"udskit dump: {warning}")
    return ExitStatus.OK


def _quiet_stdout(env: Env) -> None:
    """stdout's reader went away: point the fd at /dev/null so that flushing what is
    still buffered at exit does not fail again (and Python exit with status 120)."""
    import os

    try:
        fd = env.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _capture(args: argparse.Namespace, env: Env, selection: Any, fmt: Any) -> int:
    from udskit.address import parse_address
    from udskit.capture.engine import choose_engine, selection_for
    from udskit.capture.pcapng import parse_decode_as
    from udskit.capture.proxy import ProxyDump
    from udskit.capture.sinks import DumpTap, LineSink, PcapngWriter
    from udskit.endpoints import resolve_group, resolve_user
    from udskit.errors import UdskitError, UsageError
    from udskit.socktype import SocketType

    port = parse_decode_as(args.decode_as) if args.decode_as else None
    sock_type = SocketType.parse(args.type) if args.type else None
    if (args.allow_uid or args.allow_gid) and args.listen is None:
        raise UsageError(
            "--allow-uid/--allow-gid apply to a --listen front; in the file's place the "
            "proxy keeps the file's own permissions"
        )
    dump: Any = choose_engine(  # an EbpfDump, or None for the proxy
        args.engine,
        address=args.address,
        inode=args.inode,
        pid=args.pid,
        listen=args.listen,
        command=args.run,
        ring_bytes=_ring_bytes(args),
        say=env.err,
    )
    if dump is not None:
        selection = selection_for(
            selection, address=args.address, inode=args.inode, pid=args.pid, command=args.run
        )
    if dump is None:
        dump = ProxyDump(
            parse_address(args.address),  # parsed once, here; the value travels inward
            listen=parse_address(args.listen) if args.listen is not None else None,
            sock_type=sock_type,
            grace=args.grace,
            allow_identity_change=args.allow_identity_change,
            allow_uids=[resolve_user(u) for u in args.allow_uid],
            allow_gids=[resolve_group(g) for g in args.allow_gid],
            watchdog=not args.no_watchdog,
        )
    # Opened (so a bad path fails before anything is moved), emptied only once started.
    writer = PcapngWriter(args.write, port) if args.write is not None else None
    if writer is not None and not isinstance(dump, ProxyDump):
        from udskit.capture.engine import EBPF_BACKLOG_BYTES

        writer.backlog_limit = EBPF_BACKLOG_BYTES
    printer = LineSink(env.stdout, fmt, args.utc) if fmt is not None else None
    tap = DumpTap(dump.display_path, selection, writer, printer, on_limit=dump.stop)
    tap.path_per_connection = bool(args.run)
    dump.tap = tap
    started = False
    ended = False  # False while a signal or an error is on its way out
    notes: list[str] = []
    try:
        try:
            dump.start()
            if writer is not None:
                writer.begin()
            started = True
            for warning in dump.warnings:
                env.err(f"udskit dump: {warning}")
            for note in dump.start_notes:
                env.err(f"udskit dump: {note}")
            described = dump.describe()
            if isinstance(dump, ProxyDump):  # the eBPF engine's line names itself
                described += " (engine proxy)"
            env.err(f"udskit dump: {described}; Ctrl-C to stop")
            dump.run()
        finally:
            notes = dump.close()
        ended = True
    finally:
        try:

            def slow_writer() -> None:
                env.err(
                    f"udskit dump: writing the rest of the capture to {args.write}; "
                    "Ctrl-C again to stop at once (the file then ends early)"
                )

            if started or writer is None:
                tap.finish(slow_writer)
            else:
                writer.abandon()
        finally:
            for note in notes:
                env.err(f"udskit dump: {note}")
            if started:
                events, conns = tap.data_events, dump.connections
                env.err(
                    f"udskit dump: {events} data event{'' if events == 1 else 's'} on "
                    f"{conns} connection{'' if conns == 1 else 's'}; {dump.restored_text()}"
                )
            loss = writer.loss() if writer is not None else None
            if loss is not None:
                env.err(f"udskit dump: {loss}")
            if not ended and tap.error is not None and not tap.stdout_closed:
                env.err(f"udskit dump: {_failure_text(tap.error)}")
    dump.raise_signal()  # one that came while putting the original back
    command_status = getattr(dump, "command_status", None)
    if command_status:  # `udskit dump -- CMD` exits as CMD did
        return int(command_status)
    if tap.stdout_closed:
        _quiet_stdout(env)
        return ExitStatus.OK
    if isinstance(tap.error, UdskitError):
        raise tap.error
    if tap.error is not None:
        raise UdskitError(_failure_text(tap.error))
    return ExitStatus.OK


def _ring_bytes(args: argparse.Namespace) -> int:
    from udskit.capture.bpf_loader import RING_BYTES, ring_size
    from udskit.errors import UsageError

    if args.buffer_size is None:
        return RING_BYTES
    if args.buffer_size < 1:
        raise UsageError("-B must be at least 1 (KiB)")
    if args.engine == "proxy":
        raise UsageError("-B sizes the eBPF engine's ring buffer: add --engine ebpf")
    return ring_size(args.buffer_size)


def _failure_text(error: BaseException) -> str:
    from udskit.errors import UdskitError

    return str(error) if isinstance(error, UdskitError) else f"recording failed: {error}"


def demo(tour: Tour) -> None:
    """Capture a real HTTP exchange (curl over a unix socket) into a pcapng file."""
    import shutil
    import subprocess
    import sys

    tour.section("dump: a tcpdump for unix sockets")
    if shutil.which("curl") is None:
        tour.say("curl is not installed: skipping the HTTP capture (apt-get install curl)")
        return
    sock = tour.path("http.sock")
    pcap = str(tour.outdir / "http.pcapng")
    tour.say("an HTTP server on a unix socket (Python's http.server, one file):")
    server = subprocess.Popen(
        [sys.executable, "-c", _HTTP_SERVER, sock],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        tour.wait_for(sock, listening=True)
        dump = tour.spawn("dump", "-w", pcap, "--print", sock, wait_for=None)
        started = _wait_for_start(dump)
        for url in ("http://localhost/hello", "http://localhost/api/items?id=7"):
            tour.out.write(f"   $ curl --unix-socket {sock} {url}\n")
            result = subprocess.run(
                ["curl", "-sS", "--unix-socket", sock, url],
                capture_output=True,
                timeout=30,
                check=False,
            )
            tour.out.write(f"     {result.stdout.decode(errors='replace').strip()}\n")
        out, err = tour.stop(dump)
        for line in (started + out + err).decode(errors="replace").splitlines():
            tour.out.write(f"     {line}\n")
        tour.say(f"the capture is in {pcap}; read it back:")
        tour.show("dump", "-r", pcap, "-A")
        if shutil.which("tshark"):
            tour.say("stock tshark dissects it (no plug-in): URIs and the client in comments")
            argv = ["tshark", "-r", pcap, "-Y", "http.request", "-T", "fields"]
            argv += ["-e", "http.request.uri", "-e", "frame.comment"]
            tour.out.write(f"   $ {' '.join(argv)}\n")
            got = subprocess.run(argv, capture_output=True, timeout=60, check=False)
            for line in got.stdout.decode(errors="replace").splitlines():
                tour.out.write(f"     {line}\n")
        tour.say(f"open {pcap} in Wireshark: Follow > TCP Stream shows each exchange")
    finally:
        server.terminate()
        try:
            server.wait(5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _wait_for_start(proc: Any) -> bytes:
    """What the dump said until it runs (either engine ends its start with "Ctrl-C to
    stop"); a dump that exits instead is a RuntimeError with its words."""
    said = b""
    while b"Ctrl-C to stop" not in said:
        line = proc.stderr.readline()
        if not line:
            raise RuntimeError(f"udskit dump did not start: {said.decode(errors='replace')}")
        said += line
    return said


_HTTP_SERVER = """\
import http.server, socketserver, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("hello from " + self.path + "\\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
    def address_string(self): return "unix"
class S(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
S(sys.argv[1], H).serve_forever()
"""
