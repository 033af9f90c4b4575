"""Pure: the decisions of the file server that need no file system: which request paths
are acceptable, who is admitted, how temporary files are named.

A request path is split here into components relative to the root; anything that
could climb out (`..`), start elsewhere (an absolute path) or smuggle a terminator
(NUL) is refused before any syscall. Symbolic links cannot be judged from text: the
I/O side (`udskit.files.confine`) refuses them while it resolves.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Final, final

from udskit.address import escape_bytes
from udskit.errors import TransferError
from udskit.files.protocol import MAX_NAME, ErrorCode

__all__ = [
    "AccessPolicy",
    "join_parts",
    "show_path",
    "split_remote_path",
    "temporary_name",
]

#: NAME_MAX of Linux file systems; the temporary name must fit too.
NAME_MAX: Final = 255
_TEMP_SUFFIX_ROOM: Final = 32


def show_path(raw: bytes) -> str:
    """A remote path as it may be shown on a terminal or in a message (escaped)."""
    return escape_bytes(raw) if raw else "."


def split_remote_path(raw: bytes, *, allow_root: bool = False) -> tuple[bytes, ...]:
    """The components of a request path beneath the root, or a BAD_PATH TransferError.

    `a//b/./c` is `(a, b, c)`; the empty path and `.` are the root itself (allowed for
    listings only). Absolute paths are refused rather than re-rooted, so that a client
    learns that `/etc/passwd` is not what it will get.
    """
    shown = show_path(raw)
    if b"\x00" in raw:
        raise TransferError(f"{shown}: a NUL byte in a path", ErrorCode.BAD_PATH)
    if len(raw) > MAX_NAME:
        raise TransferError(
            f"{shown[:64]}...: path longer than {MAX_NAME} bytes", ErrorCode.BAD_PATH
        )
    if raw.startswith(b"/"):
        raise TransferError(
            f"{shown}: absolute paths are refused; paths are relative to the server's root",
            ErrorCode.BAD_PATH,
        )
    parts = tuple(p for p in raw.split(b"/") if p not in (b"", b"."))
    if b".." in parts:
        raise TransferError(
            f"{shown}: `..` is refused; the server never leaves its root", ErrorCode.BAD_PATH
        )
    if any(len(p) > NAME_MAX for p in parts):
        raise TransferError(
            f"{shown}: a component longer than {NAME_MAX} bytes", ErrorCode.BAD_PATH
        )
    if not parts and not allow_root:
        raise TransferError(f"{shown}: names the root directory, not a file", ErrorCode.BAD_PATH)
    return parts


def join_parts(parts: tuple[bytes, ...]) -> bytes:
    return b"/".join(parts) or b"."


def temporary_name(final_name: bytes, token: str) -> bytes:
    """The hidden name a file is written under until it is complete and verified:
    `.NAME.udskit-TOKEN.part`, next to the final name (rename(2) only moves within one
    file system), cut so that it stays within NAME_MAX."""
    stem = final_name[: NAME_MAX - _TEMP_SUFFIX_ROOM]
    return b"." + stem + b".udskit-" + token.encode("ascii") + b".part"


@final
@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """Who may use the server, by the SO_PEERCRED of each connection.

    Abstract names have no file permissions, so anyone in the network namespace can
    connect; this is the only gate. The server's own uid is always admitted."""

    owner_uid: int
    uids: frozenset[int] = frozenset()
    gids: frozenset[int] = frozenset()

    @classmethod
    def of(
        cls, owner_uid: int, uids: Collection[int] = (), gids: Collection[int] = ()
    ) -> AccessPolicy:
        return cls(owner_uid, frozenset(uids), frozenset(gids))

    def allows(self, uid: int, gid: int) -> bool:
        return uid == self.owner_uid or uid in self.uids or gid in self.gids

    def refusal(self, pid: int, uid: int, gid: int) -> str:
        admitted = sorted({self.owner_uid} | self.uids)
        who = "uid " + ", ".join(map(str, admitted))
        if self.gids:
            who += " and gid " + ", ".join(map(str, sorted(self.gids)))
        return (
            f"uid {uid} gid {gid} (pid {pid}) is not allowed: this server admits {who}; "
            f"its owner can add --allow-uid {uid}"
        )
