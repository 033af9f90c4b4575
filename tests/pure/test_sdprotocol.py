"""systemd's LISTEN_FDS and sd_notify conventions, as values."""

from __future__ import annotations

import pytest

from udskit.errors import ActivationError, UsageError
from udskit.sdprotocol import (
    ListenEnv,
    check_fdname,
    listen_environment,
    parse_listen_env,
    parse_notify,
)


def test_not_activated_is_zero() -> None:
    assert parse_listen_env({}, 42) == ListenEnv(0, ())


def test_names_default_to_unknown_and_fds_start_at_3() -> None:
    got = parse_listen_env({"LISTEN_FDS": "2", "LISTEN_PID": "42"}, 42)
    assert got.names == ("unknown", "unknown") and list(got.fds) == [3, 4]
    named = parse_listen_env(
        {"LISTEN_FDS": "2", "LISTEN_PID": "42", "LISTEN_FDNAMES": "web:admin"}, 42
    )
    assert named.names == ("web", "admin")


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"LISTEN_FDS": "1", "LISTEN_PID": "7"}, "LISTEN_PID is 7, not this process (42)"),
        ({"LISTEN_FDS": "1"}, "LISTEN_PID is not"),
        ({"LISTEN_FDS": "x", "LISTEN_PID": "42"}, "not a number"),
        ({"LISTEN_FDS": "2", "LISTEN_PID": "42", "LISTEN_FDNAMES": "a"}, "1 names"),
        ({"LISTEN_PID": "42"}, "LISTEN_FDS is not"),
    ],
)
def test_inconsistent_environments_are_one_line(env: dict[str, str], words: str) -> None:
    with pytest.raises(ActivationError, match=words.replace("(", r"\(").replace(")", r"\)")) as e:
        parse_listen_env(env, 42)
    assert "\n" not in str(e.value)


def test_fdnames_follow_systemds_rule() -> None:
    assert check_fdname("web-1") == "web-1"
    for bad in ("", "a:b", "with space", "é", "x" * 256):
        with pytest.raises(UsageError):
            check_fdname(bad)


def test_child_environment_replaces_inherited_variables() -> None:
    base = {"PATH": "/bin", "LISTEN_FDS": "9", "LISTEN_PID": "1", "NOTIFY_SOCKET": "/old"}
    env = listen_environment(base, 2, ["a", "b"], 123, "/run/n")
    assert env == {
        "PATH": "/bin",
        "LISTEN_FDS": "2",
        "LISTEN_PID": "123",
        "LISTEN_FDNAMES": "a:b",
        "NOTIFY_SOCKET": "/run/n",
    }


def test_notify_lines() -> None:
    assert parse_notify(b"READY=1\nSTATUS=serving 3 clients\njunk\n") == {
        "READY": "1",
        "STATUS": "serving 3 clients",
    }
