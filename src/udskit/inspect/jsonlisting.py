"""I/O: the `udskit ls --json` document, written while /proc is still being scanned.

`list_sockets()` joins the kernel's view with the processes, and the renderer then
writes the records: on 20,000 sockets both passes wait for the scan of /proc/*/fd.
Here the kernel's view is rendered first, with a slot per socket for its processes
(`render.json_template`), while the scan runs in a child (`BackgroundFdScan`) that
also writes the processes' JSON text; the document is finished by filling the slots.
The output is that of `json_document(list_sockets(...).sockets)`, which a test checks.

Filters that need the processes (`--pid`, `--user`) and `--connections` take the
ordinary path: they need the joined records.
"""

from __future__ import annotations

from udskit.address import AddressKind
from udskit.inspect.fdscan import BackgroundFdScan, RawScan, owner_texts_of, walk_socket_fds
from udskit.inspect.lister import KernelView, check_socket_file, read_kernel_view
from udskit.inspect.listing import FileState, SocketFilter, Source
from udskit.inspect.owners import owners_from_scan
from udskit.inspect.render import file_json, json_template
from udskit.sockdiag import VfsInode

__all__ = ["json_listing"]

_FINAL_WITHOUT_OWNERS = (FileState.PRESENT, FileState.UNKNOWN)


def json_listing(
    where: SocketFilter | None = None,
    *,
    processes: bool = True,
    meminfo: bool = False,
    source: Source | None = None,
    scan: BackgroundFdScan | None = None,
) -> tuple[str, KernelView]:
    """The JSON document of every unix socket `where` keeps, and the kernel view it
    came from (for its `source` and `note`).

    `scan` is a scan of /proc/*/fd started earlier (best with `json_texts=True`);
    without one, /proc is scanned here, after the kernel's view is rendered.
    """
    where = where or SocketFilter()
    if where.needs_owners:
        raise ValueError("filters on processes need list_sockets(): the joined records")
    view = read_kernel_view(where, meminfo=meminfo, source=source)
    kept, by_inode = view.kept, view.by_inode

    # A file is checked in our root first; only one that is not there needs the root of
    # a process holding it (a container's), which is known after the scan: a slot.
    pathname = AddressKind.PATHNAME
    checked: dict[VfsInode | None, str | None] = {}
    deferred: dict[VfsInode | None, int] = {}
    files: list[str | None] = []
    peer_addresses = []
    info_of = by_inode.get
    for row, info in enumerate(kept):
        peer_inode = info.peer_inode
        peer = info_of(peer_inode) if peer_inode is not None else None
        peer_addresses.append(peer.address if peer is not None else None)
        if info.address.kind is not pathname:
            files.append("null")
            continue
        vfs = info.vfs
        if vfs in checked:
            files.append(checked[vfs])
            continue
        sock_file = check_socket_file(info.address, vfs)
        if sock_file.state in _FINAL_WITHOUT_OWNERS:
            text: str | None = file_json(sock_file)
        else:
            text = None
            deferred[vfs] = row
        if vfs is not None:
            checked[vfs] = text
        files.append(text)
    template = json_template(kept, peer_addresses, files)

    raw: RawScan | None = None
    texts: dict[int, str] = {}
    if processes:
        if scan is not None:
            raw = scan.result()
            texts = scan.owner_texts if scan.owner_texts is not None else owner_texts_of(raw)
        else:
            raw = walk_socket_fds()
            texts = owner_texts_of(raw)
    file_texts: dict[int, str] = {}
    if template.file_slots:
        # As list_sockets() does: the first socket bound to a file decides for all.
        wanted = {kept[row].inode for row in deferred.values()}
        owners = owners_from_scan(raw, wanted) if raw is not None else {}
        decided = {}
        for vfs, row in deferred.items():
            info = kept[row]
            holders = owners.get(info.inode, ())
            decided[vfs] = file_json(check_socket_file(info.address, vfs, holders))
        for _index, row in template.file_slots:
            file_texts[row] = decided[kept[row].vfs]
    return template.document(texts, file_texts), view
