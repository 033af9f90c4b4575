"""Benchmark: passing descriptors with udskit against the stdlib's socket.send_fds/recv_fds.

One process sends a pipe's two ends over a seqpacket socketpair to a forked echo peer,
which receives them, sends them back and closes its copies; the sender receives and
closes them. A round trip is two sendmsg and two recvmsg with SCM_RIGHTS. udskit adds
MSG_CMSG_CLOEXEC, the MSG_CTRUNC check and its own decoding; the stdlib's functions do
neither (received fds are inheritable, a truncation is silent). The two take turns,
round after round, and the table shows medians and udskit's ratio to the stdlib (the
goal: at most 1.5; the first version, which asked the socket for SO_PASSCRED on each
receive and decoded through the general path, measured 2.8).

    .venv/bin/python benchmarks/fdpass.py [--passes 10000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time
from collections.abc import Callable

from udskit.ancillary import fd_count, recv_message, send_fds

Exchange = Callable[[socket.socket, list[int]], list[int]]


def udskit_exchange(sock: socket.socket, fds: list[int]) -> list[int]:
    send_fds(sock, fds, b"x")
    return list(recv_message(sock, 16, 4).fds)


def stdlib_exchange(sock: socket.socket, fds: list[int]) -> list[int]:
    socket.send_fds(sock, [b"x"], fds)
    _data, got, _flags, _addr = socket.recv_fds(sock, 16, 4)
    return list(got)


def _peer(sock: socket.socket, exchange_name: str) -> None:
    while True:
        if exchange_name == "udskit":
            got = recv_message(sock, 16, 4)
            data, fds = got.data, list(got.fds)
        else:
            data, fds, _flags, _addr = socket.recv_fds(sock, 16, 4)
        if not data:
            os._exit(0)
        if exchange_name == "udskit":
            send_fds(sock, fds, data)
        else:
            socket.send_fds(sock, [data], fds)
        for fd in fds:
            os.close(fd)


def run(name: str, exchange: Exchange, passes: int) -> float:
    """Seconds for `passes` round trips with a fresh peer."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        mine.close()
        _peer(theirs, name)
    theirs.close()
    r, w = os.pipe()
    before = fd_count()
    start = time.perf_counter()
    for _ in range(passes):
        for fd in exchange(mine, [r, w]):
            os.close(fd)
    elapsed = time.perf_counter() - start
    assert fd_count() == before, "descriptors leaked"
    mine.close()
    os.waitpid(pid, 0)
    os.close(r)
    os.close(w)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passes", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"udskit": [], "stdlib": []}
    for _ in range(args.rounds):
        times["stdlib"].append(run("stdlib", stdlib_exchange, args.passes))
        times["udskit"].append(run("udskit", udskit_exchange, args.passes))
    base = statistics.median(times["stdlib"])
    print(f"{args.passes} round trips (2 fds each way), median of {args.rounds} rounds")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(
            f"  {name:7} {median:7.3f} s  {args.passes / median:9.0f} round trips/s  "
            f"ratio {median / base:.2f}"
        )


if __name__ == "__main__":
    main()
