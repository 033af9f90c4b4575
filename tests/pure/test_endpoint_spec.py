"""The relay endpoint notation: what each spelling means, and that it round-trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from udskit.address import UnixAddress
from udskit.endpoint_spec import EndpointKind, EndpointSpec, format_endpoint, parse_endpoint
from udskit.errors import AddressError
from udskit.socktype import SocketType


@pytest.mark.parametrize(
    ("text", "kind", "address"),
    [
        ("unix:/run/app.sock", EndpointKind.UNIX, UnixAddress.pathname("/run/app.sock")),
        ("/run/app.sock", EndpointKind.UNIX, UnixAddress.pathname("/run/app.sock")),
        ("rel.sock", EndpointKind.UNIX, UnixAddress.pathname("rel.sock")),
        ("./a:b", EndpointKind.UNIX, UnixAddress.pathname("./a:b")),
        ("@web", EndpointKind.UNIX, UnixAddress.abstract(b"web")),
        ("abstract:web", EndpointKind.UNIX, UnixAddress.abstract(b"web")),
        (r"@HELLO\x00", EndpointKind.UNIX, UnixAddress.abstract(b"HELLO\0")),
        ("unix-listen:/tmp/f.sock", EndpointKind.UNIX_LISTEN, UnixAddress.pathname("/tmp/f.sock")),
        ("abstract-listen:web", EndpointKind.UNIX_LISTEN, UnixAddress.abstract(b"web")),
        ("abstract-listen:@web", EndpointKind.UNIX_LISTEN, UnixAddress.abstract(b"web")),
    ],
)
def test_unix_spellings(text: str, kind: EndpointKind, address: UnixAddress) -> None:
    spec = parse_endpoint(text)
    assert (spec.kind, spec.address, spec.sock_type) == (kind, address, SocketType.STREAM)


def test_tcp_spellings_default_to_loopback() -> None:
    assert parse_endpoint("tcp:127.0.0.1:8080") == EndpointSpec(
        EndpointKind.TCP, host="127.0.0.1", port=8080
    )
    assert parse_endpoint("tcp-listen:8080").host == "127.0.0.1"
    assert parse_endpoint("tcp-listen:[::1]:9").host == "::1"
    assert parse_endpoint("tcp:[::1]:80") == EndpointSpec(EndpointKind.TCP, host="::1", port=80)


def test_stdio_and_exec() -> None:
    assert parse_endpoint("-").kind is EndpointKind.STDIO
    spec = parse_endpoint("exec:cat -n | tr a-z A-Z")
    assert (spec.kind, spec.command) == (EndpointKind.EXEC, "cat -n | tr a-z A-Z")


def test_socket_types_by_word_and_by_default() -> None:
    assert parse_endpoint("seqpacket:unix:/x").sock_type is SocketType.SEQPACKET
    assert parse_endpoint("dgram:@n").sock_type is SocketType.DGRAM
    assert parse_endpoint("/x", SocketType.SEQPACKET).sock_type is SocketType.SEQPACKET
    recv = parse_endpoint("unix-recvfrom:/tmp/d")
    assert (recv.kind, recv.sock_type) == (EndpointKind.UNIX_LISTEN, SocketType.DGRAM)
    send = parse_endpoint("abstract-sendto:d")
    assert (send.kind, send.sock_type, send.address) == (
        EndpointKind.UNIX,
        SocketType.DGRAM,
        UnixAddress.abstract(b"d"),
    )
    # The default type never applies to TCP: a TCP connection is a byte stream.
    assert parse_endpoint("tcp:127.0.0.1:1", SocketType.SEQPACKET).sock_type is SocketType.STREAM


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("tpc:127.0.0.1:80", "unknown endpoint kind 'tpc'"),
        ("tcp:8080", "needs HOST:PORT"),
        ("tcp:127.0.0.1:99999", "bad port"),
        ("tcp-listen:::1:80", "brackets"),
        ("exec:", "needs a command"),
        ("@", "autobind"),
        ("*", "unnamed"),
        ("", "empty endpoint"),
        ("seqpacket:tcp:127.0.0.1:1", "unix endpoints only"),
        ("seqpacket:unix-recvfrom:/x", "contradicts"),
    ],
)
def test_bad_text_gets_one_actionable_line(text: str, words: str) -> None:
    with pytest.raises(AddressError) as info:
        parse_endpoint(text)
    assert words in str(info.value)
    assert "\n" not in str(info.value)


def test_format_reads_back() -> None:
    for text in (
        "unix:/run/a.sock",
        "@web",
        r"@a\x00b",
        "abstract-listen:@x",
        "unix-listen:/tmp/f",
        "seqpacket:unix:/x",
        "dgram:abstract-listen:@d",
        "tcp:127.0.0.1:80",
        "tcp-listen:[::1]:80",
        "-",
        "exec:cat",
        "unix:@not-abstract",
    ):
        spec = parse_endpoint(text)
        assert parse_endpoint(format_endpoint(spec)) == spec


@given(
    name=st.binary(min_size=0, max_size=107),
    listening=st.booleans(),
    sock_type=st.sampled_from(list(SocketType)),
)
def test_every_abstract_endpoint_round_trips(
    name: bytes, listening: bool, sock_type: SocketType
) -> None:
    kind = EndpointKind.UNIX_LISTEN if listening else EndpointKind.UNIX
    spec = EndpointSpec(kind, address=UnixAddress.abstract(name), sock_type=sock_type)
    assert parse_endpoint(format_endpoint(spec)) == spec


@given(
    path=st.text(
        st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"),
        min_size=1,
        max_size=30,
    )
)
def test_every_path_endpoint_round_trips(path: str) -> None:
    spec = EndpointSpec(EndpointKind.UNIX_LISTEN, address=UnixAddress.pathname(path))
    assert parse_endpoint(format_endpoint(spec)) == spec


def test_throttle_reports_once_per_interval_with_the_count_held_back() -> None:
    from udskit.relay.events import Throttle

    throttle = Throttle(5.0)
    assert throttle.due(100.0) == (True, 0)
    assert [throttle.due(100.0 + 0.1 * i)[0] for i in range(1, 40)] == [False] * 39
    assert throttle.due(105.0) == (True, 39)
    assert throttle.due(105.1) == (False, 0)
