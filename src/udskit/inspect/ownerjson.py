"""Pure: the JSON text of a socket's owning processes, as `udskit ls --json` prints it.

`[{"pid": 812, "command": "nginx", "fd": 7, "uid": 33, "user": "www-data"}, ...]`,
without the brackets. One module for the one format, used by the renderer and by the
/proc scan child, which writes these texts while the parent still reads netlink: on
20,000 sockets that takes half of the JSON rendering off the critical path. It imports
only the standard library's JSON string quoting, so the child can afford it.
"""

from __future__ import annotations

from json.encoder import encode_basestring_ascii as _quote

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["OwnerFields", "OwnerTexts", "command_json", "owners_text", "process_texts"]

#: Per pid: the text before the fd and the text after it (all but fd is per process).
OwnerTexts = dict[int, tuple[str, str]]
#: (pid, command, fd, uid, user), as `SocketOwner` and the raw scan both give it.
OwnerFields = tuple[int, str, int, "int | None", "str | None"]


def process_texts(pid: int, command: str, uid: int | None, user: str | None) -> tuple[str, str]:
    """The text of one owner object before its fd and after it."""
    uid_text = "null" if uid is None else str(uid)
    user_text = "null" if user is None else _quote(user)
    return (
        f'{{"pid": {pid}, "command": {command_json(command)}, "fd": ',
        f', "uid": {uid_text}, "user": {user_text}}}',
    )


def command_json(command: str) -> str:
    """A process name as JSON: as it is when it is UTF-8; escaped (`udskit.safetext`)
    with its exact bytes in "command_b64" when it is not (a name is any 15 bytes, and
    a lone surrogate escape is not strict JSON text)."""
    if command.isascii():
        return _quote(command)
    try:
        command.encode("utf-8")
    except UnicodeEncodeError:
        import base64

        from udskit.safetext import escape_text

        raw = command.encode("utf-8", errors="surrogateescape")
        exact = base64.b64encode(raw).decode("ascii")
        return f'{_quote(escape_text(command))}, "command_b64": "{exact}"'
    return _quote(command)


def owners_text(owners: Iterable[OwnerFields], cache: OwnerTexts) -> str:
    """The JSON objects of `owners` ((pid, command, fd, uid, user) each), comma-separated.

    `cache` keeps each process's text between calls (a process often holds many sockets).
    """
    parts = []
    for pid, command, fd, uid, user in owners:
        around = cache.get(pid)
        if around is None:
            around = cache[pid] = process_texts(pid, command, uid, user)
        parts.append(f"{around[0]}{fd}{around[1]}")
    return ", ".join(parts)
