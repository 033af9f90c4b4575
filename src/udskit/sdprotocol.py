"""Pure: systemd's socket-activation and readiness protocols, as values.

Socket activation (sd_listen_fds(3)): a service manager binds the sockets and starts
the service with them open from fd 3 (SD_LISTEN_FDS_START) on, and says so in the
environment: LISTEN_FDS=N, LISTEN_PID=the service's own pid (so that a grandchild
that inherits the environment does not take sockets meant for its parent) and,
optionally, LISTEN_FDNAMES=name:name:... Readiness (sd_notify(3)): the service sends
"READY=1" (newline-separated VAR=VALUE lines) in a datagram to NOTIFY_SOCKET.

`udskit.activation` is the I/O that carries these out, on both ends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, final

from udskit.errors import ActivationError, UsageError

__all__ = [
    "SD_LISTEN_FDS_START",
    "ListenEnv",
    "check_fdname",
    "listen_environment",
    "parse_listen_env",
    "parse_notify",
]

SD_LISTEN_FDS_START: Final = 3
#: systemd refuses names longer than this (fdname_is_valid, FDNAME_MAX).
FDNAME_MAX: Final = 255
#: The variables of the protocol, which a service unsets once it took its sockets.
LISTEN_VARS: Final = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


@final
@dataclass(frozen=True, slots=True)
class ListenEnv:
    """What the environment says this process inherited: `count` fds from fd 3 on,
    with one name each ("unknown" where none was given, as sd_listen_fds_with_names)."""

    count: int
    names: tuple[str, ...]

    @property
    def fds(self) -> range:
        return range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + self.count)


def parse_listen_env(environ: Mapping[str, str], pid: int) -> ListenEnv:
    """Read LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES for process `pid`.

    No LISTEN_FDS at all is `count` 0 (not started by socket activation). Every other
    inconsistency is an ActivationError with the fix, never a silent zero: a server
    told to serve inherited sockets that then serves nothing is worse than one that
    says why.
    """
    count_text = environ.get("LISTEN_FDS")
    pid_text = environ.get("LISTEN_PID")
    if count_text is None:
        if pid_text is not None:
            raise ActivationError("LISTEN_PID is set but LISTEN_FDS is not; the environment is odd")
        return ListenEnv(0, ())
    if pid_text is None:
        raise ActivationError(
            "LISTEN_FDS is set but LISTEN_PID is not: the service manager must set "
            "LISTEN_PID to the service's own pid"
        )
    if not pid_text.isdigit() or int(pid_text) <= 0:
        raise ActivationError(f"LISTEN_PID={pid_text!r} is not a pid")
    if int(pid_text) != pid:
        raise ActivationError(
            f"LISTEN_PID is {pid_text}, not this process ({pid}): the sockets were passed "
            "to another process (a parent that did not unset LISTEN_FDS?); refusing to "
            "take descriptors that are not ours"
        )
    if not count_text.isdigit():
        raise ActivationError(f"LISTEN_FDS={count_text!r} is not a number")
    count = int(count_text)
    names_text = environ.get("LISTEN_FDNAMES")
    if names_text is None:
        names: tuple[str, ...] = ("unknown",) * count
    else:
        names = tuple(names_text.split(":")) if names_text else ()
        if len(names) != count:
            raise ActivationError(
                f"LISTEN_FDNAMES has {len(names)} names for LISTEN_FDS={count} descriptors"
            )
    return ListenEnv(count, names)


def check_fdname(name: str) -> str:
    """A valid descriptor name (fdname_is_valid in systemd): printable ASCII, no ':'."""
    if not name or len(name) > FDNAME_MAX:
        raise UsageError(f"--fdname must be 1 to {FDNAME_MAX} characters")
    if any(not (" " < c <= "~") or c == ":" for c in name):
        raise UsageError(
            f"--fdname {name!r}: only printable ASCII without spaces or ':' (systemd's rule)"
        )
    return name


def listen_environment(
    base: Mapping[str, str], count: int, names: Sequence[str], pid: int, notify: str | None
) -> dict[str, str]:
    """The environment of an activated child with pid `pid` (computed in the child)."""
    env = {k: v for k, v in base.items() if k not in (*LISTEN_VARS, "NOTIFY_SOCKET")}
    env["LISTEN_FDS"] = str(count)
    env["LISTEN_PID"] = str(pid)
    env["LISTEN_FDNAMES"] = ":".join(names)
    if notify is not None:
        env["NOTIFY_SOCKET"] = notify
    return env


def parse_notify(data: bytes) -> dict[str, str]:
    """The VAR=VALUE lines of one sd_notify datagram (lines without '=' are ignored)."""
    fields: dict[str, str] = {}
    for line in data.decode("utf-8", errors="replace").split("\n"):
        key, sep, value = line.partition("=")
        if sep and key:
            fields[key] = value
    return fields
