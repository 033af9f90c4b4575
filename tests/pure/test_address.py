"""The address notation: every kind parses, formats and round-trips exactly."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from udskit.address import (
    MAX_ABSTRACT_BYTES,
    MAX_PATH_BYTES,
    AddressKind,
    UnixAddress,
    decode_sockaddr,
    format_address,
    from_sun_path,
    parse_address,
)
from udskit.errors import AddressError


@pytest.mark.parametrize(
    ("text", "kind", "name"),
    [
        ("/run/app.sock", AddressKind.PATHNAME, b"/run/app.sock"),
        ("./rel.sock", AddressKind.PATHNAME, b"./rel.sock"),
        ("rel.sock", AddressKind.PATHNAME, b"rel.sock"),
        ("unix:/run/app.sock", AddressKind.PATHNAME, b"/run/app.sock"),
        ("unix:@odd", AddressKind.PATHNAME, b"@odd"),
        ("@name", AddressKind.ABSTRACT, b"name"),
        ("abstract:name", AddressKind.ABSTRACT, b"name"),
        ("@HELLO\\x00", AddressKind.ABSTRACT, b"HELLO\0"),
        ("@a\\\\b", AddressKind.ABSTRACT, b"a\\b"),
        ("@日本語", AddressKind.ABSTRACT, "日本語".encode()),
        ("@", AddressKind.AUTOBIND, b""),
        ("*", AddressKind.UNNAMED, b""),
    ],
)
def test_parse(text: str, kind: AddressKind, name: bytes) -> None:
    address = parse_address(text)
    assert address.kind is kind
    assert address.name == name


def test_hello_and_hello_nul_are_different_addresses() -> None:
    a, b = parse_address("@HELLO"), parse_address("@HELLO\\x00")
    assert a != b
    assert a.to_sockaddr() == b"\0HELLO"
    assert b.to_sockaddr() == b"\0HELLO\0"
    assert format_address(b) == "@HELLO\\x00"


@pytest.mark.parametrize(
    ("address", "text"),
    [
        (UnixAddress.abstract(b"a\0b"), "@a\\x00b"),
        (UnixAddress.abstract(b"\xff\xfe"), "@\\xff\\xfe"),
        (UnixAddress.abstract("日本語"), "@日本語"),
        (UnixAddress.abstract(b"tab\there"), "@tab\\x09here"),
        (UnixAddress.pathname("/tmp/x.sock"), "/tmp/x.sock"),
        (UnixAddress.pathname("@looks-abstract"), "unix:@looks-abstract"),
        (UnixAddress.pathname("*"), "unix:*"),
        (UnixAddress.abstract(b""), "abstract:"),
        (UnixAddress.unnamed(), "*"),
        (UnixAddress.autobind(), "@"),
    ],
)
def test_format(address: UnixAddress, text: str) -> None:
    assert format_address(address) == text
    assert parse_address(text) == address


@given(st.binary(min_size=1, max_size=MAX_ABSTRACT_BYTES))
def test_every_abstract_name_round_trips(name: bytes) -> None:
    address = UnixAddress.abstract(name)
    assert parse_address(format_address(address)) == address


_path_chars = st.characters(exclude_characters="\0", exclude_categories=["Cs"])


@given(st.text(_path_chars, min_size=1, max_size=30).filter(lambda p: len(os.fsencode(p)) <= 107))
def test_every_path_round_trips(path: str) -> None:
    address = UnixAddress.pathname(path)
    assert parse_address(format_address(address)) == address


def test_length_limits() -> None:
    UnixAddress.pathname("/" + "a" * (MAX_PATH_BYTES - 1))
    with pytest.raises(
        AddressError, match="path too long for sun_path: 108 bytes, the limit is 107"
    ):
        UnixAddress.pathname("/" + "a" * MAX_PATH_BYTES)
    UnixAddress.abstract(b"x" * MAX_ABSTRACT_BYTES)
    with pytest.raises(AddressError, match="abstract name too long: 108 bytes"):
        UnixAddress.abstract(b"x" * (MAX_ABSTRACT_BYTES + 1))


@pytest.mark.parametrize("text", ["", "/tmp/a\0b", "@bad\\q"])
def test_bad_text_is_an_address_error(text: str) -> None:
    with pytest.raises(AddressError):
        parse_address(text)


def test_decode_what_cpython_returns() -> None:
    assert decode_sockaddr("/tmp/x.sock") == UnixAddress.pathname("/tmp/x.sock")
    assert decode_sockaddr(b"\0abc\0") == UnixAddress.abstract(b"abc\0")
    assert decode_sockaddr("") == UnixAddress.unnamed()
    assert decode_sockaddr(None) == UnixAddress.unnamed()


def test_sun_path_bytes_as_the_kernel_reports_them() -> None:
    assert from_sun_path(b"/tmp/x.sock\0") == UnixAddress.pathname("/tmp/x.sock")
    assert from_sun_path(b"\0a\0b") == UnixAddress.abstract(b"a\0b")
    assert from_sun_path(b"") == UnixAddress.unnamed()
    address = UnixAddress.abstract(b"k")
    assert from_sun_path(address.sun_path()) == address
    assert address.to_sockaddr_bytes() == b"\x01\x00\x00k"


def test_a_108_byte_path_the_kernel_reports_is_decoded() -> None:
    """bind() takes a path that fills sun_path with no NUL; listing it must not fail."""
    raw = b"/" + b"p" * 107
    address = from_sun_path(raw)
    assert address.kind is AddressKind.PATHNAME and address.name == raw
    assert address.sun_path() == raw
    assert decode_sockaddr(raw.decode()) == address
    with pytest.raises(AddressError, match="no NUL"):
        address.to_sockaddr()
    with pytest.raises(AddressError, match="path too long"):
        parse_address(raw.decode())
