"""Pure: from the facts about an address to an ordered list of verdicts with their fixes.

`diagnose(facts)` decides; it reads nothing. Each check is one function from `Facts`
to a `Check`, in the order of `CHECK_NAMES`; a check that does not apply (an abstract
name has no file) says `skipped` and why. Everything a peer or the file system
controls (paths, process names) goes through `show()` before it enters a sentence, so
the text is one printable line and strict UTF-8.

The kernel rules behind the verdicts are those of unix(7) and net/unix/af_unix.c:
connect() needs search permission on every directory and write permission on the
socket file (unix_find_bsd); bind() creates the file and so needs write and search
on the directory; connecting to another type gives EPROTOTYPE; to a file with nothing
bound, ECONNREFUSED; a listener whose queue is longer than its backlog
(unix_recvq_full) makes clients block or fail with EAGAIN; a datagram socket connected
to a peer refuses every other sender with EPERM (unix_may_send); abstract names live
in one network namespace and have no permissions.
"""

from __future__ import annotations

import datetime
import stat
from collections.abc import Callable, Sequence
from typing import Final

from udskit.address import (
    MAX_ABSTRACT_BYTES,
    MAX_PATH_BYTES,
    AddressKind,
    UnixAddress,
    escape_bytes,
    format_address,
)
from udskit.doctor.facts import (
    CHECK_NAMES,
    Check,
    Diagnosis,
    Facts,
    FileFacts,
    OwnerFacts,
    SocketFacts,
    UserFacts,
    Verdict,
)
from udskit.errors import HINTS, errno_name
from udskit.sockdiag import SocketState
from udskit.socktype import SocketType

__all__ = ["diagnose", "may_access", "show", "show_address"]

OK: Final = Verdict.OK
PROBLEM: Final = Verdict.PROBLEM
NOTE: Final = Verdict.NOTE
SKIPPED: Final = Verdict.SKIPPED

_READ, _WRITE, _SEARCH = 4, 2, 1


def show(text: str) -> str:
    """A path or a process name as a terminal may print it: non-printable characters
    and undecodable bytes as \\xHH (the address notation's escapes), else unchanged."""
    if text.isprintable():
        return text
    return escape_bytes(text.encode("utf-8", errors="surrogateescape"))


def show_address(address: UnixAddress) -> str:
    """The address in the notation `parse_address` reads back, printable."""
    if address.kind is AddressKind.PATHNAME:
        return show(format_address(address))
    return format_address(address)  # abstract names are escaped by the notation itself


def may_access(user: UserFacts, f: FileFacts, want: int) -> bool:
    """Do the mode bits give `user` the `want` bits (4 read, 2 write, 1 search)?

    The classic check of path_resolution(7): owner bits if the user owns the file,
    else group bits if one of the user's groups does, else other bits. Root passes,
    except that it may execute (not search) a file only if some x bit is set. ACLs
    are not read: a directory with an ACL may allow more than its mode says.
    """
    if user.uid == 0:
        if want & _SEARCH and f.kind != "directory":
            return bool(f.mode & 0o111)
        return True
    if f.uid == user.uid:
        bits = (f.mode >> 6) & 7
    elif f.gid == user.gid or f.gid in user.groups:
        bits = (f.mode >> 3) & 7
    else:
        bits = f.mode & 7
    return bits & want == want


def _who(user: UserFacts) -> str:
    return f"uid {user.uid} ({show(user.name)})"


def _owner_name(f: FileFacts) -> str:
    owner = show(f.owner_name) if f.owner_name else str(f.uid)
    group = show(f.group_name) if f.group_name else str(f.gid)
    return f"{owner}:{group}"


def _describe(f: FileFacts) -> str:
    """'/run/x (mode 0700, owner root:root)'."""
    return f"{show(f.path)} (mode {stat.S_IMODE(f.mode):04o}, owner {_owner_name(f)})"


def _when(mtime: float) -> str:
    moment = datetime.datetime.fromtimestamp(mtime, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _process(owner: OwnerFacts) -> str:
    user = f", user {show(owner.user)}" if owner.user else ""
    return f"pid {owner.pid} ({show(owner.command)}{user})"


def _processes(owners: Sequence[OwnerFacts], limit: int = 4) -> str:
    seen: dict[int, OwnerFacts] = {}
    for owner in owners:
        seen.setdefault(owner.pid, owner)
    shown = [_process(o) for o in list(seen.values())[:limit]]
    more = len(seen) - limit
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _grant_search(user: UserFacts, d: FileFacts) -> str:
    path = show(d.path)
    if d.uid == user.uid:
        return f"chmod u+x {path}"
    if d.gid == user.gid or d.gid in user.groups:
        return f"chmod g+x {path}"
    group = show(d.group_name) if d.group_name else str(d.gid)
    return f"chmod o+x {path}, or add {show(user.name)} to group {group} and chmod g+x {path}"


# -- the checks ------------------------------------------------------------------------
def _check_address(facts: Facts) -> Check:
    address = facts.address
    if address is None:
        return Check(
            "address",
            PROBLEM,
            f"not a valid address: {facts.address_error}",
            "write a socket path of at most 107 bytes, or @name for an abstract name "
            "(\\xHH for any byte)",
        )
    if address.kind is AddressKind.PATHNAME:
        found = f"pathname {show_address(address)}: {len(address.name)} of {MAX_PATH_BYTES} bytes"
        if not address.name.startswith(b"/") and facts.absolute is not None:
            found += f"; relative, so it means {show(facts.absolute)} from here"
        return Check("address", OK, found + " (fits sun_path)")
    if address.kind is AddressKind.ABSTRACT:
        found = (
            f"abstract name {show_address(address)}: {len(address.name)} of "
            f"{MAX_ABSTRACT_BYTES} bytes, exact (no trailing NUL)"
        )
        if b"\0" in address.name:
            found += "; it holds NUL bytes, which are part of the name"
        return Check("address", OK, found)
    what = "unnamed (*)" if address.kind is AddressKind.UNNAMED else "autobind (@)"
    return Check(
        "address",
        PROBLEM,
        f"{what} is not an address anything can connect to",
        "give the server's socket path or @name (`udskit ls -l` lists listeners)",
    )


def _elsewhere(facts: Facts) -> str:
    if not facts.mount_ns:
        return ""
    found = facts.mount_ns[0]
    return (
        f"; but {_process(found.holder)} has it in its own mount namespace, "
        f"reachable from here as {show(found.via)}"
    )


def _mount_fix(facts: Facts, path: str) -> str:
    found = facts.mount_ns[0]
    return (
        f"connect through {show(found.via)} (root may), or run the client in that "
        f"namespace: nsenter -t {found.holder.pid} -m -- udskit connect {show(path)}; "
        "a container's private /tmp is not the host's"
    )


def _check_path(facts: Facts) -> Check:
    address = facts.address
    if address is None or address.kind is not AddressKind.PATHNAME:
        return Check("path", SKIPPED, "an abstract name has no path")
    path = facts.absolute or address.path
    for d in facts.directories:
        if d.error is not None:
            return Check(
                "path",
                PROBLEM,
                f"cannot look into {show(d.path)}: {d.error}",
                "run doctor as root (or as the server's user) to see further",
            )
        if not d.exists:
            fix = (
                _mount_fix(facts, path)
                if facts.mount_ns
                else f"create it (mkdir -p {show(d.path)}) or fix the path; the server "
                "may not have started yet, or uses another directory (`udskit ls -l`)"
            )
            return Check(
                "path", PROBLEM, f"directory {show(d.path)} does not exist{_elsewhere(facts)}", fix
            )
        if d.kind != "directory":
            return Check(
                "path",
                PROBLEM,
                f"{show(d.path)} is a {d.kind}, not a directory",
                "fix the path: a socket file lives in a directory",
            )
    target = facts.target
    if target is not None and target.error is not None:
        # Typically EACCES for doctor's own user: the permissions check says which
        # directory, so this is a note, not the cause.
        return Check(
            "path",
            NOTE,
            f"cannot stat {show(target.path)}: {target.error.lower()}",
            "run doctor as root to see the file itself",
        )
    if target is None or not target.exists:
        if facts.mount_ns:
            return Check(
                "path",
                PROBLEM,
                f"no file {show(path)} in this mount namespace{_elsewhere(facts)}",
                _mount_fix(facts, path),
            )
        if facts.unlinked:
            lost = facts.unlinked[0]
            return Check(
                "path",
                PROBLEM,
                f"no file {show(path)}, yet {_processes(lost.owners) or 'a socket'} is "
                f"still bound by that name (inode {lost.inode}): its file was removed",
                "restart that server so it binds a new file (clients cannot reach a "
                "socket whose file is gone)",
            )
        return Check(
            "path",
            PROBLEM,
            f"no file {show(path)} (its directory exists)",
            "start the server, or fix the path (`udskit ls -l` lists the bound sockets)",
        )
    return Check("path", OK, f"all {len(facts.directories)} directories and the file exist")


def _check_file(facts: Facts) -> Check:
    address = facts.address
    if address is None or address.kind is not AddressKind.PATHNAME:
        return Check("file", SKIPPED, "an abstract name has no file")
    target = facts.target
    if target is None or not target.exists:
        return Check("file", SKIPPED, "there is no file to look at")
    if target.kind == "socket":
        return Check(
            "file",
            OK,
            f"a socket file: mode {stat.S_IMODE(target.mode):04o}, owner "
            f"{_owner_name(target)}, made {_when(target.mtime)}",
        )
    return Check(
        "file",
        PROBLEM,
        f"{show(target.path)} is a {target.kind}, not a socket: connect() there fails "
        "with ECONNREFUSED",
        f"point the client at the server's real socket; a server binding here fails with "
        f"EADDRINUSE until this {target.kind} is moved away (doctor never touches it)",
    )


def _check_permissions(facts: Facts) -> Check:
    address = facts.address
    if address is None:
        return Check("permissions", SKIPPED, "no valid address")
    user = facts.user
    if address.kind is AddressKind.ABSTRACT:
        return Check(
            "permissions",
            NOTE,
            "abstract names have no file permissions: anyone in the same network "
            "namespace may connect (the server may still check SO_PEERCRED)",
        )
    for d in facts.directories:
        if not d.exists or d.kind != "directory" or d.error is not None:
            break
        if not may_access(user, d, _SEARCH):
            return Check(
                "permissions",
                PROBLEM,
                f"{_who(user)} lacks search (x) permission on directory {_describe(d)}: "
                "connect() fails with EACCES",
                f"{_grant_search(user, d)}; or put the socket where user {show(user.name)} "
                "may search every directory",
            )
    target = facts.target
    if target is not None and target.kind == "socket":
        if not may_access(user, target, _WRITE):
            return Check(
                "permissions",
                PROBLEM,
                f"{_who(user)} lacks write permission on socket file {_describe(target)}, "
                "which connect() needs",
                "have the server make it group-writable for a group of the user "
                "(`udskit listen --mode 0660 --group GROUP`), or run as an allowed user",
            )
        return Check(
            "permissions",
            OK,
            f"{_who(user)} may search every directory and write to the socket file",
        )
    return Check("permissions", OK, f"{_who(user)} may search every directory that exists")


def _check_bind(facts: Facts) -> Check:
    address = facts.address
    if address is None or address.kind is not AddressKind.PATHNAME:
        return Check("bind", SKIPPED, "an abstract name needs no directory to bind")
    if facts.bound or facts.bound_elsewhere:
        return Check("bind", SKIPPED, "a socket is bound there: nobody needs to bind")
    if not facts.directories or not all(
        d.exists and d.kind == "directory" for d in facts.directories
    ):
        return Check(
            "bind", NOTE, "a server binding here fails with ENOENT: a directory is missing"
        )
    parent = facts.directories[-1]
    user = facts.user
    parts = []
    if may_access(user, parent, _WRITE | _SEARCH):
        parts.append(
            f"a server running as {_who(user)} may bind here (write and search on the directory)"
        )
        fix = None
    else:
        parts.append(
            f"a server running as {_who(user)} could not bind here: bind() needs write and "
            f"search permission on {_describe(parent)}"
        )
        fix = "bind elsewhere (e.g. under $XDG_RUNTIME_DIR), use an abstract name, or grant it"
    target = facts.target
    if target is not None and target.exists:
        parts.append(
            f"while {show(target.path)} exists, bind() fails with EADDRINUSE "
            "(`udskit listen` replaces a stale socket file; most servers need it removed)"
        )
    return Check("bind", NOTE, "; ".join(parts), fix)


def _main_socket(facts: Facts) -> SocketFacts | None:
    if facts.bound:
        return facts.bound[0]
    if facts.mount_ns:
        return facts.mount_ns[0].socket
    return None


def _bound_text(sock: SocketFacts) -> str:
    if sock.state is SocketState.LISTEN:
        return f"a {sock.type.noun} socket listens (inode {sock.inode})"
    return f"a {sock.type.noun} socket is bound, {sock.state.value} (inode {sock.inode})"


def _check_listener(facts: Facts) -> Check:
    address = facts.address
    if address is None or address.kind not in (AddressKind.PATHNAME, AddressKind.ABSTRACT):
        return Check("listener", SKIPPED, "no valid address")
    if facts.bound:
        sock = facts.bound[0]
        if sock.type.connection_oriented and sock.state is not SocketState.LISTEN:
            return Check(
                "listener",
                PROBLEM,
                f"{_bound_text(sock)} but does not listen: connect() gets ECONNREFUSED",
                "the server has not called listen() yet (still starting?), or the bound "
                "socket is not a server's",
            )
        return Check("listener", OK, _bound_text(sock))
    if address.kind is AddressKind.ABSTRACT:
        here = f" ({facts.own_netns})" if facts.own_netns else ""
        if facts.net_ns:
            other = facts.net_ns[0]
            holders = _processes(other.holders) or "a process we cannot see"
            return Check(
                "listener",
                PROBLEM,
                f"nothing is bound to {show_address(address)} in this network namespace{here}; "
                f"it is bound in {other.netns}, held by {holders}",
                _netns_fix(facts, address),
            )
        return Check(
            "listener",
            PROBLEM,
            f"nothing is bound to {show_address(address)} in this network namespace{here}, "
            "nor in any other we can see",
            "start the server; check the exact bytes of the name (`udskit ls --abstract`: "
            "@x and @x\\x00 differ)",
        )
    if facts.mount_ns:
        found = facts.mount_ns[0]
        return Check(
            "listener",
            NOTE,
            f"not here, but in the mount namespace of {_process(found.holder)}: "
            f"{_bound_text(found.socket)}",
        )
    target = facts.target
    if target is None or target.kind != "socket":
        return Check("listener", SKIPPED, "there is no socket file to look behind")
    if not facts.sock_diag:
        return Check(
            "listener",
            NOTE,
            "sock_diag is not available here: cannot tell which socket is bound to the file",
        )
    if facts.bound_elsewhere:
        return Check(
            "listener",
            NOTE,
            "a socket is bound to this file from another network namespace (sock_diag "
            "sees only ours); the connect below tells whether it answers",
        )
    made_by = f"uid {target.uid}" + (f" ({show(target.owner_name)})" if target.owner_name else "")
    return Check(
        "listener",
        PROBLEM,
        f"stale socket file: nothing is bound to it (UNIX_DIAG_VFS); left by {made_by} "
        f"at {_when(target.mtime)}",
        f"start the server (`udskit listen` replaces a stale file; most servers need "
        f"`rm {show(target.path)}` first); `udskit ls --stale` finds others",
    )


def _netns_fix(facts: Facts, address: UnixAddress) -> str:
    other = facts.net_ns[0]
    pid = other.holders[0].pid if other.holders else None
    enter = (
        f"nsenter -t {pid} -n -- udskit connect {show_address(address)}"
        if pid is not None
        else "nsenter into it"
    )
    return (
        f"run the client in that network namespace ({enter}), or start the server in "
        "this one: abstract names do not cross network namespaces"
    )


def _check_type(facts: Facts) -> Check:
    sock = _main_socket(facts)
    if sock is None:
        return Check("type", SKIPPED, "no bound socket to compare with")
    if facts.wanted is None:
        return Check(
            "type",
            OK,
            f"the socket is {sock.type.value}; without --type, udskit connect and send use it",
        )
    if facts.wanted is sock.type:
        return Check("type", OK, f"the socket is {sock.type.value}, as asked")
    return Check(
        "type",
        PROBLEM,
        f"the socket is a {sock.type.noun} socket, asked for {facts.wanted.value}: "
        "connect() fails with EPROTOTYPE",
        f"use --type {sock.type.value}",
    )


def _check_backlog(facts: Facts) -> Check:
    sock = _main_socket(facts)
    if sock is None:
        return Check("backlog", SKIPPED, "no listener")
    if sock.type is SocketType.DGRAM:
        return Check("backlog", SKIPPED, "a datagram socket has no accept queue")
    if sock.state is not SocketState.LISTEN:
        return Check("backlog", SKIPPED, "not listening")
    if sock.pending is None or sock.backlog is None:
        return Check("backlog", SKIPPED, "queue lengths not known (no sock_diag)")
    if sock.pending > sock.backlog:
        who = _processes(sock.owners) or "the server"
        return Check(
            "backlog",
            PROBLEM,
            f"the accept queue is full: {sock.pending} connections wait, the backlog is "
            f"{sock.backlog}; the server does not accept() (stuck or overloaded), so "
            "connect() blocks or fails with EAGAIN",
            f"look at what {who} is doing; raise its listen() backlog (net.core.somaxconn caps it)",
        )
    return Check(
        "backlog", OK, f"{sock.pending} waiting to be accepted, backlog {sock.backlog}: not full"
    )


def _check_owner(facts: Facts) -> Check:
    sock = _main_socket(facts)
    if sock is None:
        return Check("owner", SKIPPED, "no bound socket")
    if not sock.owners:
        return Check(
            "owner",
            NOTE,
            "no process we can see holds it (another PID namespace, or /proc hidden)",
        )
    return Check("owner", OK, f"held by {_processes(sock.owners)}")


def _check_namespace(facts: Facts) -> Check:
    address = facts.address
    if address is None or address.kind not in (AddressKind.PATHNAME, AddressKind.ABSTRACT):
        return Check("namespace", SKIPPED, "no valid address")
    if address.kind is AddressKind.ABSTRACT:
        here = f" ({facts.own_netns})" if facts.own_netns else ""
        others = ", ".join(
            f"{n.netns} ({_processes(n.holders) or 'holder unseen'})" for n in facts.net_ns
        )
        if facts.bound:
            found = f"present in this network namespace{here}"
            if others:
                found += f"; the name is also bound in {others}"
            return Check(
                "namespace", OK, found + "; abstract names cross a chroot, not a network namespace"
            )
        if facts.net_ns:
            return Check(
                "namespace",
                PROBLEM,
                f"bound only in another network namespace: {others}; abstract names do "
                "not cross network namespaces",
                _netns_fix(facts, address),
            )
        return Check(
            "namespace",
            NOTE,
            f"not bound in this network namespace{here} nor in the others that processes "
            "here are in",
        )
    path = facts.absolute or address.path
    if facts.mount_ns:
        away = facts.mount_ns[0]
        mnt = f" ({away.holder.mntns})" if away.holder.mntns else ""
        return Check(
            "namespace",
            PROBLEM,
            f"the socket is in another mount namespace{mnt}: {_process(away.holder)} sees "
            f"{show(path)} at {show(away.via)} from here, this process does not; pathname "
            "sockets are found through the file system, so a private /tmp or a chroot hides them",
            _mount_fix(facts, path),
        )
    sock = _main_socket(facts)
    owners = sock.owners if sock is not None else ()
    for owner in owners:
        if owner.root is not None and owner.root != facts.own_root:
            return Check(
                "namespace",
                NOTE,
                f"{_process(owner)} runs with root {show(owner.root)} (a chroot or "
                f"container), we with {show(facts.own_root)}: pathname sockets do not cross "
                "a chroot; abstract names do (within one network namespace)",
            )
    for owner in owners:
        if owner.netns is not None and facts.own_netns and owner.netns != facts.own_netns:
            return Check(
                "namespace",
                NOTE,
                f"{_process(owner)} is in network namespace {owner.netns}, we are in "
                f"{facts.own_netns}: fine for a socket file (an abstract name would not cross)",
            )
    if owners:
        return Check("namespace", OK, "the server shares our root and network namespace")
    return Check(
        "namespace",
        NOTE,
        "pathname sockets do not cross a chroot or a private mount namespace; abstract "
        "names cross a chroot, not a network namespace",
    )


def _check_dgram_peer(facts: Facts) -> Check:
    sock = _main_socket(facts)
    if sock is None or sock.type is not SocketType.DGRAM:
        return Check("dgram-peer", SKIPPED, "not a datagram socket")
    if sock.peer_inode is None:
        return Check(
            "dgram-peer", OK, "not connected to a peer: it takes datagrams from any sender"
        )
    peer = f"{show(sock.peer_address)} " if sock.peer_address else ""
    return Check(
        "dgram-peer",
        PROBLEM,
        f"the datagram socket is connect()ed to {peer}(inode {sock.peer_inode}): the "
        "kernel refuses datagrams from every other sender with EPERM (unix_may_send)",
        "the receiver should not connect() its bound socket; send from that peer, or "
        "restart the receiver",
    )


def _check_security(facts: Facts) -> Check:
    if not facts.lsm:
        return Check("security", SKIPPED, "no AppArmor or SELinux is active")
    parts = []
    sock = _main_socket(facts)
    server_labels = sorted({o.label for o in (sock.owners if sock else ()) if o.label})
    for lsm in facts.lsm:
        text = f"{lsm.name} is {lsm.mode}"
        if lsm.own_label:
            text += f" (our label {show(lsm.own_label)})"
        parts.append(text)
    if server_labels:
        parts.append("the server's label: " + ", ".join(show(label) for label in server_labels))
    log = " or ".join(
        "`journalctl -k | grep -i apparmor`" if lsm.name == "AppArmor" else "`ausearch -m avc`"
        for lsm in facts.lsm
    )
    return Check(
        "security",
        NOTE,
        "; ".join(parts),
        f"a denial looks like EACCES although the mode bits allow it: look in {log}",
    )


def _check_connect(facts: Facts, before: Sequence[Check]) -> Check:
    result = facts.connect
    if result is None:
        return Check("connect", SKIPPED, "not attempted: no valid address")
    ms = result.seconds * 1000
    user = show(result.user)
    note = f" ({result.note})" if result.note else ""
    if result.errno is None:
        if result.type is SocketType.DGRAM:
            found = f"datagram connect() as {user} worked in {ms:.2f} ms{note}"
            if result.sent:
                found += "; a 0-byte datagram was sent (--send-test)"
                found += (
                    f", and a {result.reply}-byte reply came back"
                    if result.reply is not None
                    else ", no reply came back (not every server answers)"
                )
            else:
                found += "; no datagram sent (--send-test sends one)"
            return Check("connect", OK, found)
        return Check(
            "connect",
            OK,
            f"{result.type.value} connect as {user} worked in {ms:.2f} ms{note}; closed "
            "without sending a byte",
        )
    name = errno_name(result.errno)
    what = result.error or name
    found = f"{result.type.value} connect as {user} failed after {ms:.2f} ms: {what} ({name}){note}"
    cause = next((c for c in before if c.verdict is PROBLEM), None)
    fix: str | None
    if cause is not None:
        fix = f"see the {cause.name} check above"
    else:
        fix = HINTS.get(("connect", result.errno)) or HINTS.get(("*", result.errno))
    return Check("connect", PROBLEM, found, fix)


_CHECKS: Final[tuple[Callable[[Facts], Check], ...]] = (
    _check_address,
    _check_path,
    _check_file,
    _check_permissions,
    _check_bind,
    _check_listener,
    _check_type,
    _check_backlog,
    _check_owner,
    _check_namespace,
    _check_dgram_peer,
    _check_security,
)


def diagnose(facts: Facts) -> Diagnosis:
    """Every check of `CHECK_NAMES`, in order, each with its verdict and fix."""
    text = show_address(facts.address) if facts.address is not None else show(facts.text)
    if facts.address is None or facts.address.kind not in (
        AddressKind.PATHNAME,
        AddressKind.ABSTRACT,
    ):
        first = _check_address(facts)
        rest = tuple(Check(name, SKIPPED, "no address to connect to") for name in CHECK_NAMES[1:])
        return Diagnosis(text, (first, *rest))
    checks = [check(facts) for check in _CHECKS]
    checks.append(_check_connect(facts, checks))
    assert tuple(c.name for c in checks) == CHECK_NAMES
    return Diagnosis(text, tuple(checks))
