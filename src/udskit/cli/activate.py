"""The `udskit activate` command (systemd's socket activation, the manager's end), and
the flags other commands take to be on the service's end (`--from-systemd`) or to
hand their listeners over (`--handoff`)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from udskit.address import UnixAddress
from udskit.cli.env import Env
from udskit.cli.options import octal_mode, positive_int
from udskit.socktype import SocketType

if TYPE_CHECKING:
    import socket

    from udskit.activation import InheritedSocket
    from udskit.demo import Tour
    from udskit.endpoints import Listener
    from udskit.handoff import Stopper
    from udskit.relay.sides import ListenSide

DESCRIPTION = """\
Bind each --listen address (safe bind), then run CMD with those sockets open from fd 3
on, as systemd does for a socket unit: LISTEN_FDS=N, LISTEN_PID=CMD's own pid,
LISTEN_FDNAMES=names, and NOTIFY_SOCKET for sd_notify READY=1. The sockets stay bound
across restarts of CMD: clients queue in the backlog and are never refused.
"""

EPILOG = """\
signals:
  SIGHUP         reload: start a second CMD on the same sockets; once it is ready
                 (READY=1 with --ready-timeout, else at once) send the first SIGTERM
  SIGTERM, SIGINT  passed on to CMD; udskit exits when it does, with its status

examples:
  udskit activate -l /tmp/web.sock -- python3 -m myserver
  udskit activate -l /tmp/web.sock -l tcp-listen:127.0.0.1:8080 --fdname web -- ./srv
  udskit activate -l @api --ready-timeout 5 -- udskit listen --from-systemd --echo
  kill -HUP $(pgrep -f 'udskit activate')      zero-downtime restart of the server

A server that knows nothing of udskit only reads LISTEN_FDS, e.g. in Python:
  sock = socket.socket(fileno=3)   # if os.environ["LISTEN_PID"] == str(os.getpid())

Exit: CMD's status (128+N if a signal N ended it); 1 if a socket operation failed or
CMD never got ready; 2 for bad arguments (nothing was started).
"""


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "activate",
        help="bind sockets and run a server with them (systemd socket activation)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "-l",
        "--listen",
        action="append",
        default=[],
        metavar="ADDR",
        required=True,
        help="an address to bind and pass (PATH, @NAME, seqpacket:PATH, dgram:@NAME, "
        "tcp-listen:[HOST:]PORT); repeatable, passed in order from fd 3",
    )
    p.add_argument(
        "--fdname",
        action="append",
        default=[],
        metavar="NAME",
        help="LISTEN_FDNAMES entry for each --listen in order (one name: for all)",
    )
    p.add_argument(
        "-t",
        "--type",
        choices=("stream", "seqpacket", "dgram"),
        default="stream",
        help="socket type of unix addresses without a type word (default: stream)",
    )
    p.add_argument(
        "--ready-timeout",
        type=float,
        metavar="SECONDS",
        help="wait this long for READY=1 on NOTIFY_SOCKET from each CMD (first start "
        "and reloads); without it a started CMD counts as ready",
    )
    p.add_argument("--backlog", type=positive_int, default=4096, metavar="N", help="listen backlog")
    p.add_argument("--mode", type=octal_mode, help="socket file mode, e.g. 0660")
    p.add_argument("--owner", help="socket file owner (name or uid)")
    p.add_argument("--group", help="socket file group (name or gid)")
    p.add_argument("-v", "--verbose", action="store_true", help="log starts, readiness, exits")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ARGS")
    p.set_defaults(handler=handle)


def open_activation_sides(
    texts: list[str],
    default_type: str,
    *,
    backlog: int = 4096,
    mode: int | None = None,
    owner: str | None = None,
    group: str | None = None,
) -> list[ListenSide]:
    """Bind each address (an endpoint or a bare unix address) as a listening side."""
    from udskit.endpoint_spec import EndpointKind, EndpointSpec, parse_endpoint
    from udskit.errors import UsageError
    from udskit.relay.sides import open_listen_side
    from udskit.socktype import SocketType

    sides: list[ListenSide] = []
    try:
        for text in texts:
            spec = parse_endpoint(text, SocketType.parse(default_type))
            if spec.kind is EndpointKind.UNIX:
                spec = EndpointSpec(
                    EndpointKind.UNIX_LISTEN, address=spec.address, sock_type=spec.sock_type
                )
            elif spec.kind is EndpointKind.TCP:
                spec = EndpointSpec(EndpointKind.TCP_LISTEN, host=spec.host, port=spec.port)
            elif not spec.listening:
                raise UsageError(f"--listen {text}: give an address to bind, not {spec.kind.value}")
            is_file = spec.address is not None and spec.address.is_pathname
            side = open_listen_side(
                spec,
                backlog=backlog,
                mode=mode if is_file else None,
                owner=owner if is_file else None,
                group=group if is_file else None,
            )
            sides.append(side)
            # A child expects blocking sockets, as systemd passes them; O_NONBLOCK lives
            # in the open file description, which the child shares.
            side.sock.setblocking(True)
    except BaseException:
        for side in sides:
            side.close()
        raise
    return sides


def handle(args: argparse.Namespace, env: Env) -> int:
    from udskit.activation import Activator

    command = list(args.argv)
    if command[:1] == ["--"]:
        command = command[1:]
    sides = open_activation_sides(
        args.listen,
        args.type,
        backlog=args.backlog,
        mode=args.mode,
        owner=args.owner,
        group=args.group,
    )
    try:
        activator = Activator(
            [side.sock for side in sides],
            command,
            names=args.fdname,
            ready_timeout=args.ready_timeout,
            log=lambda line: env.err(f"udskit activate: {line}"),
            verbose=args.verbose,
        )
        if args.verbose:
            for side, name in zip(sides, activator.names, strict=True):
                env.err(f"udskit activate: passing {side.spec} as {name}")
        return activator.run()
    finally:
        for side in sides:
            side.close()


# -- for listen and relay -------------------------------------------------------------
def inherited_socket(name: str | None, command: str) -> InheritedSocket:
    """The one inherited socket `command` serves: named `name`, or the only one."""
    from udskit.activation import listen_fds
    from udskit.errors import ActivationError

    found = listen_fds()
    if not found:
        raise ActivationError(
            "no sockets were passed (LISTEN_FDS is not set): run under systemd, "
            "systemd-socket-activate or `udskit activate`"
        )
    if name is not None:
        chosen = [s for s in found if s.name == name]
        if not chosen:
            names = ", ".join(sorted({s.name for s in found}))
            raise ActivationError(f"no inherited socket is named {name!r} (there are: {names})")
    else:
        chosen = found
    for extra in found:
        if extra is not chosen[0]:
            extra.sock.close()
    if len(chosen) > 1 or (name is None and len(found) > 1):
        raise ActivationError(
            f"{len(found)} sockets were passed; {command} serves one: name it "
            "(--fdname on the manager's side)"
        )
    return chosen[0]


def add_handoff_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--handoff",
        metavar="ADDR",
        help="zero-downtime restart: take the listening socket from the instance that "
        "offers on control socket ADDR (which then stops accepting, drains and exits), "
        "or bind afresh if none does; then offer it on ADDR in turn",
    )
    parser.add_argument(
        "--must-take",
        action="store_true",
        help="with --handoff: fail if no running instance offers on ADDR",
    )


def add_from_systemd_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--from-systemd",
        action="store_true",
        help="serve the socket inherited by socket activation (LISTEN_FDS) rather than "
        "binding ADDR: under systemd, systemd-socket-activate or `udskit activate`",
    )
    parser.add_argument(
        "--fdname",
        metavar="NAME",
        help="with --from-systemd: the inherited socket named NAME (LISTEN_FDNAMES)",
    )


def take_or_none(control: str, want: list[Any], env: Env, command: str, must: bool) -> list[Any]:
    """Sockets taken over on `control`, or [] when nobody offers there (unless `must`)."""
    from udskit.errors import HandoffError
    from udskit.handoff import take_listeners

    try:
        taken = take_listeners(control, want)
    except HandoffError as err:
        if must or "nobody offers" not in str(err):
            raise
        env.err(f"udskit {command}: nobody offers on {control} yet; binding afresh")
        return []
    env.err(f"udskit {command}: took over {', '.join(str(w) for w in want)} from {control}")
    return taken


@contextmanager
def serving_listener(
    args: argparse.Namespace, env: Env, sock_type: SocketType, *, passcred: bool = False
) -> Iterator[tuple[Listener, Stopper | None]]:
    """The listener `udskit listen` serves: inherited (--from-systemd), taken over
    (--handoff), or bound afresh; with --handoff, offered to a successor meanwhile
    (the Stopper is set when one took it: stop accepting, drain). `passcred`: each
    datagram comes with its sender's credentials (SO_PASSCRED), for --allow-uid."""
    from udskit.address import format_address, parse_address
    from udskit.endpoints import Listener, open_listener
    from udskit.errors import UsageError
    from udskit.handoff import HandoffOffer, ListenerInfo, Stopper, adopt_listener
    from udskit.signals import start_worker

    if args.from_systemd and args.handoff:
        raise UsageError("--from-systemd and --handoff do not mix: the manager keeps the socket")
    if args.address is None and not args.from_systemd:
        raise UsageError("give ADDR (or --from-systemd)")
    if args.handoff and sock_type is SocketType.DGRAM:
        raise UsageError("--handoff hands over stream and seqpacket listeners, not datagrams")
    listener: Listener
    if args.from_systemd:
        inherited = inherited_socket(args.fdname, "udskit listen")
        got = inherited.type
        if got is None or got is not sock_type:
            inherited.sock.close()
            what = "a TCP socket" if got is None else f"a {got.value} socket"
            raise UsageError(
                f"the inherited socket is {what}; udskit listen --type {sock_type.value} "
                f"serves unix {sock_type.value} sockets (try --type)"
            )
        address = inherited.address
        assert isinstance(address, UnixAddress)
        listener = Listener(inherited.sock, address, sock_type, None, False)  # never unlinked
    else:
        taken = []
        if args.handoff:
            want = ListenerInfo(
                "unix", sock_type.value, format_address(parse_address(args.address))
            )
            taken = take_or_none(args.handoff, [want], env, "listen", args.must_take)
        if taken:
            listener = adopt_listener(taken[0])
        else:
            listener = open_listener(
                args.address,
                sock_type,
                backlog=args.backlog,
                mode=args.mode,
                owner=args.owner,
                group=args.group,
                replace_stale=not args.no_replace,
                passcred=passcred,
            )
            for note in listener.notes:
                env.err(f"udskit listen: {note}")
    if passcred:  # an inherited or adopted socket too
        import socket

        listener.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    stopper: Stopper | None = None
    offer: HandoffOffer | None = None
    thread = None
    finished = False
    try:
        if args.handoff:
            stopper = Stopper()
            offer = HandoffOffer(
                args.handoff, [listener.sock], log=lambda line: env.err(f"udskit listen: {line}")
            )
            flag = stopper

            def release() -> None:
                listener.detach_file()  # the successor's file now
                flag.set()

            thread = start_worker(offer.serve, release, lambda: finished, name="udskit-handoff")
        tell_ready(env, "listen")
        yield listener, stopper
    finally:
        finished = True
        if thread is not None:
            thread.join()
        if offer is not None:
            offer.close()
        if stopper is not None:
            stopper.close()
        listener.close()


def tell_ready(env: Env, command: str) -> None:
    """READY=1 to NOTIFY_SOCKET, if a supervisor asked for it."""
    from udskit.activation import notify
    from udskit.errors import ActivationError

    try:
        notify("READY=1")
    except ActivationError as err:
        env.err(f"udskit {command}: {err}")


def set_blocking(sock: socket.socket) -> None:
    sock.setblocking(True)


def demo(tour: Tour) -> None:
    """Socket activation and a reload, then a hand-off between two relays."""
    import signal
    import subprocess
    import sys

    tour.section("activate: systemd's socket activation, and a reload without downtime")
    path = tour.path("activated.sock")
    tour.say(
        "udskit binds the socket and runs a plain Python server with it as fd 3 "
        "(LISTEN_FDS=1, LISTEN_PID = the server's own pid); it answers with its pid:"
    )
    server = tour.path("server.py")
    with open(server, "w") as f:
        f.write(_PLAIN_SERVER)
    tour.say(f"({server}: socket.socket(fileno=3), accept, answer; on SIGTERM, finish and exit)")
    proc = tour.spawn(
        "activate", "-l", path, "--", sys.executable, server, wait_for=path, listening=True
    )
    first = tour.show("send", path, "hello").stdout
    tour.say("SIGHUP: a second server starts on the same socket, then the first gets SIGTERM:")
    proc.send_signal(signal.SIGHUP)
    for _ in range(500):
        if _ask(path) != first.split(b" got")[0]:
            break
    tour.show("send", path, "hello again")
    _out, err = tour.stop(proc)
    for line in err.decode(errors="replace").splitlines():
        tour.say(f"  {line}")

    tour.section("pass: a descriptor sent over a unix socket, and a listener hand-off")
    tour.say("A pipe's write end passed to another process with SCM_RIGHTS (udskit.send_fds):")
    result = subprocess.run(
        [sys.executable, "-c", _FD_PASS], capture_output=True, timeout=30, check=False
    )
    for line in result.stdout.decode(errors="replace").splitlines():
        tour.say(f"  {line}")
    front = tour.path("front.sock")
    control = tour.path("handoff.ctl")
    backend = tour.path("activated-backend.sock")
    tour.say("Two relays in turn on one front socket: the second takes the listening socket")
    tour.say("from the first (--handoff), which stops accepting, drains and exits:")
    echo = tour.spawn("listen", backend, "--echo", "--concurrent", wait_for=backend, listening=True)
    old = tour.spawn(
        "relay", f"unix-listen:{front}", backend, "--handoff", control, wait_for=control
    )
    tour.show("relay", "-", front, input=b"served by the first relay\n")
    new = tour.spawn("relay", f"unix-listen:{front}", backend, "--handoff", control)
    _old_out, old_err = old.communicate(timeout=30)
    tour.say(f"the first relay exited with status {old.returncode}; it said:")
    for line in old_err.decode(errors="replace").splitlines():
        tour.say(f"  {line}")
    tour.show("relay", "-", front, input=b"served by the second relay\n")
    _out, err = tour.stop(new)
    tour.say(f"the second relay said: {err.decode().strip()}")
    tour.stop(echo)


def _ask(path: str) -> bytes:
    import socket

    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(b"who")
        return sock.recv(1024).split(b" got")[0]


#: Sends a pipe's write end to a child process, which writes into it.
_FD_PASS = """
import os, socket, subprocess, sys
from udskit import recv_message, send_fds
parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
os.set_inheritable(child.fileno(), True)
code = ("import os, socket, sys; from udskit import recv_message; "
        "s = socket.socket(fileno=int(sys.argv[1])); m = recv_message(s, 100, 1); "
        "os.write(m.fds[0], b'written by pid %d through a passed fd' % os.getpid())")
fd = child.fileno()
proc = subprocess.Popen([sys.executable, "-c", code, str(fd)], pass_fds=[fd])
r, w = os.pipe()
send_fds(parent, [w], b"here is a pipe")
os.close(w)
proc.wait()
print(f"pid {os.getpid()} sent fd {w}; the pipe says: {os.read(r, 100).decode()}")
"""


#: A server that only knows the LISTEN_FDS convention: answers with its pid; on SIGTERM
#: it finishes the client in hand and exits (what a reload without errors needs).
_PLAIN_SERVER = """\
import os, signal, socket
assert os.environ["LISTEN_PID"] == str(os.getpid())
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
srv = socket.socket(fileno=3)
srv.settimeout(0.2)
while not stop:
    try:
        conn, _ = srv.accept()
    except (TimeoutError, BlockingIOError, InterruptedError):
        continue
    with conn:
        conn.settimeout(5)
        data = conn.recv(1024)
        conn.sendall(b"pid %d got %s" % (os.getpid(), data.strip()))
"""


# -- relay: systemd:NAME and --handoff ---------------------------------------------------
def relay_left(args: argparse.Namespace, env: Env) -> tuple[Any, ListenSide | None]:
    """LEFT for `udskit relay` when it is inherited (systemd:NAME) or handed over
    (--handoff): the socket or Listener to adopt, and the ListenSide we own (None
    for an inherited socket: the service manager owns it). (None, None): neither."""
    from udskit.address import format_address
    from udskit.endpoint_spec import EndpointKind, parse_endpoint
    from udskit.errors import UsageError
    from udskit.handoff import ListenerInfo, adopt_listener
    from udskit.relay.sides import ListenSide, open_listen_side

    text: str = args.left
    if text.startswith("systemd:"):
        if args.handoff:
            raise UsageError("systemd:NAME and --handoff do not mix: the manager keeps the socket")
        inherited = inherited_socket(text[len("systemd:") :] or None, "udskit relay")
        # Clients already queue in its backlog, so it is ready for them now.
        tell_ready(env, "relay")
        return inherited.sock, None
    if not args.handoff:
        return None, None
    spec = parse_endpoint(text, SocketType.parse(args.type or "stream"))
    if not spec.listening or spec.sock_type is SocketType.DGRAM:
        raise UsageError(
            "--handoff hands over a listening LEFT (unix-listen:, abstract-listen:, "
            "tcp-listen:) of stream or seqpacket type"
        )
    if spec.kind is EndpointKind.TCP_LISTEN:
        if spec.port == 0:
            raise UsageError("--handoff needs a fixed port: the successor names the same one")
        host = f"[{spec.host}]" if spec.host and ":" in spec.host else spec.host
        want = ListenerInfo("tcp", "stream", f"{host}:{spec.port}")
    else:
        assert spec.address is not None
        want = ListenerInfo("unix", spec.sock_type.value, format_address(spec.address))
    taken = take_or_none(args.handoff, [want], env, "relay", args.must_take)
    if taken:
        sock = taken[0]
        is_unix = spec.kind is EndpointKind.UNIX_LISTEN
        side = ListenSide(sock, spec, adopt_listener(sock) if is_unix else None, owned=True)
    else:
        side = open_listen_side(
            spec, backlog=args.backlog, mode=args.mode, owner=args.owner, group=args.group
        )
    return (side.listener or side.sock), side


#: How long a relay that handed its listener over keeps forwarding the connections it
#: already has before it exits anyway (a guess: long downloads would want more).
HANDOFF_GRACE = 60.0


def serve_relay_handing_off(relay: Any, side: ListenSide, control: str, env: Env) -> None:
    """Run `relay` while offering its listener on `control`; once a successor took
    it, stop accepting, drain the open connections, and return."""
    from udskit.handoff import HandoffOffer
    from udskit.relay.loop import IN

    def log(line: str) -> None:
        env.err(f"udskit relay: {line}")

    handed = False
    offer: HandoffOffer | None = None
    try:
        relay.open()
        offer = HandoffOffer(control, [side.sock], log=log)
        loop = relay.loop
        control_fd = offer.fileno()
        listen_fd = side.sock.fileno()

        def release() -> None:
            loop.unregister(listen_fd)  # stop accepting: the successor does now
            if side.listener is not None:
                side.listener.detach_file()
            side.close()

        def on_control(_events: int) -> None:
            nonlocal handed
            assert offer is not None
            if offer.handle(release):
                handed = True
                loop.unregister(control_fd)
                loop.stop()

        loop.register(control_fd, IN, on_control)
        tell_ready(env, "relay")
        loop.run()
        if handed:
            relay.drain(linger=0.0, grace=HANDOFF_GRACE)
    finally:
        relay.close()
        if offer is not None:
            offer.close()
        side.close()
