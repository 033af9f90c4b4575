"""The talk commands: `udskit listen`, `udskit connect`, `udskit send` (nc and socat's jobs)."""

from __future__ import annotations

import argparse
from typing import Any

from udskit.cli.env import Env, ExitStatus
from udskit.cli.options import add_listener_options, positive_int

TYPES = ("stream", "dgram", "seqpacket")

LISTEN_EXAMPLES = """\
examples:
  udskit listen /tmp/app.sock                     print what clients send (like nc -lU)
  udskit listen /tmp/app.sock --echo --concurrent an echo server for many clients
  udskit listen @ucase --type dgram --upper --buffer 10
                                                  the uppercase datagram server of TLPI
  udskit listen /run/x.sock --exec 'date'         run a command per connection (inetd)
  udskit listen /run/x.sock --mode 0660 --group adm --allow-uid 1000

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


def _add_type(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-t",
        "--type",
        choices=TYPES,
        default="stream",
        help="socket type (default: stream); must match the other side's",
    )


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "listen",
        help="serve on an address: print, echo, uppercase or exec",
        description="Bind ADDR safely and serve it.",
        epilog=LISTEN_EXAMPLES,
        formatter_class=fmt,
    )
    p.add_argument("address", metavar="ADDR", help="socket path, @abstract-name, or @ (autobind)")
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
        type=positive_int,
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
    p.set_defaults(handler=handle_listen)

    p = subparsers.add_parser(
        "connect",
        help="connect and copy stdin/stdout (like nc -U)",
        description="Connect to ADDR; stdin goes to the socket, the socket to stdout.",
        epilog=CONNECT_EXAMPLES,
        formatter_class=fmt,
    )
    p.add_argument("address", metavar="ADDR")
    _add_type(p)
    p.add_argument(
        "--bind", metavar="ADDR", help="bind the client first (default for dgram: autobind)"
    )
    p.add_argument(
        "--buffer",
        type=positive_int,
        default=65536,
        metavar="BYTES",
        help="receive buffer per message (dgram, seqpacket)",
    )
    p.add_argument(
        "--wait",
        type=float,
        default=0.5,
        metavar="SECONDS",
        help="dgram: how long to wait for late replies after stdin ends (0.5)",
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
    _add_type(p)
    p.add_argument(
        "--bind",
        metavar="ADDR",
        help="bind the client to ADDR (default for dgram: autobind, so the server can reply)",
    )
    p.add_argument(
        "--reply-size",
        type=positive_int,
        default=65536,
        metavar="BYTES",
        help="receive buffer for each reply (default: 65536)",
    )
    p.add_argument("--no-reply", action="store_true", help="do not wait for replies")
    p.add_argument(
        "--timeout",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="how long to wait for each reply (default: 2)",
    )
    p.set_defaults(handler=handle_send)


def handle_listen(args: argparse.Namespace, env: Env) -> int:
    from contextlib import suppress

    from udskit.endpoints import open_listener, resolve_group, resolve_user
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
    with open_listener(
        args.address,
        sock_type,
        backlog=args.backlog,
        mode=args.mode,
        owner=args.owner,
        group=args.group,
        replace_stale=not args.no_replace,
        passcred=sock_type is SocketType.DGRAM and options.peers.active,
    ) as listener:
        for note in listener.notes:
            env.err(f"udskit listen: {note}")
        if listener.replaced_stale:
            env.err(f"udskit listen: replaced a stale socket file at {listener.address}")
        if args.address == "@" or args.verbose:
            env.err(f"udskit listen: listening on {listener.address} ({sock_type.value})")
        # stdout closed (`| head`): done, as any filter would be.
        with suppress(OutputClosed):
            serve(listener, options, env.write, lambda line: env.err(f"udskit listen: {line}"))
    return ExitStatus.OK


def handle_connect(args: argparse.Namespace, env: Env) -> int:
    from udskit.endpoints import as_address, open_connection
    from udskit.socktype import SocketType
    from udskit.talk import pump_messages, pump_stream

    sock_type = SocketType(args.type)
    address = as_address(args.address)
    with open_connection(address, sock_type, bind=args.bind) as sock:
        if sock_type is SocketType.STREAM:
            pump_stream(sock, address, env.stdin, env.write)
        else:
            pump_messages(
                sock,
                address,
                sock_type,
                env.stdin,
                env.write,
                lambda line: env.err(f"udskit connect: {line}"),
                buffer=args.buffer,
                linger=args.wait,
            )
    return ExitStatus.OK


def handle_send(args: argparse.Namespace, env: Env) -> int:
    import os

    from udskit.endpoints import as_address, open_connection
    from udskit.socktype import SocketType
    from udskit.talk import send_messages

    sock_type = SocketType(args.type)
    address = as_address(args.address)
    messages = [os.fsencode(m) for m in args.messages]
    if sock_type is SocketType.STREAM:
        messages = [m + b"\n" for m in messages]
    missing = 0
    with open_connection(address, sock_type, bind=args.bind) as sock:
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
