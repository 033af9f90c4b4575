"""diagnose(facts) on every combination of its inputs: the verdict names the true cause.

The facts are built by hand, in every combination of a few dimensions (address kind,
directories, file, bound socket, backlog, wanted type, namespaces, connect result),
and each combination is held to the rules that must always hold.
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import json
from collections.abc import Iterator
from typing import Final

import pytest

from udskit.address import UnixAddress, parse_address
from udskit.doctor import (
    CHECK_NAMES,
    ConnectFacts,
    Facts,
    FileFacts,
    LsmFacts,
    MountNsFacts,
    NetNsFacts,
    OwnerFacts,
    SocketFacts,
    UserFacts,
    Verdict,
    diagnose,
    diagnosis_lines,
    diagnosis_to_json,
    may_access,
    show,
)
from udskit.sockdiag import SocketState
from udskit.socktype import SocketType

ROOT: Final = UserFacts("root", 0, 0)
NOBODY: Final = UserFacts("nobody", 65534, 65534)
PATH: Final = "/srv/app/s.sock"
SERVER: Final = OwnerFacts(4242, "server", 0, "root", "/", "net:[1]", "mnt:[1]")


def _dir(path: str, mode: int = 0o755, kind: str | None = "directory") -> FileFacts:
    return FileFacts(path, kind, mode | 0o040000, 0, 0, 0.0, "root", "root")


DIRS: Final = {
    "ok": (_dir("/"), _dir("/srv"), _dir("/srv/app")),
    "missing": (_dir("/"), _dir("/srv"), _dir("/srv/app", kind=None)),
    "not-a-dir": (_dir("/"), _dir("/srv", kind="regular file")),
    "no-search": (_dir("/"), _dir("/srv"), _dir("/srv/app", 0o700)),
}
TARGETS: Final = {
    "missing": FileFacts(PATH, None),
    "regular": FileFacts(PATH, "regular file", 0o100644, 0, 0, 1e9, "root", "root"),
    "socket": FileFacts(PATH, "socket", 0o140777, 0, 0, 1e9, "root", "root"),
    "socket-0755": FileFacts(PATH, "socket", 0o140755, 0, 0, 1e9, "root", "root"),
}


def _socket(kind: str, full: bool) -> SocketFacts | None:
    pending, backlog = (6, 5) if full else (0, 5)
    if kind == "none":
        return None
    if kind == "stream":
        return SocketFacts(
            1, SocketType.STREAM, SocketState.LISTEN, pending, backlog, owners=(SERVER,)
        )
    if kind == "stream-unlistened":
        return SocketFacts(1, SocketType.STREAM, SocketState.UNCONNECTED, owners=(SERVER,))
    if kind == "dgram":
        return SocketFacts(1, SocketType.DGRAM, SocketState.UNCONNECTED, owners=(SERVER,))
    assert kind == "dgram-connected"
    return SocketFacts(
        1, SocketType.DGRAM, SocketState.CONNECTED, peer_inode=7, peer_address="/x", owners=()
    )


Combination = tuple[str, str, str, str, bool, SocketType | None, int | None, bool, bool, str]
KINDS = ("pathname", "abstract")
SOCKETS = ("none", "stream", "stream-unlistened", "dgram", "dgram-connected")
WANTED = (None, SocketType.STREAM, SocketType.DGRAM)
ERRNOS = (None, errno.ECONNREFUSED)
USERS = ("root", "nobody")


def combinations() -> Iterator[Combination]:
    yield from itertools.product(
        KINDS,
        DIRS,
        TARGETS,
        SOCKETS,
        (False, True),
        WANTED,
        ERRNOS,
        (False, True),
        (False, True),
        USERS,
    )


def build(combo: Combination) -> Facts:
    kind, dirs, target_key, sock_key, full, wanted, err, mount, netns, user_key = combo
    user = ROOT if user_key == "root" else NOBODY
    sock = _socket(sock_key, full)
    connect = ConnectFacts(
        wanted or (sock.type if sock else SocketType.STREAM),
        f"uid {user.uid} ({user.name})",
        err,
        0.0001,
        "connection refused" if err else None,
    )
    if kind == "abstract":
        return Facts(
            "@app",
            UnixAddress.abstract("app"),
            wanted=wanted,
            user=user,
            bound=(sock,) if sock else (),
            net_ns=(NetNsFacts("net:[9]", True, (SERVER,)),) if netns else (),
            own_netns="net:[1]",
            connect=connect,
        )
    directories = DIRS[dirs]
    reachable = all(d.kind == "directory" for d in directories)
    target = TARGETS[target_key] if reachable else None
    is_socket = target is not None and target.kind == "socket"
    away = None
    if mount and sock is not None and not (target and target.exists):
        away = MountNsFacts(sock, SERVER, f"/proc/4242/root{PATH}")
    return Facts(
        PATH,
        parse_address(PATH),
        wanted=wanted,
        user=user,
        absolute=PATH,
        directories=directories,
        target=target,
        bound=(sock,) if sock and is_socket else (),
        mount_ns=(away,) if away else (),
        own_netns="net:[1]",
        connect=connect,
    )


#: One combination per distinct set of facts (an abstract name has no directories,
#: so those dimensions collapse for it).
ALL: Final = list({build(combo): combo for combo in combinations()}.values())


def test_there_are_many_combinations() -> None:
    assert len(ALL) > 700


@pytest.mark.parametrize("kind", KINDS)
def test_invariants_on_every_combination(kind: str) -> None:
    for combo in ALL:
        if combo[0] != kind:
            continue
        facts = build(combo)
        d = diagnose(facts)
        assert tuple(c.name for c in d.checks) == CHECK_NAMES, combo
        # Exit 0 exactly when the real connect worked.
        assert d.connected is (facts.connect is not None and facts.connect.errno is None)
        for c in d.checks:
            assert c.found and c.found.isprintable(), (combo, c)
            if c.verdict is Verdict.PROBLEM and c.name != "connect":
                assert c.fix, (combo, c)
        if not d.connected:
            connect = d.check("connect")
            first = next((c for c in d.problems if c.name != "connect"), None)
            assert connect.fix == (f"see the {first.name} check above" if first else connect.fix), (
                combo
            )
        # The JSON form is strict UTF-8 and carries every verdict.
        document = diagnosis_to_json(d)
        json.dumps(document, ensure_ascii=False).encode("utf-8")
        assert [c["verdict"] for c in document["checks"]] == [c.verdict.value for c in d.checks]
        assert diagnosis_lines(d)[-1].startswith(d.address)


def _cause(combo: Combination) -> str | None:
    """The check that must carry the problem, from the combination alone (the order of
    the checks: the first broken thing on the way from the name to the listener)."""
    kind, dirs, target_key, sock_key, full, wanted, _err, _mount, _netns, user_key = combo
    if kind == "pathname":
        if dirs in ("missing", "not-a-dir") or target_key == "missing":
            return "path"
        if target_key == "regular":
            return "file"
        if user_key == "nobody" and (dirs == "no-search" or target_key == "socket-0755"):
            return "permissions"
        if sock_key == "none":
            return "listener"
    elif sock_key == "none":
        return "listener"
    if sock_key == "stream-unlistened":
        return "listener"
    assert sock_key != "none"
    sock_type = SocketType.STREAM if sock_key.startswith("stream") else SocketType.DGRAM
    if wanted is not None and wanted is not sock_type:
        return "type"
    if sock_key == "stream" and full:
        return "backlog"
    if sock_key == "dgram-connected":
        return "dgram-peer"
    return None


def test_the_first_problem_is_the_true_cause() -> None:
    for combo in ALL:
        d = diagnose(build(combo))
        first = next((c.name for c in d.problems if c.name != "connect"), None)
        assert first == _cause(combo), (combo, [(c.name, c.verdict.value) for c in d.checks])


def test_stale_file_names_owner_and_time() -> None:
    facts = build(
        ("pathname", "ok", "socket", "none", False, None, errno.ECONNREFUSED, False, False, "root")
    )
    check = diagnose(facts).check("listener")
    assert check.verdict is Verdict.PROBLEM
    assert check.found == (
        "stale socket file: nothing is bound to it (UNIX_DIAG_VFS); left by uid 0 (root) "
        "at 2001-09-09 01:46:40 UTC"
    )
    assert f"rm {PATH}" in (check.fix or "")


def test_a_socket_bound_from_another_network_namespace_is_not_stale() -> None:
    base = build(("pathname", "ok", "socket", "none", False, None, None, False, False, "root"))
    facts = dataclasses.replace(base, bound_elsewhere=True)
    d = diagnose(facts)
    assert d.check("listener").verdict is Verdict.NOTE
    assert "another network namespace" in d.check("listener").found
    assert d.connected


def test_mount_namespace_verdict_says_where() -> None:
    facts = build(
        ("pathname", "ok", "missing", "stream", False, None, errno.ENOENT, True, False, "root")
    )
    d = diagnose(facts)
    assert d.check("path").found == (
        f"no file {PATH} in this mount namespace; but pid 4242 (server, user root) has it "
        f"in its own mount namespace, reachable from here as /proc/4242/root{PATH}"
    )
    assert d.check("namespace").verdict is Verdict.PROBLEM
    assert "nsenter -t 4242 -m" in (d.check("namespace").fix or "")


def test_abstract_name_in_another_network_namespace() -> None:
    facts = build(
        ("abstract", "ok", "missing", "none", False, None, errno.ECONNREFUSED, False, True, "root")
    )
    d = diagnose(facts)
    assert d.check("listener").found == (
        "nothing is bound to @app in this network namespace (net:[1]); it is bound in "
        "net:[9], held by pid 4242 (server, user root)"
    )
    assert "nsenter -t 4242 -n -- udskit connect @app" in (d.check("namespace").fix or "")


def test_security_modules_are_hinted_only_when_active() -> None:
    base = build(("pathname", "ok", "socket", "stream", False, None, None, False, False, "root"))
    assert diagnose(base).check("security").verdict is Verdict.SKIPPED
    active = dataclasses.replace(base, lsm=(LsmFacts("AppArmor", "enabled", "unconfined"),))
    check = diagnose(active).check("security")
    assert check.verdict is Verdict.NOTE
    assert "AppArmor is enabled (our label unconfined)" in check.found
    assert "journalctl -k" in (check.fix or "")


@pytest.mark.parametrize(
    "facts",
    [
        Facts("@bad\\q", None, "bad escape"),
        Facts("*", UnixAddress.unnamed()),
        Facts("@", UnixAddress.autobind()),
    ],
    ids=["bad-escape", "unnamed", "autobind"],
)
def test_no_address_to_connect_to_skips_the_rest(facts: Facts) -> None:
    d = diagnose(facts)
    assert d.check("address").verdict is Verdict.PROBLEM
    assert d.check("address").fix
    assert all(c.verdict is Verdict.SKIPPED for c in d.checks[1:])
    assert not d.connected


@pytest.mark.parametrize(
    ("mode", "uid", "gid", "user", "want", "allowed"),
    [
        (0o700, 0, 0, NOBODY, 1, False),
        (0o701, 0, 0, NOBODY, 1, True),
        (0o770, 0, 65534, NOBODY, 3, True),  # by group
        (0o077, 65534, 0, NOBODY, 1, False),  # the owner bits decide, even if "other" allows
        (0o000, 5, 5, ROOT, 3, True),  # root on a directory
        (0o644, 5, 5, ROOT, 2, True),
        (0o755, 0, 0, UserFacts("x", 1000, 1000, frozenset({0})), 2, False),
        (0o775, 0, 0, UserFacts("x", 1000, 1000, frozenset({0})), 2, True),  # a supplementary group
    ],
)
def test_may_access(
    mode: int, uid: int, gid: int, user: UserFacts, want: int, allowed: bool
) -> None:
    f = FileFacts("/d", "directory", 0o040000 | mode, uid, gid)
    assert may_access(user, f, want) is allowed


def test_root_may_not_search_a_file_without_x() -> None:
    assert not may_access(ROOT, FileFacts("/f", "regular file", 0o100644), 1)


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("/tmp/a.sock", "/tmp/a.sock"),
        ("/tmp/new\nline", "/tmp/new\\x0aline"),
        ("/tmp/\udcff.sock", "/tmp/\\xff.sock"),
        ("/tmp/é.sock", "/tmp/é.sock"),
        ("/tmp/\x1b[31m", "/tmp/\\x1b[31m"),
    ],
)
def test_show_escapes_what_a_terminal_should_not_see(raw: str, shown: str) -> None:
    assert show(raw) == shown
    assert show(raw).encode("utf-8")  # strict
