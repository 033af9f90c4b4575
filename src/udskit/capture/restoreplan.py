"""Pure: what a dump's takeover and restore do next, from what the names show.

The proxy engine of `udskit dump` moves a socket file aside in a directory that may
belong to somebody else. Its decisions are made here, from facts only, so that they can
be tested for every combination without a socket: the I/O code (`capture.proxy`)
gathers the facts, asks, and carries out the answer, re-checking each inode right
before each link, rename or unlink.

The facts are what each name is, compared with the record the dump wrote in its
private state file before it touched anything (`udskit.fsguard.write_state`):

- PATH: the service's socket file;
- HIDDEN: the original's second name, chosen at random and made by link(2), which
  fails if the name exists, so it is created exclusively;
- STAGING: the proxy's socket file, bound (exclusively, bind fails on any existing
  file) under another random name before it is renamed over PATH.

A name is MISSING, the ORIGINAL (the service's inode as recorded), the PROXY (the
dump's own socket file as recorded) or OTHER (anything else: somebody else's file,
which is never touched and is reported as what it is).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import final

__all__ = [
    "RestoreFacts",
    "RestorePlan",
    "Seen",
    "Start",
    "StartFacts",
    "Step",
    "Watch",
    "plan_restore",
    "plan_start",
    "plan_watch",
    "stat_start_time",
]


class Seen(enum.Enum):
    MISSING = "missing"
    ORIGINAL = "original"
    PROXY = "proxy"
    OTHER = "other"


class Step(enum.Enum):
    PUT_BACK = "put-back"  # rename(HIDDEN, PATH): atomically over the proxy's file
    PUT_BACK_KEEP = "put-back-keep"  # link(HIDDEN, fresh name), rename(that, PATH)
    LINK_BACK = "link-back"  # PATH is missing: link(HIDDEN, PATH), exclusive
    RESCUE_STAGING = "rescue-staging"  # rename(STAGING, PATH): the original's last name
    DROP_HIDDEN = "drop-hidden"  # unlink HIDDEN: a second name of the original at PATH
    DROP_STAGING = "drop-staging"  # unlink STAGING: the proxy's, or a second name
    DROP_PROXY_AT_PATH = "drop-proxy-at-path"  # unlink PATH: the dead proxy's file
    FORGET = "forget"  # remove the state record: nothing of the dump is left


@final
@dataclass(frozen=True, slots=True)
class RestoreFacts:
    path: Seen
    hidden: Seen
    staging: Seen
    #: The dump that wrote the record is alive and is not the one asking.
    other_dump_running: bool = False
    #: The running dump restores: the hidden name must outlive this step (clients the
    #: proxy still accepts are forwarded through it); close() drops it later.
    keep_hidden: bool = False


@final
@dataclass(frozen=True, slots=True)
class RestorePlan:
    steps: tuple[Step, ...]
    #: The original is (or will be, once the steps are done) at PATH.
    restored: bool
    #: Another dump runs: do nothing, tell the user to stop that one.
    refused: bool = False
    #: Something is in the way or gone; one line each is said by the I/O code, which
    #: knows the names (these are the reasons, in the order they apply).
    reasons: tuple[str, ...] = ()


def plan_restore(facts: RestoreFacts) -> RestorePlan:
    """What to do to put the original back and leave nothing of the dump behind."""
    if facts.other_dump_running:
        return RestorePlan((), restored=False, refused=True, reasons=("running",))
    steps: list[Step] = []
    reasons: list[str] = []
    path, hidden, staging = facts.path, facts.hidden, facts.staging
    restored = False
    forget = True
    if hidden is Seen.ORIGINAL:
        if path is Seen.ORIGINAL:
            restored = True  # killed between link and rename, or put back already
            if not facts.keep_hidden:
                steps.append(Step.DROP_HIDDEN)
        elif path in (Seen.PROXY, Seen.MISSING):
            restored = True
            if path is Seen.MISSING:
                reasons.append("path-missing")
                steps.append(Step.LINK_BACK)
                if not facts.keep_hidden:
                    steps.append(Step.DROP_HIDDEN)
            elif facts.keep_hidden:
                steps.append(Step.PUT_BACK_KEEP)
            else:
                steps.append(Step.PUT_BACK)
        else:  # somebody else's file at PATH: never replaced
            reasons.append("path-other")
            forget = False
    elif staging is Seen.ORIGINAL and path in (Seen.PROXY, Seen.MISSING):
        # Killed while putting back, after the link and with HIDDEN gone meanwhile:
        # the staging name is the original's last name.
        if hidden is Seen.OTHER:
            reasons.append("hidden-other")
        steps.append(Step.RESCUE_STAGING)
        restored = True
        staging = Seen.MISSING
    elif path is Seen.ORIGINAL:
        restored = True  # nothing was moved, or all is back already
    else:
        if hidden is Seen.OTHER:
            reasons.append("hidden-other")
        else:
            reasons.append("hidden-missing")
        if path is Seen.PROXY:
            steps.append(Step.DROP_PROXY_AT_PATH)
        elif path is Seen.OTHER:
            reasons.append("path-other")
            forget = staging is not Seen.ORIGINAL  # the original's last name: keep it known
    if staging is Seen.PROXY or (staging is Seen.ORIGINAL and restored):
        steps.append(Step.DROP_STAGING)
    elif staging is Seen.OTHER:
        reasons.append("staging-other")
    if forget and not facts.keep_hidden:
        steps.append(Step.FORGET)
    return RestorePlan(tuple(steps), restored=restored, reasons=tuple(reasons))


class Start(enum.Enum):
    GO = "go"  # take over
    RUNNING = "running"  # another dump of this user runs on PATH
    KILLED = "killed"  # a dump was killed: --restore first
    NOT_SOCKET = "not-socket"
    MISSING = "missing"
    STALE = "stale"  # a socket file with no server behind it


@final
@dataclass(frozen=True, slots=True)
class StartFacts:
    #: A state record of this user's for PATH exists, and whether its dump is alive.
    recorded: bool
    recorded_alive: bool
    exists: bool
    is_socket: bool
    live: bool


def plan_start(facts: StartFacts) -> Start:
    """May a dump take PATH over? Only this user's own records count: names next to
    PATH that no record mentions are not udskit's, and neither block nor get blamed."""
    if facts.recorded:
        return Start.RUNNING if facts.recorded_alive else Start.KILLED
    if not facts.exists:
        return Start.MISSING
    if not facts.is_socket:
        return Start.NOT_SOCKET
    if not facts.live:
        return Start.STALE
    return Start.GO


def stat_start_time(raw: bytes) -> str:
    """The start time (field 22) in a /proc/PID/stat line, or '' for a process that has
    exited. A zombie (state Z, or X while being reaped) keeps its stat file until its
    parent waits for it, and a dump killed with kill -9 is one until then; it is as
    dead as a dump can be (its watchdog restores at that very moment), so its record
    must not read as a running dump's."""
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = raw[raw.rfind(b")") + 2 :].split()
    if len(fields) <= 19 or fields[0] in (b"Z", b"X"):
        return ""
    return fields[19].decode()


class Watch(enum.Enum):
    WAIT = "wait"  # the dump runs: keep watching
    LEAVE = "leave"  # the dump put everything back itself and said so: exit, touch nothing
    RESTORE = "restore"  # the dump is gone without a word: do what --restore does, then exit


def plan_watch(*, dismissed: bool, dump_exited: bool) -> Watch:
    """What a dump's watchdog does next, from what it has seen: the dump's word that it
    is done (written to the watchdog's pipe after its own restore) and the dump's exit
    (its pidfd became readable). The word wins: a dump that stopped cleanly and then
    exited leaves nothing to restore, and its path may already be in other hands (a
    new dump, a restarted server) that a late restore must not disturb. A closed pipe
    alone proves nothing: the kernel closes a dying process's files before it becomes
    a zombie, and until then its record still reads as a running dump's."""
    if dismissed:
        return Watch.LEAVE
    if dump_exited:
        return Watch.RESTORE
    return Watch.WAIT
