"""I/O: UDSF frames and file contents on a connected socket, both directions.

`send_contents` moves a file with sendfile(2): the bytes go from the page cache to the
socket without entering Python. Its SHA-256 is computed at the same time by a second
thread that reads the same range with pread(2); hashlib and pread release the GIL, so
on two CPUs the hash costs little time. What the receiver hashes is what arrived; what
the sender hashes is what the file held; if the file changed in between, the digests
differ and the receiver throws its copy away.

`receive_contents` reads into a few rotating buffers (`recv_into`) and writes them,
while a second thread hashes each one written. Under heavy CPU contention this measured
faster than hashing in the receiving thread (2-3 s against 2-4.5 s for 256 MiB).
"""

from __future__ import annotations

import hashlib
import os
import queue
import socket
from collections.abc import Callable
from contextlib import suppress
from typing import Final, TypeVar

from udskit.errors import TransferError
from udskit.files.protocol import (
    HEADER,
    ErrorReply,
    Message,
    bad_frame,
    decode,
    encode,
    parse_header,
)
from udskit.signals import start_worker

__all__ = [
    "CHUNK",
    "Progress",
    "expect",
    "read_message",
    "receive_contents",
    "send_contents",
    "send_message",
    "tune",
]

T = TypeVar("T")

#: Bytes per sendfile/recv_into/pread call. 1 MiB: a few hundred syscalls per GiB; larger
#: buys nothing measurable (benchmarks/files.py).
CHUNK: Final = 1 << 20
#: Socket buffer asked for on both ends: fewer wake-ups per MiB than the default 208 KiB.
SOCKET_BUFFER: Final = 4 << 20
#: Buffers in rotation between the receiving and the hashing thread.
_BUFFERS: Final = 4

Progress = Callable[[int], None]  # called with the bytes moved so far


def tune(sock: socket.socket) -> None:
    """Larger socket buffers (the kernel caps them at wmem_max/rmem_max)."""
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        with suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)


def send_message(sock: socket.socket, message: Message) -> None:
    sock.sendall(encode(message))


def _recv_exact(sock: socket.socket, size: int, what: str) -> bytes:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if n == 0:
            raise TransferError(f"the other side closed the connection while sending {what}")
        got += n
    return bytes(buf)


def read_message(sock: socket.socket, *, eof_ok: bool = False) -> Message | None:
    """The next message; None at a clean end of stream if `eof_ok`."""
    first = sock.recv(HEADER.size)
    if not first:
        if eof_ok:
            return None
        raise TransferError("the other side closed the connection without an answer")
    header = (
        first
        if len(first) == HEADER.size
        else first + _recv_exact(sock, HEADER.size - len(first), "a frame")
    )
    kind, length = parse_header(header)
    payload = _recv_exact(sock, length, "a frame") if length else b""
    return decode(kind, payload)


def expect(message: Message | None, cls: type[T]) -> T:
    """`message` if it is a `cls`; the server's ERROR as a TransferError; else a
    protocol error."""
    if isinstance(message, cls):
        return message
    if isinstance(message, ErrorReply):
        raise TransferError(message.message, message.code)
    raise bad_frame(f"expected {cls.__name__}, got {type(message).__name__}")


def _hash_range(fd: int, size: int, result: list[bytes | BaseException]) -> None:
    try:
        h = hashlib.sha256()
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        offset = 0
        while offset < size:
            n = os.preadv(fd, [view[: min(CHUNK, size - offset)]], offset)
            if n == 0:
                break  # the file shrank: the digest will not match, as it should not
            h.update(view[:n])
            offset += n
        result.append(h.digest())
    except BaseException as exc:  # handed to the sending thread, which re-raises
        result.append(exc)


def send_contents(
    sock: socket.socket, fd: int, size: int, progress: Progress | None = None
) -> bytes:
    """Send `size` bytes of `fd` from offset 0 with sendfile(2); return their SHA-256.

    TransferError if the file ends early (it shrank during the transfer): the
    connection must then be closed, since the receiver waits for `size` bytes."""
    result: list[bytes | BaseException] = []
    hasher = start_worker(_hash_range, fd, size, result, name="udskit-files-hash")
    try:
        offset = 0
        while offset < size:
            sent = os.sendfile(sock.fileno(), fd, offset, min(CHUNK, size - offset))
            if sent == 0:
                raise TransferError(
                    f"the file ended after {offset} of {size} bytes (was it truncated "
                    "while being sent?)"
                )
            offset += sent
            if progress is not None:
                progress(offset)
    finally:
        hasher.join()
    outcome = result[0]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def _hash_buffers(
    buffers: list[memoryview],
    filled: queue.SimpleQueue[tuple[int, int] | None],
    free: queue.SimpleQueue[int],
    result: list[bytes],
) -> None:
    h = hashlib.sha256()
    while (item := filled.get()) is not None:
        index, length = item
        h.update(buffers[index][:length])
        free.put(index)
    result.append(h.digest())


def receive_contents(
    sock: socket.socket, fd: int, size: int, progress: Progress | None = None
) -> bytes:
    """Receive exactly `size` bytes into `fd`; return their SHA-256.

    The hash runs in a second thread over the chunk just written while the next one is
    received (a few rotating buffers), so receiving, writing and hashing overlap."""
    buffers = [memoryview(bytearray(CHUNK)) for _ in range(_BUFFERS)]
    free: queue.SimpleQueue[int] = queue.SimpleQueue()
    filled: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
    for index in range(_BUFFERS):
        free.put(index)
    result: list[bytes] = []
    hasher = start_worker(_hash_buffers, buffers, filled, free, result, name="udskit-files-hash")
    done = 0
    try:
        while done < size:
            index = free.get()
            view = buffers[index]
            n = sock.recv_into(view, min(CHUNK, size - done), socket.MSG_WAITALL)
            if n == 0:
                raise TransferError(
                    f"the connection closed after {done} of {size} bytes; nothing was kept"
                )
            written = 0
            while written < n:
                written += os.write(fd, view[written:n])
            filled.put((index, n))
            done += n
            if progress is not None:
                progress(done)
    finally:
        filled.put(None)
        hasher.join()
    return result[0]
