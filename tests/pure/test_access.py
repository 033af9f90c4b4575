"""Who may connect to a socket file, and whose hands a directory is in (no sockets)."""

from __future__ import annotations

import pytest

from udskit.access import (
    Admission,
    FileFacts,
    PathFacts,
    directory_exposure,
    may_connect,
    who_may_connect,
)

ROOT_DIR = ("/", FileFacts(0o40755, 0, 0))


def facts(mode: int, uid: int = 0, gid: int = 0, *dirs: tuple[int, int, int]) -> PathFacts:
    directories = [ROOT_DIR] + [
        (f"/d{i}", FileFacts(0o40000 | m, u, g)) for i, (m, u, g) in enumerate(dirs)
    ]
    return PathFacts("/d/s.sock", FileFacts(0o140000 | mode, uid, gid), tuple(directories))


@pytest.mark.parametrize(
    ("path", "uid", "gid", "groups", "expected"),
    [
        (facts(0o600), 0, 0, (), True),  # root always
        (facts(0o600), 65534, 65534, (), False),
        (facts(0o600, 1000, 1000), 1000, 1000, (), True),  # the owner
        (facts(0o066, 1000, 1000), 1000, 1000, (), False),  # owner class decides
        (facts(0o660, 0, 50), 1000, 1000, (50,), True),  # a supplementary group
        (facts(0o660, 0, 50), 1000, 50, (), True),  # the primary group
        (facts(0o660, 0, 50), 1000, 1000, (), False),
        (facts(0o606, 0, 50), 1000, 50, (), False),  # group class decides
        (facts(0o622), 65534, 65534, (), True),  # write is what connect needs
        (facts(0o644), 65534, 65534, (), False),  # read is not
        (facts(0o666, 0, 0, (0o700, 0, 0)), 65534, 65534, (), False),  # no search on a dir
        (facts(0o666, 0, 0, (0o711, 0, 0)), 65534, 65534, (), True),  # search is enough
        (facts(0o666, 0, 0, (0o750, 0, 50)), 1000, 1000, (50,), True),
    ],
)
def test_may_connect_follows_the_kernels_rule(
    path: PathFacts, uid: int, gid: int, groups: tuple[int, ...], expected: bool
) -> None:
    assert may_connect(path, uid, gid, groups) is expected


def test_an_acl_admits_only_root_and_the_owner() -> None:
    path = PathFacts("/s", FileFacts(0o140666, 1000, 1000, acl=True), (ROOT_DIR,))
    assert may_connect(path, 1000, 1000) and may_connect(path, 0, 0)
    assert not may_connect(path, 1001, 1000)


def test_who_may_connect_says_it_in_words() -> None:
    users, groups = {0: "root", 1000: "alice"}, {0: "root", 50: "adm"}
    assert who_may_connect(facts(0o600), users, groups) == "root only"
    assert who_may_connect(facts(0o666), users, groups) == "any local user"
    assert who_may_connect(facts(0o660, 1000, 50), users, groups) == (
        "root, user alice and group adm"
    )
    hidden = facts(0o666, 0, 0, (0o700, 0, 0))
    assert who_may_connect(hidden, users, groups) == "root only"


@pytest.mark.parametrize(
    ("mode", "uid", "gid", "euid", "name_owner", "expected"),
    [
        (0o755, 0, 0, 0, 0, None),
        (0o755, 65534, 65534, 0, 0, "its owner (uid 65534)"),
        (0o1777, 0, 0, 0, 0, None),  # /tmp: our own names are safe
        (0o1777, 0, 0, 0, 65534, "every user (mode 1777)"),  # names others own are not
        (0o777, 0, 0, 0, 0, "every user (mode 0777)"),
        (0o775, 1000, 50, 1000, 1000, "its group (gid 50, mode 0775)"),
        (0o755, 1000, 1000, 1000, 1000, None),
    ],
)
def test_directory_exposure(
    mode: int, uid: int, gid: int, euid: int, name_owner: int, expected: str | None
) -> None:
    directory = FileFacts(0o40000 | mode, uid, gid)
    assert directory_exposure(directory, euid, name_owner) == expected


def test_admission() -> None:
    root_only = Admission(target=facts(0o600))
    assert root_only.filters
    assert root_only.admits(0, 0) and not root_only.admits(65534, 65534)
    assert not root_only.admits(None, None)  # unknown credentials: refused
    assert "could not connect to /d/s.sock itself" in root_only.why_refused(65534, 65534)
    widened = Admission(frozenset({65534}), target=facts(0o600))
    assert widened.admits(65534, 65534) and not widened.admits(1000, 1000)
    everyone = Admission(target=facts(0o666))
    assert not everyone.filters and everyone.admits(None, None)
    assert Admission().admits(123, 456)
