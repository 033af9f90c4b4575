"""I/O: connect as another user from this thread alone, and the credentials to do it.

Linux keeps credentials per thread; it is glibc that makes setuid(2) and friends
apply to every thread of a process (it signals each one, see nptl's setxid). The raw
system calls, made through syscall(2), change only the calling thread. `connect_as`
switches the calling thread's groups, egid and euid to the client's, calls connect(),
and switches back; the real and saved ids stay the proxy's, which is what lets it
switch back. Between the two switches nothing but the connect() runs.

The kernel records the connecting thread's euid, egid and groups as the socket's
peer credentials (SO_PEERCRED, SO_PEERGROUPS; cred_to_ucred in net/core/sock.c) and
checks the socket file's permission with them (unix_find_bsd -> path_permission),
so the server sees the client, and the proxy never grants more than the client had.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import socket
from typing import Final

from udskit.ancillary import peer_groups, peer_ucred
from udskit.errors import SocketError
from udskit.identity import Identity, can_switch, parse_cap_eff

__all__ = [
    "IdentityLost",
    "connect_as",
    "peer_identity",
    "process_groups",
    "switching_possible",
]


#: (setgroups, setresuid, setresgid) per architecture (unistd.h of each).
_SYSCALLS: Final = {
    "x86_64": (116, 117, 119),
    "aarch64": (159, 147, 149),
    "riscv64": (159, 147, 149),
}


class IdentityLost(RuntimeError):
    """Switching back to the proxy's own credentials failed: the thread is not safe
    to go on with (a bug or a seccomp filter); the caller must stop."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


_LIBC: ctypes.CDLL | None = None


def _syscall(number: int, *args: int | ctypes.Array[ctypes.c_uint]) -> None:
    global _LIBC
    if _LIBC is None:
        _LIBC = _libc()
    converted = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    if _LIBC.syscall(ctypes.c_long(number), *converted) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _numbers() -> tuple[int, int, int]:
    found = _SYSCALLS.get(platform.machine())
    if found is None:
        raise OSError(errno.ENOSYS, f"no syscall numbers known for {platform.machine()}")
    return found


def _setgroups(groups: tuple[int, ...]) -> None:
    setgroups, _, _ = _numbers()
    array = (ctypes.c_uint * max(1, len(groups)))(*groups)
    _syscall(setgroups, len(groups), array)


_UNCHANGED: Final = -1  # setresuid(2): -1 leaves that id as it is


def switching_possible() -> bool:
    """CAP_SETUID and CAP_SETGID in effect, setgroups(2) allowed, syscalls known."""
    if platform.machine() not in _SYSCALLS:
        return False
    try:
        with open("/proc/self/status") as f:
            cap_eff = parse_cap_eff(f.read())
    except OSError:
        return False
    try:
        with open("/proc/self/setgroups") as f:
            allowed = f.read().strip() != "deny"
    except OSError:
        allowed = True  # kernels before 3.19 have no such file, and no such rule
    return can_switch(cap_eff, allowed)


def process_groups(pid: int) -> tuple[int, ...]:
    """The supplementary groups of a process (/proc/PID/status), for a datagram's
    sender, which SO_PEERGROUPS cannot tell; none if it is gone or unreadable (so a
    connect made with them never gets more than the sender had)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return tuple(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    return ()


def peer_identity(sock: socket.socket) -> tuple[int, Identity]:
    """(pid, Identity) of a connected unix socket's peer (SO_PEERCRED, SO_PEERGROUPS
    through `udskit.ancillary`)."""
    cred = peer_ucred(sock)
    pid, uid, gid = cred.pid, cred.uid, cred.gid
    try:
        groups = peer_groups(sock)
    except SocketError:  # more groups than CPython's getsockopt returns (1 KiB): /proc
        groups = process_groups(pid)
    return pid, Identity(uid, gid, groups)


def connect_as(identity: Identity, sock: socket.socket, address: str | bytes) -> int:
    """connect_ex(address) made as `identity`; returns 0 or an errno, like connect_ex.

    An identity the thread cannot take (EPERM, EINVAL: a uid not mapped in this user
    namespace) fails the connect with that errno: never connect as ourselves instead.
    Raises `IdentityLost` if switching back fails."""
    _, setresuid, setresgid = _numbers()
    euid, egid = os.geteuid(), os.getegid()
    own_groups = tuple(os.getgroups())
    # Restored whatever happens from the first call on, a KeyboardInterrupt between
    # two calls included (switching back to what we are is harmless).
    try:
        try:
            _setgroups(identity.groups)
            _syscall(setresgid, _UNCHANGED, identity.gid, _UNCHANGED)
            _syscall(setresuid, _UNCHANGED, identity.uid, _UNCHANGED)
        except OSError as exc:
            return exc.errno or errno.EPERM
        return sock.connect_ex(address)
    finally:
        _restore(euid, egid, own_groups)


def _restore(euid: int, egid: int, groups: tuple[int, ...]) -> None:
    """Back to the proxy's own credentials: euid first, which gives the capabilities
    back (they were cleared when euid left 0), then egid and groups."""
    _, setresuid, setresgid = _numbers()
    try:
        _syscall(setresuid, _UNCHANGED, euid, _UNCHANGED)
        _syscall(setresgid, _UNCHANGED, egid, _UNCHANGED)
        _setgroups(groups)
    except OSError as exc:
        raise IdentityLost(f"could not switch back to uid {euid} gid {egid}: {exc}") from exc
    if os.geteuid() != euid or os.getegid() != egid:
        raise IdentityLost(f"still not uid {euid} gid {egid} after switching back")
