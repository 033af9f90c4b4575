"""Pure: `udskit ls` output: JSON objects for machines and an aligned table for people.

`socket_to_json` is the reference form of one socket; `json_document` writes the same
objects by hand, many times faster than json.dumps over 20,000 dicts (a test checks that
both agree byte for byte after json.loads). The table is plain aligned columns, like ss
and lsof print, so that it greps and cuts; rich would add little to it and cost seconds
on 10,000 rows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, final

from udskit.address import AddressKind, UnixAddress, format_address, format_path
from udskit.inspect.listing import Connection, StaleFile
from udskit.inspect.ownerjson import OwnerTexts, owners_text
from udskit.safetext import escape_text, json_fields, safe_line
from udskit.sockdiag import (
    FileState,
    Shutdown,
    SocketFile,
    SocketOwner,
    SocketState,
    UnixSocket,
    UnixSocketInfo,
)

__all__ = [
    "JsonTemplate",
    "file_json",
    "format_connections",
    "format_stale_table",
    "format_table",
    "json_document",
    "json_template",
    "socket_to_json",
    "stale_to_json",
]

_quote: Final[Callable[[str], str]] = json.encoder.encode_basestring_ascii


# -- JSON ------------------------------------------------------------------------------


def _address_json(address: UnixAddress | None) -> str | None:
    if address is None or address.kind is AddressKind.UNNAMED:
        return None
    return format_address(address)


def owner_to_json(owner: SocketOwner) -> dict[str, Any]:
    record: dict[str, Any] = {"pid": owner.pid, **json_fields("command", owner.command)}
    record.update(fd=owner.fd, uid=owner.uid, user=owner.user)
    return record


def _file_to_json(sock_file: SocketFile | None) -> dict[str, Any] | None:
    if sock_file is None:
        return None
    return {"state": sock_file.state.value, **json_fields("now_at", sock_file.now_at)}


def socket_to_json(sock: UnixSocket) -> dict[str, Any]:
    """One socket as `udskit ls --json` prints it: the reference form."""
    out: dict[str, Any] = {
        "inode": sock.inode,
        "type": sock.type.value,
        "state": sock.state.value,
        "address": _address_json(sock.address),
        "peer_inode": sock.peer_inode,
        "peer_address": _address_json(sock.peer_address),
        "recv_q": sock.recv_q,
        "send_q": sock.send_q,
        "uid": sock.uid,
        "shutdown": sock.shutdown.word if sock.shutdown is not None else None,
        "pending": list(sock.pending),
        "file": _file_to_json(sock.file),
        "processes": [owner_to_json(o) for o in sock.processes],
        "peer_processes": [owner_to_json(o) for o in sock.peer_processes],
        "cookie": sock.cookie,
    }
    if sock.meminfo is not None:
        m = sock.meminfo
        out["meminfo"] = {name: getattr(m, name) for name in m.__dataclass_fields__}
    return out


def connection_to_json(conn: Connection) -> dict[str, Any]:
    server = conn.server
    client = conn.client
    return {
        "pending": conn.pending,
        "inode": server.inode if server is not None else None,
        "recv_q": server.recv_q if server is not None else None,
        "send_q": server.send_q if server is not None else None,
        "processes": [owner_to_json(o) for o in server.processes] if server else [],
        "client_inode": conn.client_inode,
        "client_address": _address_json(client.address) if client is not None else None,
        "client_processes": [owner_to_json(o) for o in conn.client_processes],
    }


def stale_to_json(stale: StaleFile) -> dict[str, Any]:
    return {
        **json_fields("path", stale.path),
        "state": "stale",
        "dev": stale.dev,
        "ino": stale.ino,
        "uid": stale.uid,
        "mtime": stale.mtime,
    }


# Iterating an IntFlag skips NONE and BOTH (not single bits): list all four values.
_SHUTDOWN_JSON: Final = {s: _quote(s.word) if s.word else "null" for s in map(Shutdown, range(4))}
_FILE_JSON: Final = {state: f'{{"state": "{state.value}", "now_at": null}}' for state in FileState}


def file_json(sock_file: SocketFile | None) -> str:
    """The "file" member of a socket's JSON object."""
    if sock_file is None:
        return "null"
    if sock_file.now_at is None:
        return _FILE_JSON[sock_file.state]
    return json.dumps(_file_to_json(sock_file))


@final
class JsonTemplate:
    """A listing's JSON document, written before the processes are known.

    `udskit ls --json` renders everything the kernel said while /proc is still being
    scanned; `document()` then drops each socket's processes (and its peer's) into
    their slots. The few pathname sockets whose file can only be checked from a
    holder's root (a container's) have a file slot too.
    """

    __slots__ = ("file_slots", "owner_slots", "parts")

    def __init__(self) -> None:
        self.parts: list[str] = []
        #: (index in parts, inode whose owners go there): for each socket its own
        #: processes, then its peer's (inode -1 when it has no peer)
        self.owner_slots: list[tuple[int, int]] = []
        #: (index in parts, index of the socket in the rows given to json_template)
        self.file_slots: list[tuple[int, int]] = []

    def document(
        self,
        owner_texts: Mapping[int, str] | Sequence[str],
        file_texts: Mapping[int, str] | None = None,
    ) -> str:
        """The document, with the owners in their slots and `file_texts` (row index ->
        `file_json`) in the file slots. `owner_texts` is either a mapping from inode to
        `ownerjson.owners_text` (missing: no process seen), or one text per owner slot,
        in the order of `owner_slots`."""
        if not self.parts:
            return "[]\n"
        parts = self.parts.copy()
        if isinstance(owner_texts, Mapping):
            text = owner_texts.get
            for index, inode in self.owner_slots:
                parts[index] = text(inode, "")
        else:
            for (index, _inode), owners in zip(self.owner_slots, owner_texts, strict=True):
                parts[index] = owners
        for index, row in self.file_slots:
            parts[index] = file_texts[row] if file_texts is not None else "null"
        return "".join(parts)


def json_template(
    rows: Sequence[UnixSocketInfo | UnixSocket],
    peer_addresses: Sequence[UnixAddress | None],
    files: Sequence[str | None],
    connections: Mapping[int, Sequence[Connection]] | None = None,
) -> JsonTemplate:
    """The JSON document of `rows` (the kernel's facts), waiting for the processes.

    `peer_addresses[i]` and `files[i]` (`file_json` text, or None for a file slot)
    go with `rows[i]`. Objects appear one a line, in the order of `rows`.
    """
    template = JsonTemplate()
    parts = template.parts
    append = parts.append
    owner_slots = template.owner_slots.append
    file_slots = template.file_slots.append
    addresses: dict[UnixAddress, str] = {}
    address_text = addresses.get
    unnamed = AddressKind.UNNAMED
    shutdowns = _SHUTDOWN_JSON
    separator = "[\n"
    for row_index, (
        (
            inode,
            sock_type,
            state,
            address,
            _vfs,
            peer,
            pending,
            recv_q,
            send_q,
            shutdown,
            uid,
            cookie,
            meminfo,
            *_joined,
        ),
        peer_address,
        file_text,
    ) in enumerate(zip(rows, peer_addresses, files, strict=True)):
        if address.kind is unnamed:
            address_json = "null"
        elif (known := address_text(address)) is not None:
            address_json = known
        else:
            address_json = addresses[address] = _quote(format_address(address))
        if peer_address is None or peer_address.kind is unnamed:
            peer_address_json = "null"
        elif (known := address_text(peer_address)) is not None:
            peer_address_json = known
        else:
            peer_address_json = addresses[peer_address] = _quote(format_address(peer_address))
        head = (
            # _value_, not .value: enum's .value is a Python-level descriptor call.
            f'{separator}{{"inode": {inode}, "type": "{sock_type._value_}", '
            f'"state": "{state._value_}", '
            f'"address": {address_json}, '
            f'"peer_inode": {"null" if peer is None else peer}, '
            f'"peer_address": {peer_address_json}, '
            f'"recv_q": {"null" if recv_q is None else recv_q}, '
            f'"send_q": {"null" if send_q is None else send_q}, '
            f'"uid": {"null" if uid is None else uid}, '
            f'"shutdown": {"null" if shutdown is None else shutdowns[shutdown]}, '
            f'"pending": [{", ".join(map(str, pending)) if pending else ""}], '
            f'"file": '
        )
        separator = ",\n"
        if file_text is None:
            append(head)
            file_slots((len(parts), row_index))
            append("")
            append(', "processes": [')
        else:
            append(f'{head}{file_text}, "processes": [')
        owner_slots((len(parts), inode))
        append("")
        append('], "peer_processes": [')
        owner_slots((len(parts), -1 if peer is None else peer))  # no inode is -1
        append("")
        tail = f'], "cookie": {"null" if cookie is None else cookie}'
        if meminfo is not None:
            tail += ', "meminfo": ' + json.dumps(
                {name: getattr(meminfo, name) for name in meminfo.__dataclass_fields__}
            )
        if connections is not None:
            conns = [connection_to_json(c) for c in connections.get(inode, ())]
            tail += ', "connections": ' + json.dumps(conns)
        append(tail + "}")
    if parts:
        append("\n]\n")
    return template


def json_document(
    sockets: Iterable[UnixSocket],
    connections: Mapping[int, Sequence[Connection]] | None = None,
) -> str:
    """The JSON array `udskit ls --json` prints, one socket object per line.

    Equal, after json.loads, to [socket_to_json(s) for s in sockets] (plus
    "connections" when given); written by hand because it runs once per socket and
    json.dumps over 20,000 dicts takes longer than `ss -xp`'s whole run.
    """
    kept = sockets if isinstance(sockets, (list, tuple)) else list(sockets)
    template = json_template(
        kept, [s.peer_address for s in kept], [file_json(s.file) for s in kept], connections
    )
    # One text per owner slot: each record's own processes, then (if it has a peer)
    # its peer_processes. The owners tuple of a socket is usually also its peer's
    # peer_processes (the same object), so a text is made once and found by id().
    per_process: OwnerTexts = {}
    by_id: dict[int, str] = {}
    texts: list[str] = []
    for sock in kept:
        for owners in (sock.processes, sock.peer_processes):
            if not owners:
                text = ""
            elif (known := by_id.get(id(owners))) is not None:
                text = known
            else:
                text = by_id[id(owners)] = owners_text(owners, per_process)
            texts.append(text)
    return template.document(texts)


# -- the table -------------------------------------------------------------------------
_HEADER: Final = ("TYPE", "STATE", "RECV-Q", "SEND-Q", "ADDRESS", "INODE", "PEER", "PROCESSES")
_SHUTDOWN_TEXT: Final = {
    Shutdown.NONE: "",
    Shutdown.READ: ",shut-rd",
    Shutdown.WRITE: ",shut-wr",
    Shutdown.BOTH: ",shut-rdwr",
}


def format_owners(owners: Sequence[SocketOwner], *, fds: bool = True) -> str:
    """`nginx[812]:7,9 curl[900]:3`: command[pid], then the fds (when asked)."""
    if len(owners) == 1:  # the common case, once per socket on busy hosts
        pid, command, fd = owners[0][:3]
        command = escape_text(command)
        return f"{command}[{pid}]:{fd}" if fds else f"{command}[{pid}]"
    by_pid: dict[int, tuple[str, list[int]]] = {}
    for owner in owners:
        by_pid.setdefault(owner.pid, (owner.command, []))[1].append(owner.fd)
    parts = []
    for pid, (command, numbers) in by_pid.items():
        text = f"{escape_text(command)}[{pid}]"
        if fds:
            text += ":" + ",".join(str(n) for n in sorted(numbers))
        parts.append(text)
    return " ".join(parts)


def format_address_with_file(sock: UnixSocket) -> str:
    text = format_address(sock.address)
    sock_file = sock.file
    if sock_file is None or sock_file.state in (FileState.PRESENT, FileState.UNKNOWN):
        return text
    if sock_file.state is FileState.RENAMED:
        return f"{text} (renamed to {_path_text(sock_file.now_at or '?')})"
    if sock_file.state is FileState.REPLACED:
        return f"{text} (replaced: another file is there now)"
    return f"{text} (deleted)"


def _peer_text(sock: UnixSocket) -> str:
    if sock.peer_inode is None:
        return "-"
    parts = [str(sock.peer_inode)]
    peer_address = sock.peer_address
    if (
        peer_address is not None
        and peer_address.kind is not AddressKind.UNNAMED
        and peer_address != sock.address
    ):
        parts.append(format_address(peer_address))
    if sock.peer_processes:
        parts.append(format_owners(sock.peer_processes, fds=False))
    return " ".join(parts)


def _queue(value: int | None) -> str:
    return "-" if value is None else str(value)


def table_order(sock: UnixSocket) -> tuple[bool, str, bool, int]:
    """Named sockets first, by address; a listener before its connections."""
    unnamed = sock.address.kind is AddressKind.UNNAMED
    return (
        unnamed,
        "" if unnamed else format_address(sock.address),
        sock.state is not SocketState.LISTEN,
        sock.inode,
    )


def _printable(cell: str) -> str:
    """A table cell on one line: addresses and commands come escaped already
    (`udskit.safetext`); this is the guard for anything else a peer controls."""
    return safe_line(cell)


def _path_text(path: str) -> str:
    """A file path as the address notation prints it, so it pastes back."""
    return format_path(path.encode("utf-8", errors="surrogateescape"))


def _align(rows: Sequence[Sequence[str]]) -> list[str]:
    # One isprintable() per row; cells are looked at one by one only in a row that
    # holds something odd.
    rows = [
        row if "".join(row).isprintable() else [_printable(cell) for cell in row] for row in rows
    ]
    widths = [max(map(len, column)) for column in zip(*rows, strict=True)]
    numeric = {2, 3, 5}
    justify = [(str.rjust if i in numeric else str.ljust, width) for i, width in enumerate(widths)]
    return [
        "  ".join(
            [pad(cell, width) for cell, (pad, width) in zip(row, justify, strict=True)]
        ).rstrip()
        for row in rows
    ]


def format_table(
    sockets: Iterable[UnixSocket],
    connections: Mapping[int, Sequence[Connection]] | None = None,
    *,
    processes: bool = True,
) -> list[str]:
    """The human table: one line per socket (and, with connections, a line per client)."""
    ordered = sorted(sockets, key=table_order)
    header = _HEADER if processes else _HEADER[:-1]
    rows: list[tuple[str, ...]] = [header]
    extra: dict[int, list[str]] = {}
    for sock in ordered:
        shutdown = _SHUTDOWN_TEXT[sock.shutdown] if sock.shutdown is not None else ""
        row: tuple[str, ...] = (
            sock.type.value,
            sock.state.value + shutdown,
            _queue(sock.recv_q),
            _queue(sock.send_q),
            format_address_with_file(sock),
            str(sock.inode),
            _peer_text(sock),
        )
        if processes:
            row += (format_owners(sock.processes) or "-",)
        if connections is not None and sock.inode in connections:
            extra[len(rows)] = format_connections(connections[sock.inode])
        rows.append(row)
    lines = _align(rows)
    if not extra:
        return lines
    out: list[str] = []
    for index, line in enumerate(lines):
        out.append(line)
        out.extend(extra.get(index, ()))
    return out


def format_connections(connections: Sequence[Connection]) -> list[str]:
    """Indented lines under a listener: each client, its processes and the server's end."""
    if not connections:
        return ["  └ no connections"]
    lines = []
    for i, conn in enumerate(connections):
        branch = "└" if i == len(connections) - 1 else "├"
        client = f"client {conn.client_inode if conn.client_inode is not None else '?'}"
        who = format_owners(conn.client_processes)
        if who:
            client += f" {who}"
        if conn.pending:
            lines.append(f"  {branch} pending (not accepted yet)  {client}")
            continue
        server = conn.server
        if server is None:
            lines.append(f"  {branch} connected  {client}")
            continue
        queues = f"recv-q {_queue(server.recv_q)} send-q {_queue(server.send_q)}"
        mine = format_owners(server.processes) or "-"
        lines.append(f"  {branch} accepted {server.inode} {mine} ({queues})  <->  {client}")
    return [safe_line(line) for line in lines]


def format_stale_table(stale: Iterable[StaleFile], users: Mapping[int, str]) -> list[str]:
    """Stale socket files: path, owner, last change."""
    import time

    rows: list[tuple[str, ...]] = [("STATE", "OWNER", "MODIFIED", "PATH")]
    for item in stale:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(item.mtime))
        rows.append(("stale", users.get(item.uid, str(item.uid)), when, _path_text(item.path)))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return ["  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip() for row in rows]
