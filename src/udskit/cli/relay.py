"""The `udskit relay` command: socat-style forwarding between unix, abstract and TCP
endpoints, one upstream connection per client, zero-copy where it can."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from udskit.cli.env import Env, ExitStatus
from udskit.cli.options import add_listener_options, positive_int
from udskit.safetext import escape_text, json_fields

if TYPE_CHECKING:
    from udskit.demo import Tour
    from udskit.endpoint_spec import EndpointSpec
    from udskit.relay import RelayEvent
    from udskit.socktype import SocketType
    from udskit.tap import ConnectionInfo, Direction

DESCRIPTION = """\
Forward every client of LEFT to its own connection to RIGHT, both ways, until stopped.
EOF one way is passed on as shutdown(SHUT_WR) and the other way keeps flowing
(half-close); a reset closes both sides. Stream to stream moves bytes with splice(2)
(never copied into udskit); -vv, seqpacket and datagrams copy through one buffer.
"""

EPILOG = """\
endpoints:
  unix:PATH, PATH            connect to a socket file
  @NAME, abstract:NAME       connect to an abstract name (\\xHH escapes)
  unix-listen:PATH           listen on a socket file (safe bind; removed on exit)
  abstract-listen:NAME       listen on an abstract name
  tcp:HOST:PORT              connect over TCP ([::1]:PORT for IPv6)
  tcp-listen:[HOST:]PORT     listen over TCP (HOST defaults to 127.0.0.1)
  -                          stdin/stdout (LEFT or RIGHT, one connection)
  exec:CMD                   run CMD per connection, its stdin/stdout on a socketpair
  seqpacket:ENDPOINT, dgram:ENDPOINT
                             unix socket type (or --type for both unix sides)
  unix-recvfrom:PATH, abstract-recvfrom:NAME, unix-sendto:PATH, abstract-sendto:NAME
                             datagram listen/connect sides; each sender gets its own
                             upstream socket and its replies back

examples:
  udskit relay tcp-listen:8080 unix:/run/app.sock      reach a unix-only server by TCP
  udskit relay unix-listen:/tmp/web.sock tcp:127.0.0.1:8000
  udskit relay abstract-listen:web tcp:127.0.0.1:8000  curl --abstract-unix-socket web
  mv /run/app.sock /run/app.sock.orig && \\
  udskit relay -vv unix-listen:/run/app.sock unix:/run/app.sock.orig
                                                       man in the middle, one process
  udskit relay unix-listen:/run/r.sock /run/redis.sock --mode 0660 --group redis \\
      --allow-uid 1000 --max-clients 100
  udskit relay - unix:/run/app.sock                    like nc -U
  udskit relay --type seqpacket unix-listen:/tmp/a unix:/tmp/b
  udskit relay unix-recvfrom:/tmp/front.dgram unix-sendto:/tmp/back.dgram
  udskit relay unix-listen:/run/web.sock tcp:127.0.0.1:8000 --handoff /run/web.ctl
                                                       run it again to restart with no
                                                       refused client (the first drains)
  udskit relay systemd:web unix:/run/app.sock          LEFT inherited (LISTEN_FDS, name web)

who can connect: an abstract name or a TCP port has no permissions, so a listening
LEFT in front of a socket file RIGHT admits only clients who could have connected to
that file themselves (write on the file, search on each directory; root always), by
SO_PEERCRED/SO_PEERGROUPS for unix clients and, for loopback TCP clients, the uid the
kernel records for their socket (inet_diag) with that user's groups. --allow-uid and
--allow-gid replace that rule with their lists (unix LEFT only). The start line says
who is admitted; refused clients are closed before anything reaches RIGHT.

-v prints one line per connection (client pid, uid, command for unix clients) and the
copy mode; -vv also one line per chunk; --json prints the same as JSON lines.
Exit: 0 when stopped (Ctrl-C: 130, SIGTERM: 143, socket file removed either way),
1 if a socket operation failed, 2 for bad arguments.
"""


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "relay",
        help="forward between unix, abstract and TCP endpoints (like socat), zero-copy",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("left", metavar="LEFT", help="where clients come in (usually a *-listen:)")
    p.add_argument("right", metavar="RIGHT", help="where each client is forwarded")
    p.add_argument(
        "-t",
        "--type",
        choices=("stream", "seqpacket", "dgram"),
        default=None,
        help="socket type of unix endpoints without a type word (default: the type of "
        "the socket bound at a unix connect side, else stream)",
    )
    p.add_argument("--max-clients", type=positive_int, metavar="N", help="at most N at once")
    add_listener_options(p)
    p.add_argument(
        "--connect-timeout",
        type=positive_seconds,
        default=10.0,
        metavar="SECONDS",
        help="how long to retry an upstream whose backlog is full (default: 10)",
    )
    p.add_argument(
        "--no-splice", action="store_true", help="copy through a buffer even stream to stream"
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="-v: a line per connection and its copy mode; -vv: also per chunk",
    )
    p.add_argument("--json", action="store_true", help="events as JSON lines")
    from udskit.cli.activate import add_handoff_option

    add_handoff_option(p)
    p.set_defaults(handler=handle)


def positive_seconds(text: str) -> float:
    """A duration in seconds, more than 0 and finite (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):  # also false for nan
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {text}")
    return value


def handle(args: argparse.Namespace, env: Env) -> int:
    from udskit.cli.activate import relay_left, serve_relay_handing_off
    from udskit.endpoint_spec import EndpointKind, parse_endpoint
    from udskit.endpoints import resolve_group, resolve_user
    from udskit.relay import Relay
    from udskit.socktype import SocketType

    default_type = SocketType.parse(args.type or "stream")
    right = parse_endpoint(args.right, default_type)
    adopted, side = relay_left(args, env)  # systemd:NAME, or --handoff
    left = parse_endpoint(args.left, default_type) if adopted is None else adopted
    if args.type is None and adopted is None:
        left, right = _bound_types(args.left, left, args.right, right)
    uses_stdout = EndpointKind.STDIO is right.kind or (
        adopted is None and left.kind is EndpointKind.STDIO
    )
    log = _Log(env, json=args.json, to_stdout=args.json and not uses_stdout)
    tap = _ChunkLog(log) if args.verbose >= 2 else None
    relay = Relay(
        left,
        right,
        tap=tap,
        on_event=log.event if (args.verbose or args.json) else None,
        max_clients=args.max_clients,
        allow_uids=[resolve_user(u) for u in args.allow_uid],
        allow_gids=[resolve_group(g) for g in args.allow_gid],
        backlog=args.backlog,
        mode=args.mode if adopted is None else None,  # (applied when we bound it)
        owner=args.owner if adopted is None else None,
        group=args.group if adopted is None else None,
        splice=not args.no_splice,
        connect_timeout=args.connect_timeout,
        default_type=default_type,
        stdio=(env.stdin, env.stdout),
    )
    if side is not None:
        serve_relay_handing_off(relay, side, args.handoff, env)
        return ExitStatus.OK
    relay.open()
    bound = relay.listen_endpoint
    if adopted is None and str(bound) != str(left) and not (args.verbose or args.json):
        # The kernel chose (tcp-listen:0, an autobound '@'): a user cannot connect to
        # what they cannot see. -v and --json say it in their own listening event.
        env.err(f"udskit relay: listening on {bound}")
    if relay.admission.filters:
        env.err(f"udskit relay: {bound} admits {relay.admission_text()}")
    relay.serve_forever()
    return ExitStatus.OK


def _typed(text: str) -> bool:
    """Does the endpoint text carry its own type (`dgram:`, `unix-sendto:`...)?"""
    from udskit.endpoint_spec import parse_endpoint
    from udskit.socktype import SocketType

    as_stream = parse_endpoint(text, SocketType.STREAM).sock_type
    return parse_endpoint(text, SocketType.DGRAM).sock_type is as_stream


def _bound_types(
    left_text: str, left: EndpointSpec, right_text: str, right: EndpointSpec
) -> tuple[EndpointSpec, EndpointSpec]:
    """Without --type: a unix connect side without a type word takes the type of the
    socket bound there (read from sock_diag, no connection made), and an untyped unix
    listen side on the other end follows it, so `relay unix-listen:A unix:DGRAM` relays
    datagrams instead of failing with EPROTOTYPE."""
    from dataclasses import replace

    from udskit.endpoint_spec import EndpointKind
    from udskit.probe import bound_type

    def connect_type(text: str, spec: EndpointSpec) -> SocketType | None:
        if spec.kind is EndpointKind.UNIX and spec.address is not None and not _typed(text):
            return bound_type(spec.address)
        return None

    found = connect_type(right_text, right) or connect_type(left_text, left)
    if found is None:
        return left, right

    def follow(text: str, spec: EndpointSpec) -> EndpointSpec:
        return replace(spec, sock_type=found) if spec.is_unix and not _typed(text) else spec

    return follow(left_text, left), follow(right_text, right)


class _Log:
    """Renders relay events as lines on stderr (or JSON lines)."""

    def __init__(self, env: Env, *, json: bool, to_stdout: bool) -> None:
        self.env = env
        self.json = json
        self.to_stdout = to_stdout

    def line(self, text: str) -> None:
        if self.to_stdout:
            self.env.out(text)
        else:
            self.env.err(text)

    def record(self, record: dict[str, object]) -> None:
        import json

        self.line(json.dumps(record, separators=(",", ":")))

    def event(self, event: RelayEvent) -> None:
        from udskit.relay import EventKind

        conn = event.conn
        if self.json:
            record: dict[str, object] = {"event": event.kind.value, "time_ns": event.time_ns}
            if conn is not None:
                record.update(
                    id=conn.id,
                    listen=conn.listen,
                    upstream=conn.upstream,
                    pid=conn.client.pid,
                    uid=conn.client.uid,
                    gid=conn.client.gid,
                )
                record.update(json_fields("command", conn.client.command))
            if event.mode is not None:
                record["mode"] = event.mode.value
            if event.kind in (EventKind.CLOSED, EventKind.RESET):
                record.update(c2s_bytes=event.c2s_bytes, s2c_bytes=event.s2c_bytes)
                record["first"] = event.first.value if event.first else None
            if event.detail:
                record["detail"] = event.detail
            self.record(record)
            return
        kind = event.kind
        if conn is None:
            if kind is EventKind.LISTENING:
                self.line(f"udskit relay: listening on {event.detail}")
            else:
                self.line(f"udskit relay: {kind.value}: {event.detail}")
            return
        tag = f"#{conn.id}"
        if kind is EventKind.ACCEPTED:
            self.line(f"{tag} accepted {_who(conn)}")
        elif kind is EventKind.CONNECTED:
            extra = f" {event.detail}" if event.detail else ""
            mode = event.mode.value if event.mode else "?"
            self.line(f"{tag} connected to {conn.upstream} ({mode}){extra}")
        elif kind is EventKind.CLOSED:
            first = {"c2s": "client", "s2c": "upstream"}.get(
                event.first.value if event.first else ""
            )
            ended = f", {first} ended first" if first else ""
            why = f" ({event.detail})" if event.detail else ""
            self.line(
                f"{tag} closed: {event.c2s_bytes} bytes to upstream, {event.s2c_bytes} "
                f"bytes back{ended}{why}"
            )
        elif kind is EventKind.RESET:
            self.line(
                f"{tag} reset: {event.detail}; {event.c2s_bytes} bytes to upstream, "
                f"{event.s2c_bytes} bytes back"
            )
        elif kind is EventKind.REFUSED:
            self.line(f"{tag} refused {_who(conn)}: {event.detail}")
        else:
            self.line(f"{tag} {kind.value}: {event.detail}")


def _who(conn: ConnectionInfo) -> str:
    c = conn.client
    if c.uid is None:
        return "a TCP client" if conn.listen.startswith("tcp") else "a client"
    command = f" ({escape_text(c.command)})" if c.command else ""
    pid = f"pid {c.pid}{command}" if c.pid else "pid ?"
    return f"{pid} uid {c.uid} gid {c.gid}"


class _ChunkLog:
    """-vv: a Tap that prints one line per chunk with a short, escaped preview."""

    def __init__(self, log: _Log) -> None:
        self.log = log

    def opened(self, conn: ConnectionInfo, time_ns: int) -> None:
        pass

    def data(
        self, conn: ConnectionInfo, direction: Direction, data: bytes | memoryview, time_ns: int
    ) -> None:
        from udskit.safetext import escape_bytes

        arrow = "->" if direction.value == "c2s" else "<-"
        if self.log.json:
            self.log.record(
                {
                    "event": "data",
                    "time_ns": time_ns,
                    "id": conn.id,
                    "direction": direction.value,
                    "bytes": len(data),
                }
            )
            return
        preview = escape_bytes(bytes(data[:64]))
        more = "..." if len(data) > 64 else ""
        self.log.line(f"#{conn.id} {arrow} {len(data)} bytes: {preview}{more}")

    def closed(self, conn: ConnectionInfo, first: Direction | None, time_ns: int) -> None:
        pass


def demo(tour: Tour) -> None:
    """A relay in front of an echo server, reached over TCP and over an abstract name."""
    import socket
    import subprocess
    import sys

    tour.section("relay: forward between unix, abstract and TCP endpoints")
    backend = tour.path("echo.sock")
    front = tour.path("front.sock")
    echo = subprocess.Popen(
        [sys.executable, "-c", _ECHO_SERVER, backend],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        tour.say(f"an echo server listens on {backend}; a relay stands in front of it:")
        tour.wait_for(backend, listening=True)
        relay = tour.spawn("relay", "-v", f"unix-listen:{front}", f"unix:{backend}", wait_for=front)
        tour.show("relay", "-", f"unix:{front}", input=b"hello through the relay\n")
        tour.say("the relay's -v log (client pid/uid from SO_PEERCRED; splice = zero-copy):")
        _, err = tour.stop(relay)
        for line in err.decode(errors="replace").splitlines():
            tour.say(f"  {line}")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        tour.say("the same echo server reached over TCP (127.0.0.1 only):")
        relay = tour.spawn(
            "relay", f"tcp-listen:127.0.0.1:{port}", f"unix:{backend}", wait_for=None
        )
        _wait_tcp(port)
        tour.show("relay", "-", f"tcp:127.0.0.1:{port}", input=b"over TCP and back\n")
        tour.stop(relay)
        tour.say(f"after SIGTERM the relay removed its socket file: exists={_exists(front)}")
    finally:
        echo.kill()
        echo.wait()


def _exists(path: str) -> bool:
    import os

    return os.path.exists(path)


def _wait_tcp(port: int) -> None:
    """Wait until 127.0.0.1:port listens, read from /proc/net/tcp (no stray connect)."""
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open("/proc/net/tcp") as f:
            if any(
                line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "0A"
                for line in f.readlines()[1:]
            ):
                return
        time.sleep(0.02)
    raise RuntimeError(f"relay did not listen on 127.0.0.1:{port}")


#: A tiny echo server for the demo (one thread per client).
_ECHO_SERVER = """
import socket, sys, threading
srv = socket.socket(socket.AF_UNIX)
srv.bind(sys.argv[1]); srv.listen(64)
def serve(c):
    with c:
        while data := c.recv(65536):
            c.sendall(data)
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""
