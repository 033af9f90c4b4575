"""Pure: who may connect to a socket file, and whose hands a directory is in.

A front that udskit opens for a pathname socket (an abstract name, a TCP port, another
socket file) must not let in anyone the file itself would have kept out: abstract names
and TCP ports have no permissions at all. The kernel's rule for connect(2) on a socket
file is path_resolution(7): search (x) permission on every directory of the path, then
write (w) permission on the socket file itself (unix_find_bsd -> path_permission with
MAY_WRITE, net/unix/af_unix.c). Root (CAP_DAC_OVERRIDE) passes both.

`may_connect()` applies that rule to facts gathered elsewhere (`udskit.fsguard`), with
the peer's uid, primary gid and supplementary groups from SO_PEERCRED/SO_PEERGROUPS.
POSIX ACLs can grant or deny what the mode bits say; when the file or a directory has
one, only root and the file's owner are admitted, which errs on the side of refusing.

`directory_exposure()` says whether a directory is in the hands of somebody other than
the user udskit runs as: such a user can rename, replace or remove any name in it
(unless the sticky bit protects names they do not own), so every path operation udskit
makes there must work on what it created or checked, never on what a name points to.
"""

from __future__ import annotations

import stat
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import final

__all__ = [
    "Admission",
    "FileFacts",
    "PathFacts",
    "directory_exposure",
    "may_connect",
    "who_may_connect",
]


@final
@dataclass(frozen=True, slots=True)
class FileFacts:
    """One file or directory as lstat()/stat() saw it."""

    mode: int
    uid: int
    gid: int
    acl: bool = False  # a system.posix_acl_access attribute is present


@final
@dataclass(frozen=True, slots=True)
class PathFacts:
    """A socket file and every directory on the way to it (from / down)."""

    path: str
    file: FileFacts
    directories: tuple[tuple[str, FileFacts], ...] = ()

    @property
    def has_acl(self) -> bool:
        return self.file.acl or any(d.acl for _name, d in self.directories)


def _granted(facts: FileFacts, bit: int, uid: int, gids: Collection[int]) -> bool:
    """The owner, group or other class of the mode, as the kernel picks it
    (acl_permission_check in fs/namei.c: the first class that matches decides)."""
    mode = stat.S_IMODE(facts.mode)
    if uid == facts.uid:
        return bool(mode & (bit << 6))
    if facts.gid in gids:
        return bool(mode & (bit << 3))
    return bool(mode & bit)


def may_connect(facts: PathFacts, uid: int, gid: int, groups: Collection[int] = ()) -> bool:
    """Could a process with these credentials have connected to the file itself?"""
    if uid == 0:
        return True
    if facts.has_acl:
        return uid == facts.file.uid
    gids = {gid, *groups}
    for _name, directory in facts.directories:
        if not _granted(directory, 0o1, uid, gids):
            return False
    return _granted(facts.file, 0o2, uid, gids)


def who_may_connect(facts: PathFacts, name_user: dict[int, str], name_group: dict[int, str]) -> str:
    """A short phrase for the start line and --help: "root only", "root, user alice and
    group adm", "any local user". Names come from the caller (no passwd lookups here)."""

    def user(uid: int) -> str:
        return f"user {name_user.get(uid, str(uid))}"

    def group(gid: int) -> str:
        return f"group {name_group.get(gid, str(gid))}"

    if facts.has_acl:
        return f"root and {user(facts.file.uid)} (an ACL is set; udskit does not read ACLs)"
    if may_connect(facts, _NOBODY_UID, _NOBODY_GID):
        return "any local user"
    who = ["root"]
    if facts.file.uid != 0 and may_connect(facts, facts.file.uid, -1):
        who.append(user(facts.file.uid))
    # Members of the file's group (those who are not its owner).
    if facts.file.gid != 0 and may_connect(facts, _NOBODY_UID, facts.file.gid):
        who.append(group(facts.file.gid))
    if len(who) == 1:
        return "root only"
    return ", ".join(who[:-1]) + " and " + who[-1]


# A uid and gid that own nothing the caller describes (the overflow ids are a guess at
# "an ordinary stranger"; what matters is that they match no owner or group above).
_NOBODY_UID = -2
_NOBODY_GID = -2


def directory_exposure(
    directory: FileFacts, euid: int, name_owner: int | None = None
) -> str | None:
    """Why users other than `euid` can change names in `directory`, or None if they
    cannot. `name_owner` is the owner of the name in question, for the sticky bit
    (a sticky directory keeps others from renaming or removing names they do not own,
    but never its own owner: may_delete/check_sticky in fs/namei.c)."""
    mode = stat.S_IMODE(directory.mode)
    if directory.uid not in (euid, 0):
        return f"its owner (uid {directory.uid})"
    sticky = bool(mode & stat.S_ISVTX)
    protected = sticky and (name_owner is None or name_owner == euid)
    if mode & stat.S_IWOTH and not protected:
        return f"every user (mode {mode:04o})"
    if mode & stat.S_IWGRP and not protected and not (directory.gid == 0 and euid == 0):
        return f"its group (gid {directory.gid}, mode {mode:04o})"
    return None


@final
@dataclass(frozen=True, slots=True)
class Admission:
    """Who a listening front lets in.

    With explicit `uids`/`gids` (--allow-uid/--allow-gid) exactly those; otherwise,
    when the front stands for a socket file (`target`), whoever could have connected
    to that file; otherwise everybody."""

    uids: frozenset[int] = frozenset()
    gids: frozenset[int] = frozenset()
    target: PathFacts | None = None
    groups_known: bool = field(default=True, compare=False)

    @property
    def explicit(self) -> bool:
        return bool(self.uids or self.gids)

    @property
    def filters(self) -> bool:
        """Does any peer need checking?"""
        if self.explicit:
            return True
        return self.target is not None and not may_connect(self.target, _NOBODY_UID, _NOBODY_GID)

    def admits(self, uid: int | None, gid: int | None, groups: Collection[int] = ()) -> bool:
        """Unknown credentials (None) are admitted only when nobody is filtered."""
        if not self.filters:
            return True
        if uid is None or gid is None:
            return False
        if self.explicit:
            # A supplementary group counts as the primary one does (SO_PEERGROUPS), as
            # it would for the file's own group permission.
            return uid in self.uids or gid in self.gids or not self.gids.isdisjoint(groups)
        assert self.target is not None
        return may_connect(self.target, uid, gid, groups)

    def why_refused(self, uid: int | None, gid: int | None) -> str:
        if uid is None or gid is None:
            return "its credentials are unknown"
        if self.explicit:
            return f"uid {uid} gid {gid} is not in --allow-uid/--allow-gid"
        assert self.target is not None
        return (
            f"uid {uid} gid {gid} could not connect to {self.target.path} itself "
            "(widen on purpose with --allow-uid/--allow-gid)"
        )
