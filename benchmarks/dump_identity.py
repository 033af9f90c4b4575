"""What carrying identities and descriptors costs the proxy, in CPU time per request.

Run on its own: `.venv/bin/python benchmarks/dump_identity.py` (as root, about 30 s).
A relay with a tap (the proxy engine of `udskit dump`) runs in a child process between
a client and an echo server; the client makes small request/reply round trips, as
redis-benchmark -P 1 does. We read the relay process's CPU time (utime + stime from
/proc/PID/stat) rather than the wall clock, so that a busy shared machine skews the
figure less. Contenders, alternated round by round:

* tap: the relay with a tap, identities not carried (recvmsg with room for
  descriptors, plain send);
* tap+identity: the same with `carry_identity=True`: upstream connect() as the
  client, every chunk sent with SCM_CREDENTIALS.

Prints µs of relay CPU per round trip (median of the rounds) and the ratio.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection

REQUEST = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n"


def _relay_child(front: str, upstream: str, carry: bool, ready: Connection) -> None:
    from udskit.relay import Relay

    class Tap:
        def opened(self, *_args: object) -> None: ...
        def data(self, *_args: object) -> None: ...
        def closed(self, *_args: object) -> None: ...

    if carry:
        relay = Relay(f"unix-listen:{front}", f"unix:{upstream}", tap=Tap(), carry_identity=True)
    else:  # (without the keyword, so an older udskit runs this contender too)
        relay = Relay(f"unix-listen:{front}", f"unix:{upstream}", tap=Tap())
    relay.open()
    ready.send(True)
    relay.serve_forever()


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)


def _echo(server: socket.socket) -> None:
    conn, _ = server.accept()
    with conn:
        while data := conn.recv(4096):
            conn.sendall(data)


def one_round(carry: bool, trips: int) -> float:
    """µs of relay CPU per round trip."""
    with tempfile.TemporaryDirectory() as tmp:
        upstream, front = f"{tmp}/up.sock", f"{tmp}/front.sock"
        server = socket.socket(socket.AF_UNIX)
        server.bind(upstream)
        server.listen(1)
        threading.Thread(target=_echo, args=(server,), daemon=True).start()
        parent, child = multiprocessing.Pipe()
        proc = multiprocessing.Process(target=_relay_child, args=(front, upstream, carry, child))
        proc.start()
        assert proc.pid is not None
        pid = proc.pid
        try:
            parent.recv()
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(front)
                for _ in range(200):  # warm up
                    client.sendall(REQUEST)
                    client.recv(4096)
                before = _cpu_ticks(pid)
                for _ in range(trips):
                    client.sendall(REQUEST)
                    client.recv(4096)
                after = _cpu_ticks(pid)
        finally:
            os.kill(pid, 9)
            proc.join()
            server.close()
    return (after - before) / os.sysconf("SC_CLK_TCK") / trips * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--trips", type=int, default=20000)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root: carrying identities needs CAP_SETUID and CAP_SETGID")
        return 2
    results: dict[str, list[float]] = {"tap": [], "tap+identity": []}
    start = time.monotonic()
    for i in range(args.rounds):
        results["tap"].append(one_round(False, args.trips))
        results["tap+identity"].append(one_round(True, args.trips))
        print(f"round {i + 1}/{args.rounds} done ({time.monotonic() - start:.0f} s)")
    tap = statistics.median(results["tap"])
    carry = statistics.median(results["tap+identity"])
    print(f"relay CPU per round trip, median of {args.rounds} rounds of {args.trips}:")
    print(f"  tap            {tap:6.1f} us")
    print(f"  tap+identity   {carry:6.1f} us   ({carry / tap:.2f}x tap)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
