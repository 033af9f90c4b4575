"""I/O: path operations that a hostile directory cannot turn against udskit's user.

Root often runs udskit on sockets in directories that belong to a less privileged
user (/run/redis, /var/run/postgresql, an agent's socket directory). That user can
rename, replace or remove any name there at any moment, for instance swap a fresh
socket file for a symlink to /etc/shadow with renameat2(RENAME_EXCHANGE). So:

- The directory is opened once (`Directory`) and every later operation is relative
  to that fd (`*at()` calls): the name is looked up in the directory udskit checked.
- Mode and owner change only on the inode udskit's own socket is bound to: the name
  is opened with O_PATH|O_NOFOLLOW (a symlink is opened as itself, never followed),
  the fd's inode is compared with the socket's own file from sock_diag
  (UNIX_DIAG_VFS), and chmod/chown go through /proc/self/fd/N, which reaches exactly
  the pinned inode (proc_fd_link; fchmod/fchown refuse O_PATH fds with EBADF).
- unlink and rename happen only after lstat of the name shows the expected inode.

bind(2) itself takes a path and follows it; that is why the result is checked rather
than trusted. Binding through /proc/self/fd/DIRFD/NAME would pin the directory, but
the kernel would then record that text as the socket's name (getsockname, ss, ls).

The exclusion between udskit processes (`exclusive()`) is a lock file in a directory
only the running user may write (`private_dir()`): a flock on the socket's directory,
which every user who can open it may take, let anybody hang root's udskit for ever.
The holder removes the lock file as it lets go, so the directory does not fill up.
Dump state files live there too, so that `udskit dump --restore` after a kill -9
trusts only records the same user wrote.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any, Final, final

from udskit.access import FileFacts, PathFacts, directory_exposure
from udskit.errors import UdskitError, socket_error
from udskit.signals import STOP_SIGNALS, signals_held

__all__ = [
    "LOCK_WAIT",
    "Directory",
    "FileSwapped",
    "exclusive",
    "path_facts",
    "private_dir",
    "read_state",
    "remove_state",
    "socket_file_inode",
    "write_state",
]

#: How long to wait for another udskit process working on the same directory. The
#: operations it guards take milliseconds; two seconds is a wide margin that still
#: lets a user see at once that something is stuck.
LOCK_WAIT: Final = 2.0

Inode = tuple[int, int]


class FileSwapped(UdskitError):
    """The name no longer leads to the file udskit created or checked."""


def _inode_of(st: os.stat_result) -> Inode:
    return (st.st_dev, st.st_ino)


@final
class Directory:
    """A directory held open, and the names in it looked up relative to that fd.

    The directory is opened following symlinks on the way (/var/run -> /run is
    normal); from then on it is this directory, whatever happens to its path."""

    def __init__(self, path: str) -> None:
        self.path = os.path.dirname(os.path.abspath(path)) or "/"
        self.fd = -1
        with signals_held():  # a signal between open() and the store leaked the fd
            self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        # Dropped unclosed (a stop signal between its making and the caller's `with`):
        # its descriptor must not outlive it.
        with suppress(Exception):
            self.close()

    def __enter__(self) -> Directory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lstat(self, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def inode(self, name: str) -> Inode | None:
        st = self.lstat(name)
        return None if st is None else _inode_of(st)

    def facts(self) -> FileFacts:
        st = os.fstat(self.fd)
        return FileFacts(st.st_mode, st.st_uid, st.st_gid)

    def exposure(self, name_owner: int | None = None) -> str | None:
        """Who besides us may change names here (None: nobody)."""
        return directory_exposure(self.facts(), os.geteuid(), name_owner)

    def exposure_note(self, name: str) -> str | None:
        """One line for the user when the directory is in other hands."""
        who = self.exposure(os.geteuid())
        if who is None:
            return None
        return (
            f"{self.path} is writable by {who}, who can rename or replace "
            f"{name} at any time; udskit only changes files it verified are its own"
        )

    def unlink_if(self, name: str, expected: Inode) -> bool:
        """Remove `name` only if it is still the inode `expected`."""
        if self.inode(name) != expected:
            return False
        with suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.fd)
        return True

    def rename(self, old: str, new: str) -> None:
        os.rename(old, new, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def link(self, old: str, new: str) -> None:
        """link(2) never follows a symlink at `old` (linkat without AT_SYMLINK_FOLLOW),
        and fails with EEXIST if `new` exists: the new name is created exclusively."""
        os.link(old, new, src_dir_fd=self.fd, dst_dir_fd=self.fd, follow_symlinks=False)

    @contextmanager
    def pinned(self, name: str, expected: Inode) -> Iterator[str]:
        """A /proc/self/fd path that reaches the socket file `expected` at `name`, or
        FileSwapped. The file is opened with O_PATH|O_NOFOLLOW, so a symlink put in its
        place is opened as itself and fails the check instead of being followed."""
        fd = -1
        try:
            try:
                with signals_held():  # no Ctrl-C between open() and the store
                    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
            except FileNotFoundError:
                raise FileSwapped(f"{os.path.join(self.path, name)} vanished") from None
            st = os.fstat(fd)
            if not stat.S_ISSOCK(st.st_mode) or _inode_of(st) != expected:
                raise FileSwapped(
                    f"{os.path.join(self.path, name)} was replaced by another file "
                    f"(a {_kind(st.st_mode)} owned by uid {st.st_uid})"
                )
            proc = f"/proc/self/fd/{fd}"
            if not os.path.exists(proc):
                raise UdskitError(
                    "/proc is not mounted: udskit cannot change a socket file's mode or "
                    "owner without following symlinks"
                )
            yield proc
        finally:
            if fd >= 0:
                os.close(fd)

    def set_owner_and_mode(
        self, name: str, expected: Inode, uid: int, gid: int, mode: int | None
    ) -> None:
        """chown/chmod the socket file `expected`, never what `name` points to."""
        with self.pinned(name, expected) as proc:
            if uid != -1 or gid != -1:
                os.chown(proc, uid, gid)
            if mode is not None:
                os.chmod(proc, mode)


def _kind(mode: int) -> str:
    from udskit.probe import file_kind

    return file_kind(mode)


def socket_file_inode(sock: Any) -> Inode | None:
    """The (st_dev, st_ino) of the file `sock` is bound to, as the kernel knows it
    (sock_diag UNIX_DIAG_VFS): the one fact about a socket file an attacker cannot
    swap. None where sock_diag is not available."""
    from udskit.netlink import query_unix_socket
    from udskit.sockdiag import Show

    try:
        info = query_unix_socket(os.fstat(sock.fileno()).st_ino, Show.VFS)
    except (OSError, UdskitError):
        return None
    except Exception:  # a SockDiagError from a kernel without unix_diag
        return None
    if info is None or info.vfs is None:
        return None
    return (info.vfs.dev, info.vfs.ino)


# -- who could connect: the facts for udskit.access ------------------------------------
def _facts(path: str, st: os.stat_result) -> FileFacts:
    acl = False
    with suppress(OSError):
        acl = "system.posix_acl_access" in os.listxattr(path, follow_symlinks=False)
    return FileFacts(st.st_mode, st.st_uid, st.st_gid, acl)


def path_facts(path: str) -> PathFacts:
    """The socket file at `path` (followed, as connect follows it) and every directory
    on the way, for `udskit.access.may_connect`."""
    absolute = os.path.abspath(path)
    real = os.path.realpath(absolute)
    directories: list[tuple[str, FileFacts]] = []
    current = "/"
    for part in os.path.dirname(real).split("/"):
        current = os.path.join(current, part) if part else current
        directories.append((current, _facts(current, os.stat(current))))
    return PathFacts(absolute, _facts(real, os.stat(real)), tuple(directories))


# -- the private directory: locks and dump state -----------------------------------------
_PRIVATE: dict[int, str] = {}


def private_dir() -> str:
    """`find_private_dir()`, checked once per process and user."""
    euid = os.geteuid()
    found = _PRIVATE.get(euid)
    if found is None or not os.path.isdir(found):
        found = _PRIVATE[euid] = find_private_dir()
    return found


def find_private_dir() -> str:
    """A directory only this user may write, created 0700 if need be.

    root: /run/udskit. Others: $XDG_RUNTIME_DIR/udskit, /run/user/UID/udskit, or
    /tmp/udskit-UID. Whatever is found there must be a real directory (not a symlink)
    owned by this user with no access for anyone else, or udskit refuses: in /tmp
    another user could have made it first to read or hold udskit's locks."""
    euid = os.geteuid()
    candidates: list[str] = []
    if euid == 0:
        candidates.append("/run/udskit")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        candidates.append(os.path.join(runtime, "udskit"))
    candidates.append(f"/run/user/{euid}/udskit")
    candidates.append(f"/tmp/udskit-{euid}")
    for candidate in candidates:
        parent = os.path.dirname(candidate)
        try:
            pst = os.stat(parent)
        except OSError:
            continue
        if candidate != f"/tmp/udskit-{euid}" and (pst.st_uid not in (euid, 0)):
            continue
        with suppress(FileExistsError, PermissionError):
            os.mkdir(candidate, 0o700)
        try:
            st = os.lstat(candidate)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != euid or st.st_mode & 0o077:
            from udskit.probe import describe_file

            raise UdskitError(
                f"udskit's private directory {describe_file(candidate, st)} is not a "
                f"directory only uid {euid} may use; remove it (another user may have "
                "made it to hold or read udskit's locks)"
            )
        return candidate
    raise UdskitError("found no directory for udskit's locks (tried " + ", ".join(candidates) + ")")


def _key(directory: Directory, name: str = "") -> str:
    import hashlib  # here, not at the top: OpenSSL's load is felt in every command's start

    st = os.fstat(directory.fd)
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:16] if name else "dir"
    return f"{st.st_dev:x}-{st.st_ino}-{digest}"


def _open_private(path: str, flags: int) -> int:
    """Open a file in the private directory, never through a symlink, and check that it
    is this user's own regular file."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        raise UdskitError(f"{path} is not udskit's own file; remove it")
    return fd


def _lock_holder(fd: int) -> str:
    """Who holds the flock on `fd`: from /proc/locks (dev as MAJ:MIN in hex, inode)."""
    from udskit.procfs import process_command

    st = os.fstat(fd)
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            for line in f:
                fields = line.split()
                if "->" in fields:
                    continue  # a waiter, not the holder
                if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == wanted:
                    pid = int(fields[4])
                    return f"pid {pid} ({process_command(pid)})"
    except (OSError, ValueError):
        pass
    return "another process"


def _try_lock(fd: int, lock_path: str) -> bool | None:
    """One attempt at the lock on `fd`. True: held, and `fd` is still the file at
    `lock_path`. False: another process holds it. None: held, but its previous holder
    had removed it on release; the path must be opened again."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    mine = os.fstat(fd)
    try:
        there = os.stat(lock_path, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return None if (there.st_dev, there.st_ino) != (mine.st_dev, mine.st_ino) else True


@contextmanager
def exclusive(path: str, *, timeout: float = LOCK_WAIT, op: str = "lock") -> Iterator[None]:
    """Exclude other udskit processes of this user from the directory holding `path`.

    Waits at most `timeout` seconds, then fails with a line naming the holder. The lock
    file lives in `private_dir()`, so no other user can create, hold or replace it.
    The wait sleeps in small steps, so Ctrl-C and SIGTERM are handled at once.

    The holder removes the lock file before it lets go (one file was left per directory
    ever locked: thousands in /run/udskit after a few test runs). So a waiter that wins
    the lock checks that its file is still the one at the path, and opens the path
    again if not: whoever holds the file at the path is alone in the directory."""
    fd = -1
    locked = False
    lock_path = ""
    try:
        # A Ctrl-C between open() and the try that closes it leaked the lock file's
        # descriptor, and with it the lock: in a program that goes on after a
        # KeyboardInterrupt, every udskit after it waited 2 s and failed (found by
        # interrupting at every line, tests/io/test_stop_anywhere.py).
        with signals_held():
            try:
                directory = Directory(path)
            except OSError:
                directory = None  # no such directory (or no access): the operation says why
            if directory is not None:
                with directory:
                    lock_path = os.path.join(private_dir(), f"lock-{_key(directory)}")
        if not lock_path:
            yield
            return
        deadline = time.monotonic() + timeout
        while True:
            with signals_held():  # `fd` and `locked` always say what the finally must undo
                if fd < 0:
                    fd = _open_private(lock_path, os.O_RDWR | os.O_CREAT)
                state = _try_lock(fd, lock_path)
                if state is None:
                    os.close(fd)
                    fd = -1
                locked = state is True
            if locked:
                break
            if state is False:
                if time.monotonic() >= deadline:
                    raise socket_error(
                        op,
                        path,
                        errno.EBUSY,
                        f"another udskit works on {os.path.dirname(os.path.abspath(path))} "
                        f"and has held its lock ({lock_path}) for {timeout:g} s: "
                        f"{_lock_holder(fd)}; wait for it or stop it",
                    ) from None
                time.sleep(0.01)
        yield
    finally:
        if fd >= 0:
            # Raw mask, first call: a Ctrl-C between unlink and close would leak the
            # descriptor, and `with signals_held()` has a window before its __enter__.
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
            try:
                if locked:
                    with suppress(OSError):  # left behind, it is only reused
                        os.unlink(lock_path)
                os.close(fd)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _state_path(directory: Directory, name: str) -> str:
    return os.path.join(private_dir(), f"dump-{_key(directory, name)}.json")


def write_state(directory: Directory, name: str, record: dict[str, Any]) -> None:
    """Record (atomically) what a dump of `name` in `directory` created."""
    import json

    final_path = _state_path(directory, name)
    tmp = f"{final_path}.{os.getpid()}.tmp"
    with suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = _open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        os.write(fd, json.dumps(record, sort_keys=True).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final_path)


def read_state(directory: Directory, name: str) -> dict[str, Any] | None:
    path = _state_path(directory, name)
    try:
        fd = _open_private(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        with os.fdopen(fd, "rb") as f:
            data = f.read(65536)
    except OSError:
        return None
    try:
        import json

        record = json.loads(data)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def remove_state(directory: Directory, name: str) -> None:
    with suppress(FileNotFoundError):
        os.unlink(_state_path(directory, name))
