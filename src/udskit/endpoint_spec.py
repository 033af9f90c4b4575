"""Pure: the text notation for relay endpoints (`udskit relay LEFT RIGHT`).

An endpoint says what one side of a relay is: a socket to connect to, a socket to
listen on, standard input and output, or a command. Unix addresses inside are read by
`udskit.address.parse_address`, so every address `udskit ls` prints can be pasted here.

========================  =========================================================
``unix:PATH``, ``PATH``   connect to a socket file (a bare path is the same)
``@NAME``                 connect to an abstract name (``abstract:NAME`` likewise)
``unix-listen:PATH``      listen on a socket file (safe bind), one upstream per client
``abstract-listen:NAME``  listen on an abstract name (``@NAME`` after the colon works too;
                         ``abstract-listen:@`` autobinds: the kernel picks, udskit prints it)
``tcp:HOST:PORT``         connect over TCP (``[::1]:PORT`` for IPv6)
``tcp-listen:[HOST:]PORT`` listen over TCP; HOST defaults to 127.0.0.1, never all addresses
``-``                     standard input and output (``stdio`` likewise)
``exec:CMD``              run CMD (through /bin/sh) with its stdin/stdout on a socketpair
========================  =========================================================

Socket type: stream unless a type word leads the endpoint, ``seqpacket:unix:PATH``,
``dgram:@NAME``; the command line's ``--type`` sets the default for both unix sides.
Datagram spellings in socat's words are accepted too: ``unix-recvfrom:PATH`` and
``abstract-recvfrom:NAME`` (= ``dgram:unix-listen:`` / ``dgram:abstract-listen:``: a
bound datagram socket; each sender gets its own upstream socket and its replies) and
``unix-sendto:PATH`` / ``abstract-sendto:NAME`` (= ``dgram:unix:`` / ``dgram:@NAME``).

A word followed by a colon that is none of the above is refused, rather than taken for
a file name: ``tpc:127.0.0.1:80`` is a typo, not a socket file. Write ``unix:a:b`` or
``./a:b`` for a socket file whose name has a colon.

``parse_endpoint(format_endpoint(e)) == e`` for every endpoint.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final, final

from udskit.address import AddressKind, UnixAddress, format_address, parse_address
from udskit.errors import AddressError
from udskit.safetext import escape_bytes
from udskit.socktype import SocketType

__all__ = [
    "DEFAULT_TCP_HOST",
    "EndpointKind",
    "EndpointSpec",
    "format_endpoint",
    "parse_endpoint",
]

#: tcp-listen without a host binds loopback only: a relay must never expose a unix
#: socket (often root's docker.sock) to the network by default, as socat's
#: TCP-LISTEN (all addresses) does.
DEFAULT_TCP_HOST: Final = "127.0.0.1"


class EndpointKind(enum.Enum):
    UNIX = "unix"
    UNIX_LISTEN = "unix-listen"
    TCP = "tcp"
    TCP_LISTEN = "tcp-listen"
    STDIO = "stdio"
    EXEC = "exec"


@final
@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """One side of a relay. Unix kinds fill `address` (pathname or abstract), TCP kinds
    `host` and `port`, EXEC `command`. `sock_type` is STREAM except for unix sides."""

    kind: EndpointKind
    address: UnixAddress | None = None
    host: str | None = None
    port: int | None = None
    command: str | None = None
    sock_type: SocketType = SocketType.STREAM

    def __post_init__(self) -> None:
        kind = self.kind
        if kind in (EndpointKind.UNIX, EndpointKind.UNIX_LISTEN):
            kinds: tuple[AddressKind, ...] = (AddressKind.PATHNAME, AddressKind.ABSTRACT)
            if kind is EndpointKind.UNIX_LISTEN:
                kinds += (AddressKind.AUTOBIND,)  # the kernel picks; the relay prints it
            if self.address is None or self.address.kind not in kinds:
                raise AddressError(f"{kind.value} needs a socket file path or an @abstract name")
        elif self.sock_type is not SocketType.STREAM:
            raise AddressError(
                f"--type {self.sock_type.value} applies to unix endpoints only; "
                f"{kind.value} is a byte stream"
            )
        if kind in (EndpointKind.TCP, EndpointKind.TCP_LISTEN) and (
            self.host is None or self.port is None
        ):
            raise AddressError(f"{kind.value} needs a host and a port")
        if kind is EndpointKind.EXEC and not self.command:
            raise AddressError("exec: needs a command, e.g. exec:'cat -n'")

    @property
    def listening(self) -> bool:
        return self.kind in (EndpointKind.UNIX_LISTEN, EndpointKind.TCP_LISTEN)

    @property
    def is_unix(self) -> bool:
        return self.kind in (EndpointKind.UNIX, EndpointKind.UNIX_LISTEN)

    @property
    def is_tcp(self) -> bool:
        return self.kind in (EndpointKind.TCP, EndpointKind.TCP_LISTEN)

    def __str__(self) -> str:
        return format_endpoint(self)


_TYPE_WORDS: Final = {t.value: t for t in SocketType}
_WORD: Final = re.compile(r"^([A-Za-z][A-Za-z0-9-]*):")


def parse_endpoint(text: str, default_type: SocketType = SocketType.STREAM) -> EndpointSpec:
    """Read the notation above. Raises `AddressError` with the fix on bad text."""
    if not text:
        raise AddressError("empty endpoint: give unix:PATH, @NAME, tcp:HOST:PORT, - ...")
    sock_type: SocketType | None = None
    match = _WORD.match(text)
    if match and match.group(1).lower() in _TYPE_WORDS:
        sock_type = _TYPE_WORDS[match.group(1).lower()]
        text = text[match.end() :]
        match = _WORD.match(text)
    spec = _parse_untyped(text, match)
    if spec.sock_type is not SocketType.STREAM:  # a socat-style datagram word
        if sock_type not in (None, spec.sock_type):
            raise AddressError(f"{sock_type.value}: contradicts the datagram endpoint {text!r}")
        sock_type = spec.sock_type
    if not spec.is_unix:
        if sock_type is not None and sock_type is not SocketType.STREAM:
            raise AddressError(
                f"{sock_type.value}: applies to unix endpoints only; {spec.kind.value} "
                "is a byte stream"
            )
        return spec
    final_type = sock_type or default_type
    return EndpointSpec(spec.kind, address=spec.address, sock_type=final_type)


def _parse_untyped(text: str, match: re.Match[str] | None) -> EndpointSpec:
    if text in ("-", "stdio"):
        return EndpointSpec(EndpointKind.STDIO)
    if text.startswith("@") or match is None:
        return _unix(EndpointKind.UNIX, text)
    word = match.group(1).lower()
    rest = text[match.end() :]
    if word == "unix":
        return _unix(EndpointKind.UNIX, "unix:" + rest)
    if word == "abstract":
        return _unix(EndpointKind.UNIX, "abstract:" + rest)
    if word == "unix-listen":
        return _unix(EndpointKind.UNIX_LISTEN, "unix:" + rest)
    if word == "abstract-listen":
        return _unix(EndpointKind.UNIX_LISTEN, rest if rest[:1] == "@" else "abstract:" + rest)
    if word in ("unix-recvfrom", "abstract-recvfrom", "unix-sendto", "abstract-sendto"):
        kind = EndpointKind.UNIX_LISTEN if word.endswith("recvfrom") else EndpointKind.UNIX
        addr_text = ("unix:" if word.startswith("unix") else "abstract:") + rest
        spec = _unix(kind, addr_text)
        return EndpointSpec(kind, address=spec.address, sock_type=SocketType.DGRAM)
    if word in ("tcp", "tcp-connect"):
        host, port = _host_port(rest, text, need_host=True)
        return EndpointSpec(EndpointKind.TCP, host=host, port=port)
    if word == "tcp-listen":
        host, port = _host_port(rest, text, need_host=False)
        return EndpointSpec(EndpointKind.TCP_LISTEN, host=host, port=port)
    if word in ("exec", "system"):
        if not rest.strip():
            raise AddressError("exec: needs a command, e.g. exec:'cat -n'")
        return EndpointSpec(EndpointKind.EXEC, command=rest)
    raise AddressError(
        f"unknown endpoint kind {word!r} in {text!r}: use unix:, @, unix-listen:, "
        "abstract-listen:, tcp:, tcp-listen:, exec: or - (a socket file whose name has "
        "a colon: write unix:PATH or ./PATH)"
    )


def _unix(kind: EndpointKind, text: str) -> EndpointSpec:
    address = parse_address(text)
    if address.kind is AddressKind.AUTOBIND and kind is not EndpointKind.UNIX_LISTEN:
        raise AddressError(
            "a lone @ (autobind) names no socket to relay; give @NAME or a socket file path"
        )
    if address.kind is AddressKind.UNNAMED:
        raise AddressError("* (unnamed) names no socket to relay; give a path or @NAME")
    return EndpointSpec(kind, address=address)


def _host_port(rest: str, text: str, *, need_host: bool) -> tuple[str, int]:
    host: str | None
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0 or rest[close + 1 : close + 2] != ":":
            raise AddressError(f"bad IPv6 endpoint {text!r}: write [::1]:PORT")
        host, port_text = rest[1:close], rest[close + 2 :]
    elif ":" in rest:
        host, port_text = rest.rsplit(":", 1)
        if ":" in host:
            raise AddressError(f"bad endpoint {text!r}: put an IPv6 host in brackets, [::1]:PORT")
    else:
        host, port_text = None, rest
    if host is None or host == "":
        if need_host:
            raise AddressError(f"{text!r} needs HOST:PORT, e.g. tcp:127.0.0.1:8080")
        host = DEFAULT_TCP_HOST
    # Port 0 lets the kernel choose (for listening; Relay.listen_endpoint shows it).
    lowest = 1 if need_host else 0
    if not port_text.isdigit() or not lowest <= int(port_text) < 65536:
        raise AddressError(f"bad port {port_text!r} in {text!r}: give a number {lowest}-65535")
    return host, int(port_text)


def format_endpoint(spec: EndpointSpec) -> str:
    """The notation for `spec`; `parse_endpoint` reads it back to an equal value."""
    kind = spec.kind
    if kind is EndpointKind.STDIO:
        return "-"
    if kind is EndpointKind.EXEC:
        return f"exec:{spec.command}"
    if kind in (EndpointKind.TCP, EndpointKind.TCP_LISTEN):
        host = f"[{spec.host}]" if spec.host and ":" in spec.host else spec.host
        return f"{kind.value}:{host}:{spec.port}"
    assert spec.address is not None
    addr = format_address(spec.address)
    prefix = "" if spec.sock_type is SocketType.STREAM else f"{spec.sock_type.value}:"
    if kind is EndpointKind.UNIX_LISTEN:
        if spec.address.kind is AddressKind.AUTOBIND:
            return f"{prefix}abstract-listen:@"
        if spec.address.is_abstract:
            name = addr if spec.address.name else ""  # "@" alone would mean autobind
            return f"{prefix}abstract-listen:{name}"
        return f"{prefix}unix-listen:{escape_bytes(spec.address.name)}"
    if spec.address.is_pathname:
        return f"{prefix}unix:{escape_bytes(spec.address.name)}"
    return f"{prefix}{addr}"
