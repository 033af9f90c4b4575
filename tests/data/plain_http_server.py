"""A tiny HTTP/1.0 server that knows nothing of udskit, for hand-off and activation tests.

    plain_http_server.py NAME --listen-fds      serve the sockets of LISTEN_FDS (fd 3..)
    plain_http_server.py NAME PATH...           bind unix socket files itself

Every response body is "NAME pid PID\\n" (Connection: close). On SIGTERM it stops
accepting, finishes the request in hand and exits 0: the graceful stop that a
zero-downtime reload relies on. With --notify it sends READY=1 to NOTIFY_SOCKET.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import sys

stopping = False


def _stop(_signum: int, _frame: object) -> None:
    global stopping
    stopping = True


def _serve_one(conn: socket.socket, name: str) -> None:
    conn.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return
        data += chunk
    body = f"{name} pid {os.getpid()}\n".encode()
    head = f"HTTP/1.0 200 OK\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    conn.sendall(head.encode() + body)


def main() -> None:
    signal.signal(signal.SIGTERM, _stop)
    name = sys.argv[1]
    args = sys.argv[2:]
    notify = "--notify" in args
    args = [a for a in args if a != "--notify"]
    listeners: list[socket.socket] = []
    if args == ["--listen-fds"]:
        if os.environ.get("LISTEN_PID") != str(os.getpid()):
            sys.exit(f"LISTEN_PID {os.environ.get('LISTEN_PID')} is not {os.getpid()}")
        listeners = [socket.socket(fileno=3 + i) for i in range(int(os.environ["LISTEN_FDS"]))]
    else:
        for path in args:
            sock = socket.socket(socket.AF_UNIX)
            sock.bind(path)
            sock.listen(512)
            listeners.append(sock)
    for sock in listeners:
        sock.setblocking(False)  # shared with another process: it may win the race
    if notify:
        target = os.environ["NOTIFY_SOCKET"]
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as n:
            n.sendto(b"READY=1", target)
    while not stopping:
        try:
            ready, _, _ = select.select(listeners, [], [], 0.1)
        except InterruptedError:
            continue
        for sock in ready:
            if stopping:
                break
            try:
                conn, _ = sock.accept()
            except BlockingIOError:
                continue
            with conn:
                conn.setblocking(True)
                with contextlib.suppress(OSError):
                    _serve_one(conn, name)


if __name__ == "__main__":
    main()
