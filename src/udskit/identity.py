"""Pure: whose identity a forwarded connection carries, and whether a proxy may run.

A proxy between a client and a server (the proxy engine of `udskit dump`) makes a new
connection to the server for each client. The kernel records the credentials of the
thread that calls connect() (SO_PEERCRED, SO_PEERGROUPS: euid, egid and groups), and
runs the socket file's permission check with them. A server that authorises by them
(PostgreSQL's `peer`, D-Bus, polkit, docker) would take every client for the proxy's
user. So the proxy connects with each client's uid, gid and groups when it can
(CAP_SETUID and CAP_SETGID, as root has), and refuses to run otherwise when clients of
other users may come, unless the user says the change is acceptable.

The pid is the one thing that stays the proxy's: the kernel takes SO_PEERCRED's pid
from the connecting task and lets nobody choose it. (SCM_CREDENTIALS, per message, do
carry the client's pid: root may send any.)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, final

__all__ = [
    "CAP_SETGID",
    "CAP_SETUID",
    "Identity",
    "IdentityPlan",
    "can_switch",
    "decide_identity",
    "others_may_connect",
    "parse_cap_eff",
]

#: Capability numbers (include/uapi/linux/capability.h).
CAP_SETGID: Final = 6
CAP_SETUID: Final = 7


@final
@dataclass(frozen=True, slots=True)
class Identity:
    """Who a connection is made as: effective uid and gid, and supplementary groups."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()


class IdentityPlan(enum.Enum):
    """What the proxy does about identity (see `decide_identity`)."""

    CARRY = "carry"  # each upstream connect() is made as its client
    SAME = "same"  # cannot switch, but only our own uid can connect: nothing changes
    CHANGE = "change"  # cannot switch; other users' clients appear as us (allowed, warned)
    REFUSE = "refuse"  # cannot switch and other users may connect: do not start


def parse_cap_eff(status: str) -> int:
    """The CapEff bit mask from the text of /proc/self/status (0 when absent)."""
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split(":", 1)[1].strip(), 16)
    return 0


def can_switch(cap_eff: int, setgroups_allowed: bool) -> bool:
    """May this process take another user's uid, gid and groups for a moment?

    It needs CAP_SETUID and CAP_SETGID, and setgroups(2) must be allowed: in a user
    namespace whose /proc/self/setgroups says "deny" it is not, and connecting with
    the proxy's own groups would grant a client groups it lacks."""
    wanted = (1 << CAP_SETUID) | (1 << CAP_SETGID)
    return cap_eff & wanted == wanted and setgroups_allowed


def others_may_connect(mode: int | None, owner_uid: int | None, own_uid: int) -> bool:
    """Can a user other than `own_uid` connect through the proxy's address?

    `mode` and `owner_uid` are the socket file's (None for an abstract name, which
    anyone in the network namespace may connect to). connect(2) needs write permission
    on the file; root passes any check, but root as a client of a non-root proxy only
    loses privilege, never gains it."""
    if mode is None or owner_uid is None:
        return True
    if mode & 0o022:  # group or others may write
        return True
    return owner_uid != own_uid and bool(mode & 0o200)


def decide_identity(*, can_switch: bool, others: bool, allow_change: bool) -> IdentityPlan:
    """Carry the identity when we can; otherwise run only if nothing changes for
    anyone, or if the user accepted the change (`--allow-identity-change`)."""
    if can_switch:
        return IdentityPlan.CARRY
    if not others:
        return IdentityPlan.SAME
    return IdentityPlan.CHANGE if allow_change else IdentityPlan.REFUSE
