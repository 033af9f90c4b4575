"""Pure: the unix socket address type, its text notation and its sockaddr forms.

No I/O here: values in, values out. Every other part of udskit speaks of addresses
through `UnixAddress`, so that a name printed by `udskit ls` can be pasted into
`udskit connect` and means exactly the same bytes.

Notation (see unix(7)):

=====================  ==========================================================
``/run/app.sock``      pathname; also ``./rel.sock``, ``rel.sock``, ``unix:PATH``
``@name``              abstract name: exact bytes, no trailing NUL; ``abstract:name``
``@``                  autobind: the kernel picks a unique abstract name (5 hex digits)
``*``                  unnamed: socketpair() ends and unbound sockets, as ss shows them
=====================  ==========================================================

Abstract names may hold any byte. In the notation, ``\\xHH`` stands for one byte and
``\\\\`` for a backslash; every other character stands for its UTF-8 bytes. So
``@HELLO`` and ``@HELLO\\x00`` are two different names, and
``parse_address(format_address(a)) == a`` for every address.

A path may hold any byte but NUL too. After ``unix:`` the same escapes apply, and a
path that is not plain text (a control character, ESC, a byte that is not UTF-8, a
backslash, an invisible Unicode character) is always printed that way:
``unix:/tmp/a\\x0ab`` is the file whose name holds a newline. A bare path (no
``unix:``) is taken literally, as a shell would pass it. The escaping rule is
`udskit.safetext`'s, shared by every human output.
"""

from __future__ import annotations

import enum
import os
import struct
from dataclasses import dataclass
from typing import Final, final

from udskit.errors import AddressError
from udskit.safetext import escape_bytes, is_plain, unescape

__all__ = [
    "MAX_ABSTRACT_BYTES",
    "MAX_PATH_BYTES",
    "SUN_PATH_SIZE",
    "AddressKind",
    "UnixAddress",
    "decode_sockaddr",
    "escape_bytes",
    "format_address",
    "format_path",
    "from_sun_path",
    "parse_address",
]

#: sizeof(sun_path) on Linux (struct sockaddr_un in <sys/un.h>).
SUN_PATH_SIZE: Final = 108
#: A pathname needs its terminating NUL inside sun_path: 107 bytes of path at most.
MAX_PATH_BYTES: Final = SUN_PATH_SIZE - 1
#: An abstract name follows the leading NUL: 107 bytes at most (unix_mkname_bsd).
MAX_ABSTRACT_BYTES: Final = SUN_PATH_SIZE - 1
AF_UNIX: Final = 1

_FS_ENCODING: Final = "utf-8"


class AddressKind(enum.Enum):
    """The three kinds of unix(7) address, plus the request to autobind."""

    PATHNAME = "pathname"
    ABSTRACT = "abstract"
    UNNAMED = "unnamed"
    AUTOBIND = "autobind"


@final
@dataclass(frozen=True, slots=True)
class UnixAddress:
    """One unix socket address.

    `name` holds the path's bytes for a pathname and the exact name bytes (without the
    leading NUL of sun_path) for an abstract address; it is empty for the other kinds.
    Build one with the class methods or `parse_address`; the checks live there so that
    an address that exists is one the kernel will take.
    """

    kind: AddressKind
    name: bytes = b""

    def __post_init__(self) -> None:
        if self.kind is AddressKind.PATHNAME:
            # The kernel itself may report 108 bytes: a path bound without room for its
            # NUL (unix_mkname_bsd accepts it). Only addresses a user writes are held
            # to 107, in pathname() and parse_address().
            _check_path(self.name, SUN_PATH_SIZE)
        elif self.kind is AddressKind.ABSTRACT:
            if len(self.name) > MAX_ABSTRACT_BYTES:
                raise AddressError(
                    f"abstract name too long: {len(self.name)} bytes, the limit is "
                    f"{MAX_ABSTRACT_BYTES} (sun_path is {SUN_PATH_SIZE} bytes with the leading NUL)"
                )
        elif self.name:
            raise AddressError(f"an {self.kind.value} address has no name")

    # -- constructors ---------------------------------------------------------------
    @classmethod
    def pathname(cls, path: str | bytes | os.PathLike[str]) -> UnixAddress:
        raw = os.fsencode(path) if not isinstance(path, bytes) else path
        _check_path(raw, MAX_PATH_BYTES)
        return cls(AddressKind.PATHNAME, raw)

    @classmethod
    def abstract(cls, name: str | bytes) -> UnixAddress:
        raw = name.encode("utf-8") if isinstance(name, str) else name
        return cls(AddressKind.ABSTRACT, raw)

    @classmethod
    def unnamed(cls) -> UnixAddress:
        return _UNNAMED

    @classmethod
    def autobind(cls) -> UnixAddress:
        return _AUTOBIND

    # -- views ------------------------------------------------------------------------
    @property
    def is_pathname(self) -> bool:
        return self.kind is AddressKind.PATHNAME

    @property
    def is_abstract(self) -> bool:
        return self.kind is AddressKind.ABSTRACT

    @property
    def path(self) -> str:
        """The filesystem path of a pathname address (undecodable bytes surrogate-escaped)."""
        if self.kind is not AddressKind.PATHNAME:
            raise AddressError(f"{self} is not a pathname address")
        return os.fsdecode(self.name)

    def to_sockaddr(self) -> str | bytes:
        """What `socket.bind` / `socket.connect` take for this address.

        CPython passes a bytes address through with its exact length, so an abstract
        name keeps its trailing NULs; a pathname gets its NUL from the kernel
        (unix_mkname_bsd). An empty address makes bind() autobind.
        """
        if self.kind is AddressKind.PATHNAME:
            if len(self.name) > MAX_PATH_BYTES:
                raise AddressError(
                    f"{self} fills all {SUN_PATH_SIZE} bytes of sun_path with no NUL: the "
                    "kernel let it be bound, but Python's socket module cannot address it"
                )
            return self.name
        if self.kind is AddressKind.ABSTRACT:
            return b"\0" + self.name
        if self.kind is AddressKind.AUTOBIND:
            return b""
        raise AddressError("an unnamed address cannot be bound or connected to")

    def sun_path(self) -> bytes:
        """The bytes of sun_path that the kernel reports (UNIX_DIAG_NAME, /proc/net/unix)."""
        if self.kind is AddressKind.PATHNAME:
            return self.name + b"\0" if len(self.name) < SUN_PATH_SIZE else self.name
        if self.kind is AddressKind.ABSTRACT:
            return b"\0" + self.name
        return b""

    def to_sockaddr_bytes(self) -> bytes:
        """The whole struct sockaddr_un, as long as addrlen says (for pcap, sendmsg)."""
        return struct.pack("=H", AF_UNIX) + self.sun_path()

    def __str__(self) -> str:
        return format_address(self)


_UNNAMED: Final = UnixAddress(AddressKind.UNNAMED)
_AUTOBIND: Final = UnixAddress(AddressKind.AUTOBIND)
_PREFIXES: Final = ("unix:", "abstract:", "@", "*")


def _check_path(raw: bytes, limit: int) -> None:
    if not raw:
        raise AddressError("empty path: give a socket file path, @name or *")
    if b"\0" in raw:
        raise AddressError("a pathname cannot contain a NUL byte; for an abstract name write @name")
    if len(raw) > limit:
        raise AddressError(
            f"path too long for sun_path: {len(raw)} bytes, the limit is {MAX_PATH_BYTES} "
            f"({SUN_PATH_SIZE} with the NUL); use a shorter path, or chdir to its directory "
            "and use a relative name"
        )


def parse_address(text: str | bytes | os.PathLike[str]) -> UnixAddress:
    """Parse the notation above into an address. Raises `AddressError` on bad text."""
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    elif not isinstance(text, str):
        text = os.fspath(text)
    if text == "*":
        return _UNNAMED
    if text == "@":
        return _AUTOBIND
    if text.startswith("@"):
        return UnixAddress.abstract(_unescape(text[1:]))
    if text.startswith("abstract:"):
        return UnixAddress.abstract(_unescape(text[len("abstract:") :]))
    if text.startswith("unix:"):
        # After unix: the escapes apply, so that every printed path reads back.
        return UnixAddress.pathname(_unescape(text[len("unix:") :], "path"))
    return UnixAddress.pathname(os.fsencode(text))


def format_address(address: UnixAddress) -> str:
    """Format an address in the notation that `parse_address` reads back exactly."""
    kind = address.kind
    if kind is AddressKind.UNNAMED:
        return "*"
    if kind is AddressKind.AUTOBIND:
        return "@"
    if kind is AddressKind.ABSTRACT:
        return "abstract:" if not address.name else "@" + escape_bytes(address.name)
    return format_path(address.name)


def format_path(raw: bytes) -> str:
    """A pathname in the notation: as it is when it is plain text, `unix:` and escapes
    when it is not, `unix:` alone when it would read back as another kind."""
    path = raw.decode("utf-8", errors="surrogateescape")
    if not is_plain(path):
        return "unix:" + escape_bytes(raw)
    # A path that would read back as another kind keeps an explicit prefix.
    return "unix:" + path if path.startswith(_PREFIXES) or path == "*" else path


def _unescape(text: str, what: str = "abstract name") -> bytes:
    try:
        return unescape(text)
    except ValueError:
        raise AddressError(
            f"bad escape in {what} {escape_bytes(text.encode('utf-8', 'surrogateescape'))}: "
            "write \\xHH for a byte, \\\\ for a backslash (or give the path without unix:)"
        ) from None


def decode_sockaddr(raw: str | bytes | None) -> UnixAddress:
    """Turn what CPython's getsockname/getpeername/accept/recvfrom return into an address.

    CPython gives bytes for an abstract name (with the leading NUL), str for a pathname,
    '' for an unnamed socket, and None where the kernel gave no address at all (a
    datagram from an unbound sender).
    """
    if raw is None or raw in ("", b""):
        return _UNNAMED
    if isinstance(raw, bytes):
        if raw[:1] == b"\0":
            return UnixAddress(AddressKind.ABSTRACT, raw[1:])
        return UnixAddress(AddressKind.PATHNAME, raw.split(b"\0", 1)[0])
    return UnixAddress(AddressKind.PATHNAME, os.fsencode(raw))


def from_sun_path(raw: bytes) -> UnixAddress:
    """Decode sun_path bytes as the kernel reports them (UNIX_DIAG_NAME, addrlen - 2)."""
    if not raw:
        return _UNNAMED
    if raw[:1] == b"\0":
        return UnixAddress(AddressKind.ABSTRACT, raw[1:])
    return UnixAddress(AddressKind.PATHNAME, raw.split(b"\0", 1)[0])
