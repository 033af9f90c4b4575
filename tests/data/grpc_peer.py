"""A gRPC server and client over a unix socket (grpcio, no generated code), for tests.

    grpc_peer.py server PATH      serve /udskit.test.Echo/{Say,Shout} on unix:PATH
    grpc_peer.py client PATH      one call at once (the channel is up), then one call per
                                  line of stdin naming the method (Say or Shout)

Each call's reply is printed on its own line, so a test knows when a call is done.
"""

from __future__ import annotations

import importlib
import sys
import threading
from typing import Any

grpc: Any = importlib.import_module("grpc")
SERVICE = "udskit.test.Echo"


def _identity(data: bytes) -> bytes:
    return data


def serve(path: str) -> None:
    from concurrent import futures

    def say(request: bytes, _context: Any) -> bytes:
        return b"said " + request

    def shout(request: bytes, _context: Any) -> bytes:
        return request.upper() + b"!"

    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=_identity, response_serializer=_identity
        )
        for name, fn in (("Say", say), ("Shout", shout))
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(f"unix:{path}")
    server.start()
    print("ready", flush=True)
    threading.Event().wait()


def client(path: str) -> None:
    with grpc.insecure_channel(f"unix:{path}") as channel:

        def call(method: str, body: bytes) -> bytes:
            stub = channel.unary_unary(
                f"/{SERVICE}/{method}",
                request_serializer=_identity,
                response_deserializer=_identity,
            )
            reply: bytes = stub(body, timeout=30)
            return reply

        print(call("Say", b"before").decode(), flush=True)
        for line in sys.stdin:
            method = line.strip()
            if method:
                print(call(method, f"hello {method}".encode()).decode(), flush=True)


if __name__ == "__main__":
    {"server": serve, "client": client}[sys.argv[1]](sys.argv[2])
