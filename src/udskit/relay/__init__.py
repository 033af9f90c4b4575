"""I/O: the forwarding engine behind `udskit relay` and `udskit dump`.

Blocking::

    from udskit.relay import Relay, serve_relay

    serve_relay("unix-listen:/tmp/front.sock", "tcp:127.0.0.1:8080")   # until Ctrl-C

In the background, e.g. in a test or in the capture proxy::

    with Relay(listener, "unix:/run/app.sock.orig", tap=my_tap) as relay:
        relay.start()          # binds (errors raise here), then serves in a thread
        ...
        relay.stop()           # closes every connection; what it bound, it unlinks

asyncio::

    await serve_relay_async("tcp-listen:8080", "unix:/run/app.sock")  # cancel to stop

`Relay(left, right, **options)`
    `left`: an endpoint (text as in `udskit.endpoint_spec`, or an `EndpointSpec`), or a
    listener you bound yourself (`udskit.endpoints.Listener` or a listening socket):
    the relay accepts on it but never closes it. A `left` that does not listen
    (`unix:PATH`, `-`, `exec:CMD`) makes a relay of one connection that ends with it.
    `right`: where each client is forwarded (never a listener).

Options:
    `tap`             a `udskit.tap.Tap`: opened/data/closed per connection and chunk.
                      With a tap the bytes pass through a reused buffer (the tap sees a
                      memoryview: copy what you keep); without one, stream-to-stream
                      connections use splice(2) and never touch user space.
    `on_event`        called with a `RelayEvent` per accept/refusal/connect/close/reset
                      (`-v` prints them). Runs in the relay's thread; must be quick.
    `max_clients`     stop accepting while this many connections are open (they wait in
                      the backlog, as with socat's max-children).
    `allow_uids`, `allow_gids`
                      admit only unix clients whose SO_PEERCRED (or, for datagrams,
                      SCM_CREDENTIALS) uid or gid is listed; others are closed at once.
    `backlog`, `mode`, `owner`, `group`
                      for the listener, via `udskit.endpoints.open_listener` (safe bind).
    `splice`          False forces the copy path (for comparisons).
    `connect_timeout` how long to retry an upstream whose backlog is full.
    `dgram_idle`      seconds after which a datagram sender's association is closed.
    `stdio`           (stdin, stdout) binary streams for the `-` endpoint.

Every connection's `udskit.tap.ConnectionInfo` carries the client's pid, uid, gid and
command (/proc/PID/comm) for unix clients, when a tap or `on_event` is given.
`relay.stats` holds running totals; `relay.listen_endpoint` the endpoint as bound
(with the port the kernel chose for `tcp-listen:0`).

Errors a user can cause (bad endpoint, bind refused, upstream unreachable for a
one-connection relay) are `udskit.errors.UdskitError`s with one actionable line.
"""

from __future__ import annotations

from typing import Any

from udskit.endpoint_spec import EndpointKind, EndpointSpec, format_endpoint, parse_endpoint
from udskit.relay.engine import EndpointLike, ListenLike, Relay
from udskit.relay.events import CopyMode, EventKind, RelayEvent, RelayStats

__all__ = [
    "CopyMode",
    "EndpointKind",
    "EndpointSpec",
    "EventKind",
    "Relay",
    "RelayEvent",
    "RelayStats",
    "format_endpoint",
    "parse_endpoint",
    "serve_relay",
    "serve_relay_async",
]


def serve_relay(left: ListenLike, right: EndpointLike, **options: Any) -> RelayStats:
    """Relay until stopped (Ctrl-C, SIGTERM as an exception, or the end of a one-connection
    relay); everything is closed on the way out. Returns the final totals."""
    relay = Relay(left, right, **options)
    relay.serve_forever()
    return relay.stats


async def serve_relay_async(left: ListenLike, right: EndpointLike, **options: Any) -> RelayStats:
    """The same from asyncio: the engine runs its own epoll loop in a worker thread (it
    is faster than asyncio's for this job); cancelling this coroutine stops it and
    waits for its cleanup."""
    import asyncio  # here: 40 ms of every relay's and dump's start-up otherwise (it loads ssl)

    relay = Relay(left, right, **options)
    relay.open()
    try:
        await asyncio.to_thread(relay.serve_forever)
    except asyncio.CancelledError:
        relay.loop.stop()  # only asks: the loop's thread does the cleanup...
        await asyncio.to_thread(relay.wait, 10)  # ...which we wait for off the event loop
        raise
    return relay.stats
