"""The UDSF/1 protocol and the path rules of the file server, without sockets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from udskit.errors import TransferError
from udskit.files.paths import NAME_MAX, AccessPolicy, split_remote_path, temporary_name
from udskit.files.protocol import (
    HEADER,
    MAX_PAYLOAD,
    Digest,
    Done,
    End,
    Entry,
    EntryKind,
    ErrorCode,
    ErrorReply,
    FileHeader,
    GetRequest,
    Hello,
    ListRequest,
    Message,
    PutRequest,
    Ready,
    Welcome,
    decode,
    encode,
    parse_header,
)

MESSAGES: list[Message] = [
    Hello(),
    Hello(7, b"XXXX"),
    GetRequest(b"a/b.txt"),
    GetRequest(b"\xff\xfe odd"),
    PutRequest(b"in/x", 1 << 40, 0o644),
    ListRequest(b""),
    Digest(bytes(range(32))),
    Welcome(1, True, 100),
    Welcome(1, False, None),
    FileHeader(123, 0o600, 1_700_000_000_123_456_789),
    Ready(),
    Done(5, b"\x01" * 32),
    Entry(b"name", EntryKind.DIRECTORY, 4096, 0o755, -1),
    End(3),
    ErrorReply(ErrorCode.SYMLINK, "a/b is a symbolic link (to /etc)"),
]


def _roundtrip(message: Message) -> Message:
    frame = encode(message)
    kind, length = parse_header(frame[: HEADER.size])
    assert length == len(frame) - HEADER.size
    return decode(kind, frame[HEADER.size :])


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message: Message) -> None:
    assert _roundtrip(message) == message


@given(st.binary(min_size=0, max_size=4096))
def test_any_path_bytes_round_trip(path: bytes) -> None:
    assert _roundtrip(GetRequest(path)) == GetRequest(path)


def test_frame_layout_is_type_then_big_endian_length() -> None:
    assert encode(GetRequest(b"ab")) == b"\x02\x00\x00\x00\x04\x00\x02ab"
    assert encode(Hello()) == b"\x01\x00\x00\x00\x05UDSF\x01"


def test_unknown_type_and_huge_frames_are_refused() -> None:
    with pytest.raises(TransferError, match="unknown frame type 0x42"):
        parse_header(HEADER.pack(0x42, 0))
    with pytest.raises(TransferError, match="a frame of"):
        parse_header(HEADER.pack(0x02, MAX_PAYLOAD + 1))


def test_truncated_payloads_are_protocol_errors() -> None:
    frame = encode(PutRequest(b"abc", 10, 0o644))
    kind, _ = parse_header(frame[: HEADER.size])
    for cut in range(HEADER.size, len(frame) - 1):
        with pytest.raises(TransferError, match="protocol error") as info:
            decode(kind, frame[HEADER.size : cut])
        assert info.value.code == ErrorCode.BAD_REQUEST


def test_error_text_is_utf8_even_from_bad_input() -> None:
    got = _roundtrip(ErrorReply(ErrorCode.IO, "disk \udcff full"))
    assert isinstance(got, ErrorReply) and got.message == "disk ? full"


@pytest.mark.parametrize(
    ("raw", "parts"),
    [
        (b"a", (b"a",)),
        (b"a//b/./c", (b"a", b"b", b"c")),
        (b"./x/", (b"x",)),
        (b"..a/b..", (b"..a", b"b..")),
    ],
)
def test_relative_paths_split(raw: bytes, parts: tuple[bytes, ...]) -> None:
    assert split_remote_path(raw) == parts


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"../x", "`..` is refused"),
        (b"a/../../x", "`..` is refused"),
        (b"a/..", "`..` is refused"),
        (b"/etc/passwd", "absolute paths are refused"),
        (b"a\x00b", "NUL"),
        (b"", "names the root"),
        (b".", "names the root"),
        (b"x" * 300, "longer than 255"),
    ],
)
def test_escaping_paths_are_refused_before_any_syscall(raw: bytes, words: str) -> None:
    with pytest.raises(TransferError, match=words) as info:
        split_remote_path(raw)
    assert info.value.code == ErrorCode.BAD_PATH


def test_the_root_may_be_listed() -> None:
    assert split_remote_path(b"", allow_root=True) == ()
    assert split_remote_path(b"./", allow_root=True) == ()


def test_refusal_messages_escape_what_the_client_sent() -> None:
    with pytest.raises(TransferError) as info:
        split_remote_path(b"/\x1b[31mred")
    assert "\x1b" not in str(info.value) and "\\x1b[31mred" in str(info.value)


@given(st.binary(min_size=1, max_size=NAME_MAX).filter(lambda b: b"/" not in b))
def test_temporary_names_fit_and_hide(name: bytes) -> None:
    temp = temporary_name(name, "0123456789ab")
    assert len(temp) <= NAME_MAX
    assert temp.startswith(b".") and temp.endswith(b".part") and b"/" not in temp


def test_access_policy_admits_the_owner_and_the_listed() -> None:
    policy = AccessPolicy.of(1000, uids=[1001], gids=[50])
    assert policy.allows(1000, 1000)
    assert policy.allows(1001, 9)
    assert policy.allows(7, 50)
    assert not policy.allows(7, 7)
    assert "--allow-uid 7" in policy.refusal(42, 7, 7)
    assert not AccessPolicy.of(0).allows(65534, 65534)
