"""I/O: open a path beneath the server's root, and never anything outside it.

Resolution is done by the kernel, relative to a directory fd of the root, with
openat2(2) and `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`: no
component may be a symbolic link and the walk may not leave the root, checked at the
moment of the open, so a symlink swapped in by a racing process is refused too (the
check and the use are one syscall). Python has no binding for openat2, hence ctypes and
syscall number 437 (the same on every architecture: it was numbered after the
syscall tables were unified, Linux 5.6).

Where openat2 is missing (Linux < 5.6, or a seccomp filter answering ENOSYS) the walk is
done by hand: each directory is opened with `O_NOFOLLOW | O_DIRECTORY` relative to the
previous one's fd, and the last component with `O_NOFOLLOW`. Both ways refuse every
symbolic link, also one that points inside the root: one rule, the same on every kernel,
that a reader of the code can check.

Failures become `TransferError`s with a protocol `ErrorCode` and a one-line reason.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import os
import stat
from contextlib import suppress
from typing import Final

from udskit.errors import TransferError
from udskit.files.paths import join_parts, show_path
from udskit.files.protocol import ErrorCode
from udskit.probe import file_kind

__all__ = ["Resolver", "describe_os_error", "open_beneath", "openat2_available"]

SYS_openat2: Final = 437
RESOLVE_NO_XDEV: Final = 0x01
RESOLVE_NO_MAGICLINKS: Final = 0x02
RESOLVE_NO_SYMLINKS: Final = 0x04
RESOLVE_BENEATH: Final = 0x08
_RESOLVE: Final = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
#: openat2 answers EAGAIN when a rename raced with its check (openat2(2) "EAGAIN");
#: the man page asks callers to try again.
_EAGAIN_TRIES: Final = 16


class Resolver(enum.Enum):
    AUTO = "auto"  # openat2 where the kernel has it, else the walk
    OPENAT2 = "openat2"
    WALK = "walk"


class _OpenHow(ctypes.Structure):
    _fields_ = (
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    )


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_openat2_known: bool | None = None


def _openat2(dir_fd: int, path: bytes, flags: int, mode: int) -> int:
    how = _OpenHow(flags, mode if flags & os.O_CREAT else 0, _RESOLVE)
    for _ in range(_EAGAIN_TRIES):
        fd = _libc.syscall(
            ctypes.c_long(SYS_openat2),
            ctypes.c_int(dir_fd),
            ctypes.c_char_p(path),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err != errno.EAGAIN:
            raise OSError(err, os.strerror(err))
    raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))


def openat2_available() -> bool:
    """Whether this kernel (and any seccomp filter) lets us call openat2."""
    global _openat2_known
    if _openat2_known is None:
        try:
            os.close(_openat2(-100, b".", os.O_PATH | os.O_CLOEXEC, 0))  # AT_FDCWD
            _openat2_known = True
        except OSError as exc:
            _openat2_known = exc.errno not in (errno.ENOSYS, errno.EPERM)
    return _openat2_known


def _walk(root_fd: int, parts: tuple[bytes, ...], flags: int, mode: int) -> int:
    """The fallback: one component at a time, never following a link."""
    if not parts:
        return os.open(".", flags | os.O_NOFOLLOW, mode, dir_fd=root_fd)
    current = root_fd
    try:
        for part in parts[:-1]:
            nxt = os.open(
                part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=current
            )
            if current != root_fd:
                os.close(current)
            current = nxt
        return os.open(parts[-1], flags | os.O_NOFOLLOW, mode, dir_fd=current)
    finally:
        if current != root_fd:
            os.close(current)


def open_beneath(
    root_fd: int,
    parts: tuple[bytes, ...],
    flags: int,
    mode: int = 0,
    resolver: Resolver = Resolver.AUTO,
    requested: tuple[bytes, ...] | None = None,
) -> int:
    """An fd for `parts` beneath `root_fd`, opened with `flags`; no symbolic link on the
    way, never outside the root. TransferError (with the reason) otherwise; its message
    names `requested` (the path the client asked for, when `parts` is its directory)."""
    # openat2 rejects any flag O_PATH ignores (EINVAL), O_NOCTTY among them.
    flags |= os.O_CLOEXEC if flags & os.O_PATH else os.O_CLOEXEC | os.O_NOCTTY
    use_openat2 = resolver is Resolver.OPENAT2 or (
        resolver is Resolver.AUTO and openat2_available()
    )
    try:
        if use_openat2:
            return _openat2(root_fd, join_parts(parts), flags, mode)
        return _walk(root_fd, parts, flags, mode)
    except OSError as exc:
        raise describe_os_error(root_fd, parts, exc, requested) from None


def _first_symlink(root_fd: int, parts: tuple[bytes, ...]) -> tuple[bytes, bytes] | None:
    """(the path up to the first symbolic link, its target), to explain a refusal.
    Only for the message: the refusal itself was the kernel's."""
    for i in range(1, len(parts) + 1):
        prefix = join_parts(parts[:i])
        try:
            st = os.stat(prefix, dir_fd=root_fd, follow_symlinks=False)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            target = b"?"
            with suppress(OSError):
                target = os.readlink(prefix, dir_fd=root_fd)
            return prefix, target
    return None


def describe_os_error(
    root_fd: int,
    parts: tuple[bytes, ...],
    exc: OSError,
    requested: tuple[bytes, ...] | None = None,
) -> TransferError:
    """The TransferError for a failed open or rename beneath the root."""
    shown = show_path(join_parts(requested or parts))
    err = exc.errno or 0
    if err in (errno.ELOOP, errno.EXDEV, errno.ENOTDIR):
        link = _first_symlink(root_fd, parts)
        if link is not None:
            where, target = link
            return TransferError(
                f"{shown}: {show_path(where)} is a symbolic link (to {show_path(target)}); "
                "the server follows no symbolic links",
                ErrorCode.SYMLINK,
            )
        if err == errno.EXDEV:
            return TransferError(f"{shown}: leaves the server's root; refused", ErrorCode.BAD_PATH)
    if err == errno.ENOENT:
        return TransferError(f"{shown}: no such file under the server's root", ErrorCode.NOT_FOUND)
    if err == errno.ENOTDIR:
        return TransferError(
            f"{shown}: a component of the path is not a directory", ErrorCode.NOT_FOUND
        )
    if err == errno.EISDIR:
        return TransferError(f"{shown}: is a directory", ErrorCode.NOT_REGULAR)
    if err == errno.ENXIO:
        return TransferError(
            f"{shown}: is a socket or a device without a driver; only regular files are served",
            ErrorCode.NOT_REGULAR,
        )
    if err == errno.ELOOP:
        return TransferError(f"{shown}: a symbolic link on the way; refused", ErrorCode.SYMLINK)
    what = errno.errorcode.get(err, str(err))
    return TransferError(
        f"{shown}: {os.strerror(err).lower()} ({what}) on the server", ErrorCode.IO
    )


def refuse_unless_regular(mode: int, parts: tuple[bytes, ...]) -> None:
    """Devices, FIFOs, sockets and directories are never read or replaced."""
    if stat.S_ISREG(mode):
        return
    kind = file_kind(mode)
    raise TransferError(
        f"{show_path(join_parts(parts))}: is a {kind}; only regular files are transferred",
        ErrorCode.NOT_REGULAR,
    )
