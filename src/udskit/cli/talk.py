"""The talk commands: `udskit listen`, `udskit connect`, `udskit send` (nc and socat's jobs)."""

from __future__ import annotations

import argparse
import errno
from typing import TYPE_CHECKING, Any

from udskit.cli.env import Env, ExitStatus
from udskit.cli.options import add_listener_options, buffer_size, positive_int, seconds

if TYPE_CHECKING:
    from udskit.address import UnixAddress
    from udskit.errors import SocketError
    from udskit.socktype import SocketType
    from udskit.talk import Observer
    from udskit.talkevents import ServerEvent

TYPES = ("stream", "dgram", "seqpacket")

LISTEN_EXAMPLES = """\
examples:
  udskit listen /tmp/app.sock                     print what clients send (like nc -lU)
  udskit listen /tmp/app.sock --echo --concurrent an echo server for many clients
  udskit listen @ucase --type dgram --upper --buffer 10
                                                  the uppercase datagram server of TLPI
  udskit listen /run/x.sock --exec 'date'         run a command per connection (inetd)
  udskit listen /run/x.sock --mode 0660 --group adm --allow-uid 1000
  udskit listen /tmp/app.sock --json --concurrent | jq -c 'select(.event=="accepted")'
                                                  who connects: pid, uid, gid, groups
  udskit listen /tmp/app.sock --json | jq -r 'select(.event=="data") | .text'

--json prints one JSON object per line on stdout: listening (address, type, pid),
accepted (connection number, the client's pid, uid, gid, groups and command, from
SO_PEERCRED), data (connection, or a datagram's sender and credentials; length,
truncated, the exact bytes in base64 as "data", and "text" when they are UTF-8),
closed (messages, bytes, error), refused (--allow-uid/--allow-gid) and stopped (the
reason and the totals). Addresses paste back into udskit; bytes that are not UTF-8
in them are also given exactly in *_b64 fields.

A socket file left by a dead server is replaced; a live one is never touched.
The socket file is removed when the server stops (also on Ctrl-C and SIGTERM).
"""

CONNECT_EXAMPLES = """\
examples:
  udskit connect /tmp/app.sock < request.bin      stdin to the server, its answer to stdout
  printf 'PING\\r\\n' | udskit connect /run/redis/redis.sock
  udskit connect @ucase --type dgram              one datagram per line of stdin

End of stdin shuts down the write side (the server still answers); udskit exits when
the server closes. Datagram clients are autobound so replies can reach them.
"""

SEND_EXAMPLES = """\
examples:
  udskit send @ucase --type dgram hello world 'long message'
  udskit send /tmp/d.sock --type dgram --reply-size 10 'long message'
  udskit send /tmp/s.sock --type seqpacket one two three
  udskit send /tmp/app.sock 'GET / HTTP/1.0' ''   (stream: each MSG + newline, then EOF)

Each reply is printed on its own line. A reply longer than --reply-size is printed cut
and reported on stderr with its real length (MSG_TRUNC).
"""


def _add_type(parser: argparse.ArgumentParser, *, client: bool = False) -> None:
    parser.add_argument(
        "-t",
        "--type",
        choices=TYPES,
        default=None if client else "stream",
        help="socket type (default: the type of the socket bound at ADDR, else stream)"
        if client
        else "socket type (default: stream); must match the other side's",
    )


def _client_type(given: str | None, address: UnixAddress) -> SocketType:
    """--type, or else the type of the socket bound at the address (probe.bound_type,
    read from sock_diag: no connection is made), or else stream."""
    from udskit.probe import bound_type
    from udskit.socktype import SocketType

    if given is not None:
        return SocketType(given)
    return bound_type(address) or SocketType.STREAM


#: errnos of a send that say the address, not the message, is the trouble.
_ADDRESS_ERRNOS = frozenset({errno.ENOENT, errno.ECONNREFUSED, errno.EACCES, errno.EPERM})


def _doctor_hint(err: SocketError, address: UnixAddress) -> SocketError:
    """The same SocketError, pointing at `udskit doctor ADDR` for the whole story."""
    import shlex

    from udskit.errors import PeerClosed, SocketError

    # Only where the address itself may be at fault: not a too-big message, a slow
    # reader or a peer that hung up mid-conversation.
    if isinstance(err, PeerClosed) or (
        err.op not in ("connect", "bind") and err.errno not in _ADDRESS_ERRNOS
    ):
        return err
    hint = f"{err.message} (`udskit doctor {shlex.quote(str(address))}` explains more)"
    return SocketError(err.op, err.address, err.errno, hint)


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "listen",
        help="serve on an address: print, echo, uppercase or exec",
        description="Bind ADDR safely and serve it.",
        epilog=LISTEN_EXAMPLES,
        formatter_class=fmt,
    )
    p.add_argument(
        "address",
        metavar="ADDR",
        nargs="?",
        help="socket path, @abstract-name, or @ (autobind); not with --from-systemd",
    )
    _add_type(p)
    action = p.add_mutually_exclusive_group()
    action.add_argument("--echo", action="store_true", help="send back what is received")
    action.add_argument("--upper", action="store_true", help="send it back in upper case")
    action.add_argument(
        "--exec",
        metavar="CMD",
        help="run CMD per connection (datagram) with the connection as its stdin and stdout",
    )
    p.add_argument(
        "-c",
        "--count",
        type=positive_int,
        metavar="N",
        help="stop after N connections (stream, seqpacket) or datagrams",
    )
    p.add_argument(
        "--concurrent",
        action="store_true",
        help="serve many connections at once (default: one after another)",
    )
    p.add_argument(
        "--buffer",
        type=buffer_size,
        default=65536,
        metavar="BYTES",
        help="receive buffer per message (dgram, seqpacket); longer ones are "
        "cut and reported (default: 65536)",
    )
    add_listener_options(p)
    p.add_argument(
        "--no-replace", action="store_true", help="fail rather than replace a stale socket file"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log each client to stderr")
    p.add_argument(
        "--json",
        action="store_true",
        help="JSON lines on stdout instead of the data: listening, accepted (the client's "
        "pid, uid, gid, groups), data (base64, and text when UTF-8), closed, refused, "
        "stopped (totals)",
    )
    from udskit.cli.activate import add_from_systemd_option, add_handoff_option

    add_from_systemd_option(p)
    add_handoff_option(p)
    p.set_defaults(handler=handle_listen)

    p = subparsers.add_parser(
        "connect",
        help="connect and copy stdin/stdout (like nc -U)",
        description="Connect to ADDR; stdin goes to the socket, the socket to stdout.",
        epilog=CONNECT_EXAMPLES,
        formatter_class=fmt,
    )
    p.add_argument("address", metavar="ADDR")
    _add_type(p, client=True)
    p.add_argument(
        "--bind", metavar="ADDR", help="bind the client first (default for dgram: autobind)"
    )
    p.add_argument(
        "--buffer",
        type=buffer_size,
        default=65536,
        metavar="BYTES",
        help="receive buffer per message (dgram, seqpacket)",
    )
    p.add_argument(
        "--wait",
        type=seconds(),
        default=0.5,
        metavar="SECONDS",
        help="dgram: how long to wait for late replies after stdin ends (0.5)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="JSON lines on stdout: a connected event with the server's pid, uid, gid and "
        "groups, one data event per chunk or message (data in base64), a closed event",
    )
    p.set_defaults(handler=handle_connect)

    p = subparsers.add_parser(
        "send",
        help="send messages and print the replies",
        description="Send each MSG to ADDR and print each reply.",
        epilog=SEND_EXAMPLES,
        formatter_class=fmt,
    )
    p.add_argument("address", metavar="ADDR")
    p.add_argument("messages", metavar="MSG", nargs="+")
    _add_type(p, client=True)
    p.add_argument(
        "--bind",
        metavar="ADDR",
        help="bind the client to ADDR (default for dgram: autobind, so the server can reply)",
    )
    p.add_argument(
        "--reply-size",
        type=buffer_size,
        default=65536,
        metavar="BYTES",
        help="receive buffer for each reply (default: 65536)",
    )
    p.add_argument("--no-reply", action="store_true", help="do not wait for replies")
    p.add_argument(
        "--json",
        action="store_true",
        help="JSON lines on stdout: a connected event (the server's credentials, where the "
        "type has them), then one reply event per message (length, truncated, data in "
        "base64), or a no-reply event",
    )
    p.add_argument(
        "--timeout",
        type=seconds(allow_zero=False),
        default=2.0,
        metavar="SECONDS",
        help="how long to wait for each reply (default: 2)",
    )
    p.set_defaults(handler=handle_send)


def handle_listen(args: argparse.Namespace, env: Env) -> int:
    from contextlib import suppress

    from udskit.endpoints import resolve_group, resolve_user
    from udskit.socktype import SocketType
    from udskit.talk import Action, OutputClosed, PeerFilter, ServeOptions, serve

    sock_type = SocketType(args.type)
    action = (
        Action.ECHO
        if args.echo
        else Action.UPPER
        if args.upper
        else Action.EXEC
        if args.exec
        else Action.PRINT
    )
    options = ServeOptions(
        action=action,
        command=args.exec,
        count=args.count,
        concurrent=args.concurrent,
        buffer=args.buffer,
        peers=PeerFilter(
            frozenset(resolve_user(u) for u in args.allow_uid),
            frozenset(resolve_group(g) for g in args.allow_gid),
        ),
        verbose=args.verbose,
    )
    from udskit.cli.activate import serving_listener

    # A datagram's credentials come only with SO_PASSCRED, on before the first one.
    passcred = sock_type is SocketType.DGRAM and (options.peers.active or args.json)
    with serving_listener(args, env, sock_type, passcred=passcred) as (listener, stop):
        if listener.replaced_stale:
            env.err(f"udskit listen: replaced a stale socket file at {listener.address}")
        if args.address == "@" or args.verbose:
            env.err(f"udskit listen: listening on {listener.address} ({sock_type.value})")
        events: Observer | None = None
        if args.json:
            import os

            from udskit.talkevents import Listening, record

            def events(event: ServerEvent) -> None:
                _json_line(env, record(event))

            with suppress(OSError):  # a closed stdout: serve() finds out and stops
                events(Listening(listener.address, sock_type, os.getpid(), listener.replaced_stale))
        # stdout closed (`| head`): done, as any filter would be.
        with suppress(OutputClosed):
            serve(
                listener,
                options,
                env.write,
                lambda line: env.err(f"udskit listen: {line}"),
                stop=stop,
                events=events,
            )
    return ExitStatus.OK


def handle_connect(args: argparse.Namespace, env: Env) -> int:
    from udskit.endpoints import as_address
    from udskit.errors import SocketError

    address = as_address(args.address)
    try:
        return _connect(args, env, address)
    except SocketError as err:
        raise _doctor_hint(err, address) from err


def _connect(args: argparse.Namespace, env: Env, address: UnixAddress) -> int:
    from udskit.endpoints import open_connection
    from udskit.socktype import SocketType
    from udskit.talk import pump_messages, pump_stream

    sock_type = _client_type(args.type, address)
    with open_connection(address, sock_type, bind=args.bind) as sock:
        out = env.write
        if args.json:
            _json_line(env, _connected_event(sock, address, sock_type))

            def out(data: bytes) -> None:
                _json_line(env, {"event": "data", "length": len(data), "data": _b64(data)})

        if sock_type is SocketType.STREAM:
            pump_stream(sock, address, env.stdin, out)
        else:
            pump_messages(
                sock,
                address,
                sock_type,
                env.stdin,
                out,
                lambda line: env.err(f"udskit connect: {line}"),
                buffer=args.buffer,
                linger=args.wait,
            )
        if args.json:
            _json_line(env, {"event": "closed"})
    return ExitStatus.OK


def _json_line(env: Env, record: dict[str, object]) -> None:
    import json

    env.out(json.dumps(record, separators=(",", ":")))  # ASCII: strict UTF-8 JSON


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode("ascii")


def _connected_event(sock: Any, address: UnixAddress, sock_type: SocketType) -> dict[str, object]:
    """Where we are connected, and as whom the kernel knows the server (SO_PEERCRED,
    SO_PEERGROUPS; a datagram socket has no such record of its peer)."""
    from udskit.safetext import json_fields
    from udskit.socktype import SocketType

    record: dict[str, object] = {"event": "connected", "type": sock_type.value}
    record.update(json_fields("address", str(address)))
    if sock_type is not SocketType.DGRAM:
        from udskit.ancillary import peer_credentials

        cred = peer_credentials(sock, pidfd=False)
        record.update(pid=cred.pid, uid=cred.uid, gid=cred.gid, groups=list(cred.groups))
    return record


def handle_send(args: argparse.Namespace, env: Env) -> int:
    from udskit.endpoints import as_address
    from udskit.errors import SocketError

    address = as_address(args.address)
    try:
        return _send(args, env, address)
    except SocketError as err:
        raise _doctor_hint(err, address) from err


def _send(args: argparse.Namespace, env: Env, address: UnixAddress) -> int:
    import os

    from udskit.endpoints import open_connection
    from udskit.socktype import SocketType
    from udskit.talk import send_messages

    sock_type = _client_type(args.type, address)
    messages = [os.fsencode(m) for m in args.messages]
    if sock_type is SocketType.STREAM:
        messages = [m + b"\n" for m in messages]
    missing = 0
    with open_connection(address, sock_type, bind=args.bind) as sock:
        if args.json:
            _json_line(env, _connected_event(sock, address, sock_type))
        replies = send_messages(
            sock,
            address,
            sock_type,
            messages,
            reply_size=args.reply_size,
            wait_reply=not args.no_reply,
            timeout=args.timeout,
        )
        for number, reply in enumerate(replies, 1):
            if args.json:
                if reply is None:
                    missing += 1
                    _json_line(env, {"event": "no-reply", "message": number})
                else:
                    _json_line(
                        env,
                        {
                            "event": "reply",
                            "message": number,
                            "length": reply.length,
                            "truncated": reply.truncated,
                            "data": _b64(reply.data),
                        },
                    )
                continue
            if reply is None:
                missing += 1
                if sock_type is SocketType.STREAM:
                    env.err(
                        f"udskit send: {address} did not close the connection within "
                        f"{args.timeout} s after the request (raise --timeout if it is slow)"
                    )
                else:
                    env.err(
                        f"udskit send: no reply to message {number} within {args.timeout} s "
                        "(does the server answer? use --no-reply if it does not)"
                    )
                continue
            data = reply.data
            env.write(
                data if sock_type is SocketType.STREAM or data.endswith(b"\n") else data + b"\n"
            )
            if reply.truncated:
                env.err(
                    f"udskit send: reply {number} truncated: {reply.length} bytes, "
                    f"buffer {args.reply_size} (raise --reply-size)"
                )
    return ExitStatus.FAILED if missing else ExitStatus.OK


def demo(tour: Any) -> None:
    """The tour's first section: address kinds, socket types, safe bind."""
    import os
    import socket

    tour.section("talk: three address kinds, three socket types, safe bind")
    path = tour.path("echo.sock")
    tour.say("A pathname stream socket: an echo server, and a client that sends stdin.")
    server = tour.spawn("listen", path, "--echo", "--concurrent", wait_for=path, listening=True)
    tour.show("connect", path, input=b"hello over a socket file\n")

    name = f"@udskit-demo-{os.getpid()}"
    tour.say("An abstract name: no file at all; exact bytes, so @x and @x\\x00 differ.")
    abstract = tour.spawn("listen", name, "--echo", wait_for=name, listening=True)
    tour.show("connect", name, input="こんにちは, abstract namespace\n".encode())
    tour.show("connect", name + "\\x00", check=False)

    tour.say("Unnamed sockets: what socketpair() gives (shown as * by `udskit ls`).")
    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        left.sendall(b"ping")
        tour.say(
            f"socketpair: sent 'ping', the other end read {right.recv(4)!r}; "
            f"its address is {right.getsockname()!r} (unnamed)"
        )

    ucase = tour.path("ud_ucase")
    tour.say("Datagrams: TLPI's uppercase server with a 10-byte buffer; the client autobinds.")
    upper = tour.spawn(
        "listen", ucase, "--type", "dgram", "--upper", "--buffer", "10", wait_for=ucase
    )
    tour.show("send", ucase, "--type", "dgram", "hello", "world", "long message")
    seq = tour.path("seq.sock")
    tour.say("Seqpacket: connection-oriented, and message boundaries are kept.")
    seqserver = tour.spawn(
        "listen", seq, "--type", "seqpacket", "--upper", wait_for=seq, listening=True
    )
    tour.show("send", seq, "--type", "seqpacket", "one", "two", "three")

    tour.say("Safe bind: a socket file left by a dead server is replaced...")
    stale = tour.path("stale.sock")
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(stale)
    dead.close()
    tour.show("connect", stale, check=False)
    fresh = tour.spawn("listen", stale, "--echo", wait_for=stale, listening=True)
    tour.show("connect", stale, input=b"the stale file was replaced\n")
    tour.say("...but a live one never is:")
    tour.show("listen", path, check=False)
    for proc in (server, abstract, upper, seqserver):
        tour.stop(proc)
    _out, err = tour.stop(fresh)
    tour.say(f"(the server said: {err.decode().strip()})")
    tour.say(f"Stopped with SIGTERM: {os.path.basename(path)} removed: {not os.path.exists(path)}")
