"""Pure: the three unix socket types and their names on the command line."""

from __future__ import annotations

import enum


class SocketType(enum.Enum):
    """stream (SOCK_STREAM), dgram (SOCK_DGRAM), seqpacket (SOCK_SEQPACKET).

    Values are the names users type (`--type dgram`); `kernel` is the number the
    kernel uses (include/linux/net.h), kept here so pure code need not import socket.
    """

    STREAM = "stream"
    DGRAM = "dgram"
    SEQPACKET = "seqpacket"

    @property
    def kernel(self) -> int:
        return _KERNEL[self]

    @property
    def noun(self) -> str:
        """How a sentence names it: 'a datagram socket'."""
        return {"stream": "stream", "dgram": "datagram", "seqpacket": "seqpacket"}[self.value]

    @property
    def connection_oriented(self) -> bool:
        return self is not SocketType.DGRAM

    @property
    def keeps_boundaries(self) -> bool:
        return self is not SocketType.STREAM

    @classmethod
    def from_kernel(cls, number: int) -> SocketType:
        for kind, value in _KERNEL.items():
            if value == number:
                return kind
        raise ValueError(f"not a unix socket type: {number}")

    @classmethod
    def parse(cls, text: str) -> SocketType:
        aliases = {"datagram": "dgram", "seq": "seqpacket", "sock_stream": "stream"}
        return cls(aliases.get(text.lower(), text.lower()))


_KERNEL = {SocketType.STREAM: 1, SocketType.DGRAM: 2, SocketType.SEQPACKET: 5}
