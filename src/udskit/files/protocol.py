"""Pure: the UDSF/1 wire protocol of `udskit serve-files`: frames in, messages out.

Every control message is a frame::

    type (1 byte) | length (4 bytes, big-endian) | payload (length bytes, at most 64 KiB)

File contents are not framed: their size is announced first (FILE, PUT), then exactly
that many raw bytes follow, then a DIGEST frame with their SHA-256. Integers are
big-endian; a path or name is a 2-byte length and raw bytes (any byte but NUL and, for
names, `/`). One request per connection:

    client                                  server
    HELLO "UDSF" version=1      ---->
    GET path | PUT size mode path | LIST path
                                <----       WELCOME version flags max_size
                                            (or ERROR, e.g. NOT_ALLOWED, VERSION)
    GET:                        <----       FILE size mode mtime_ns, raw bytes, DIGEST
    PUT:                        <----       READY
         raw bytes, DIGEST      ---->
                                <----       DONE size sha256
    LIST:                       <----       ENTRY ... ENTRY, END count

Any request may be answered by ERROR code message (UTF-8, one line) instead; the
server then closes the connection. This module only encodes and decodes: it never
touches a socket (`udskit.files.wire` does).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final, final

from udskit.errors import TransferError

__all__ = [
    "DIGEST_SIZE",
    "HEADER",
    "MAGIC",
    "MAX_PAYLOAD",
    "VERSION",
    "Digest",
    "Done",
    "End",
    "Entry",
    "EntryKind",
    "ErrorCode",
    "ErrorReply",
    "FileHeader",
    "FrameType",
    "GetRequest",
    "Hello",
    "ListRequest",
    "Message",
    "PutRequest",
    "Ready",
    "Welcome",
    "decode",
    "encode",
    "parse_header",
]

MAGIC: Final = b"UDSF"
VERSION: Final = 1
#: type, payload length
HEADER: Final = struct.Struct(">BI")
#: Control frames are small; a larger length means a peer that does not speak UDSF.
MAX_PAYLOAD: Final = 64 * 1024
DIGEST_SIZE: Final = 32  # SHA-256
MAX_NAME: Final = 4096  # PATH_MAX


class FrameType(enum.IntEnum):
    HELLO = 0x01
    GET = 0x02
    PUT = 0x03
    LIST = 0x04
    DIGEST = 0x05  # both directions: after the raw bytes of a file
    WELCOME = 0x81
    FILE = 0x82
    READY = 0x83
    DONE = 0x84
    ENTRY = 0x85
    END = 0x86
    ERROR = 0xFF


class ErrorCode(enum.IntEnum):
    """Why the server refused or failed; the message says it for humans."""

    BAD_REQUEST = 1  # a frame out of place or malformed
    VERSION = 2  # the client speaks a version the server does not
    NOT_ALLOWED = 3  # the peer's uid/gid (SO_PEERCRED) is not admitted
    BAD_PATH = 4  # absolute, `..`, NUL, empty
    SYMLINK = 5  # a symbolic link on the way (the server follows none)
    NOT_FOUND = 6
    NOT_REGULAR = 7  # a directory, FIFO, device or socket where a file was wanted
    READ_ONLY = 8  # --read-only
    TOO_LARGE = 9  # over --max-size
    DIGEST_MISMATCH = 10  # the bytes that arrived are not the bytes that were sent
    IO = 11  # any other failure on the server's side (permissions, disk full)
    NOT_DIRECTORY = 12  # LIST of something that is not a directory


class EntryKind(enum.IntEnum):
    FILE = 1
    DIRECTORY = 2
    SYMLINK = 3
    OTHER = 4  # FIFO, device, socket: listed, never served


@final
@dataclass(frozen=True, slots=True)
class Hello:
    version: int = VERSION
    magic: bytes = MAGIC


@final
@dataclass(frozen=True, slots=True)
class GetRequest:
    path: bytes


@final
@dataclass(frozen=True, slots=True)
class PutRequest:
    path: bytes
    size: int
    mode: int  # permission bits of the source (the receiver applies its umask)


@final
@dataclass(frozen=True, slots=True)
class ListRequest:
    path: bytes  # b"" for the root


@final
@dataclass(frozen=True, slots=True)
class Digest:
    sha256: bytes


@final
@dataclass(frozen=True, slots=True)
class Welcome:
    version: int
    read_only: bool
    max_size: int | None


@final
@dataclass(frozen=True, slots=True)
class FileHeader:
    size: int
    mode: int
    mtime_ns: int


@final
@dataclass(frozen=True, slots=True)
class Ready:
    pass


@final
@dataclass(frozen=True, slots=True)
class Done:
    size: int
    sha256: bytes


@final
@dataclass(frozen=True, slots=True)
class Entry:
    name: bytes
    kind: EntryKind
    size: int
    mode: int
    mtime_ns: int


@final
@dataclass(frozen=True, slots=True)
class End:
    count: int


@final
@dataclass(frozen=True, slots=True)
class ErrorReply:
    code: ErrorCode
    message: str


Message = (
    Hello
    | GetRequest
    | PutRequest
    | ListRequest
    | Digest
    | Welcome
    | FileHeader
    | Ready
    | Done
    | Entry
    | End
    | ErrorReply
)

_U64: Final = struct.Struct(">Q")
_PUT: Final = struct.Struct(">QH")
_WELCOME: Final = struct.Struct(">BBQ")
_FILE: Final = struct.Struct(">QHq")
_ENTRY: Final = struct.Struct(">BQHq")
_END: Final = struct.Struct(">I")
_LEN: Final = struct.Struct(">H")


def bad_frame(what: str) -> TransferError:
    return TransferError(
        f"protocol error: {what} (is the other side a `udskit serve-files` of this version?)",
        ErrorCode.BAD_REQUEST,
    )


def _name(raw: bytes) -> bytes:
    if len(raw) > MAX_NAME:
        raise ValueError(f"path of {len(raw)} bytes is longer than {MAX_NAME}")
    return _LEN.pack(len(raw)) + raw


def _frame(kind: FrameType, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def encode(message: Message) -> bytes:
    """One message as the bytes of its frame."""
    match message:
        case Hello(version, magic):
            return _frame(FrameType.HELLO, magic + bytes([version]))
        case GetRequest(path):
            return _frame(FrameType.GET, _name(path))
        case PutRequest(path, size, mode):
            return _frame(FrameType.PUT, _PUT.pack(size, mode & 0o7777) + _name(path))
        case ListRequest(path):
            return _frame(FrameType.LIST, _name(path))
        case Digest(sha256):
            return _frame(FrameType.DIGEST, sha256)
        case Welcome(version, read_only, max_size):
            return _frame(FrameType.WELCOME, _WELCOME.pack(version, int(read_only), max_size or 0))
        case FileHeader(size, mode, mtime_ns):
            return _frame(FrameType.FILE, _FILE.pack(size, mode & 0o7777, mtime_ns))
        case Ready():
            return _frame(FrameType.READY)
        case Done(size, sha256):
            return _frame(FrameType.DONE, _U64.pack(size) + sha256)
        case Entry(name, kind, size, mode, mtime_ns):
            return _frame(FrameType.ENTRY, _ENTRY.pack(kind, size, mode, mtime_ns) + _name(name))
        case End(count):
            return _frame(FrameType.END, _END.pack(count))
        case ErrorReply(code, text):
            raw = text.encode("utf-8", errors="replace")[: MAX_PAYLOAD - 64]
            return _frame(FrameType.ERROR, bytes([code]) + _name(raw[:MAX_NAME]))
    raise TypeError(f"not a protocol message: {message!r}")


def parse_header(header: bytes) -> tuple[FrameType, int]:
    """The frame type and payload length from the 5 header bytes, checked."""
    kind, length = HEADER.unpack(header)
    try:
        frame_type = FrameType(kind)
    except ValueError:
        raise bad_frame(f"unknown frame type 0x{kind:02x}") from None
    if length > MAX_PAYLOAD:
        raise bad_frame(f"a frame of {length} bytes (at most {MAX_PAYLOAD})")
    return frame_type, length


def _read_name(payload: bytes, offset: int) -> bytes:
    if len(payload) < offset + 2:
        raise bad_frame("a truncated name")
    (length,) = _LEN.unpack_from(payload, offset)
    if len(payload) != offset + 2 + length:
        raise bad_frame("a name whose length does not match its frame")
    return payload[offset + 2 :]


def _fixed(payload: bytes, layout: struct.Struct, what: str) -> tuple[int, ...]:
    if len(payload) < layout.size:
        raise bad_frame(f"a truncated {what} frame")
    return layout.unpack_from(payload)


def decode(kind: FrameType, payload: bytes) -> Message:
    """The message carried by a frame of type `kind`; TransferError if malformed."""
    match kind:
        case FrameType.HELLO:
            if len(payload) != len(MAGIC) + 1:
                raise bad_frame("a malformed HELLO")
            return Hello(payload[-1], payload[:-1])
        case FrameType.GET:
            return GetRequest(_read_name(payload, 0))
        case FrameType.PUT:
            size, mode = _fixed(payload, _PUT, "PUT")
            return PutRequest(_read_name(payload, _PUT.size), size, mode)
        case FrameType.LIST:
            return ListRequest(_read_name(payload, 0))
        case FrameType.DIGEST:
            if len(payload) != DIGEST_SIZE:
                raise bad_frame(f"a digest of {len(payload)} bytes")
            return Digest(payload)
        case FrameType.WELCOME:
            version, flags, max_size = _fixed(payload, _WELCOME, "WELCOME")
            return Welcome(version, bool(flags & 1), max_size or None)
        case FrameType.FILE:
            size, mode, mtime_ns = _fixed(payload, _FILE, "FILE")
            return FileHeader(size, mode, mtime_ns)
        case FrameType.READY:
            return Ready()
        case FrameType.DONE:
            if len(payload) != _U64.size + DIGEST_SIZE:
                raise bad_frame("a malformed DONE")
            return Done(_U64.unpack_from(payload)[0], payload[_U64.size :])
        case FrameType.ENTRY:
            raw_kind, size, mode, mtime_ns = _fixed(payload, _ENTRY, "ENTRY")
            try:
                entry_kind = EntryKind(raw_kind)
            except ValueError:
                entry_kind = EntryKind.OTHER
            return Entry(_read_name(payload, _ENTRY.size), entry_kind, size, mode, mtime_ns)
        case FrameType.END:
            return End(_fixed(payload, _END, "END")[0])
        case FrameType.ERROR:
            if not payload:
                raise bad_frame("an empty ERROR")
            try:
                code = ErrorCode(payload[0])
            except ValueError:
                code = ErrorCode.IO
            text = _read_name(payload, 1).decode("utf-8", errors="replace")
            return ErrorReply(code, text)
    raise bad_frame(f"frame type {kind!r}")
