"""I/O: compile, load and attach udskit's BPF program through libbpf (via ctypes).

Why ctypes over Debian's libbpf1 and not a binding: bcc needs kernel headers and
compiles at every start, and the maintained Python bindings of libbpf are either
not packaged for Debian or wrap a newer libbpf than stable ships. The handful of
libbpf calls we need (open_mem, load, attach, ring_buffer) have a stable C ABI
(libbpf.so.1), so ctypes is the smallest dependency that works.

The program (bpf/unixdump.bpf.c, package data) is compiled by clang at first use
into a cache keyed by the source's sha256, so the cost is paid once per version. The
cache directory is created 0700 and must belong to us: root loads what is in it into
the kernel, so nobody else may be able to put a file there.

Every way this can fail says so in one line (`BpfUnavailable`): not root, no
libbpf, no clang, no tracefs, a kernel without BTF (the accept's exit reads who
connected from kernel structures, CO-RE), or a kernel that refuses the program.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import os
import shutil
import stat
import struct
import subprocess
import tempfile
from collections.abc import Callable
from typing import Final, final

from udskit.errors import BpfUnavailable, UsageError

__all__ = ["BpfProgram", "BpfUnavailable", "check_environment", "compiled_object", "ring_size"]

SOURCE_NAME: Final = "unixdump.bpf.c"
TRACEFS: Final = "/sys/kernel/tracing"
KERNEL_BTF: Final = "/sys/kernel/btf/vmlinux"
#: Ring buffer size: a power of two; 64 MiB holds about a thousand 64 KiB chunks or
#: a hundred thousand small ones while user space catches up.
RING_BYTES: Final = 64 << 20
#: The largest ring buffer we ask for (-B): the kernel takes up to 2^32 - 1 bytes, but
#: this is memory the kernel keeps for as long as the capture runs.
MAX_RING_BYTES: Final = 1 << 30


def ring_size(kib: int) -> int:
    """The ring buffer size for `-B KIB`: a power of two of at least one page (the
    kernel's rule), and at most MAX_RING_BYTES."""
    import mmap

    if kib * 1024 > MAX_RING_BYTES:
        raise UsageError(f"-B {kib}: at most {MAX_RING_BYTES >> 10} KiB (1 GiB)")
    size = mmap.PAGESIZE
    while size < kib * 1024:
        size *= 2
    return size


_BUSY: Final = 1 << 31
_DISCARD: Final = 1 << 30
_RINGBUF_HEADER: Final = 8
_U32: Final = struct.Struct("<I")


def _source() -> bytes:
    from importlib import resources  # here: ~15 ms of every dump's start-up otherwise

    return (resources.files("udskit.capture") / "bpf" / SOURCE_NAME).read_bytes()


def _cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "udskit", "bpf")


def _private_dir(path: str) -> None:
    """Create `path` 0700 if missing, and refuse one that others could write to."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise BpfUnavailable(
            f"the BPF cache {path} is not a directory that only you can write to "
            f"(owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o}): remove it, or set "
            "XDG_CACHE_HOME to a private directory"
        )


def compiled_object(clang: str | None = None) -> bytes:
    """The BPF object file for this version of the source, compiled once and cached."""
    source = _source()
    digest = hashlib.sha256(source).hexdigest()[:16]
    directory = _cache_dir()
    _private_dir(directory)
    cached = os.path.join(directory, f"unixdump-{digest}.o")
    try:
        with open(cached, "rb") as f:
            return f.read()
    except FileNotFoundError:
        pass
    clang = clang or shutil.which("clang")
    if clang is None:
        raise BpfUnavailable(
            "clang is not installed: it compiles the BPF program once (apt-get install clang), "
            "or use --engine proxy"
        )
    with tempfile.TemporaryDirectory(dir=directory) as work:
        src = os.path.join(work, SOURCE_NAME)
        obj = os.path.join(work, "out.o")
        with open(src, "wb") as f:
            f.write(source)
        # -g: libbpf needs the BTF that describes the maps.
        argv = [clang, "-O2", "-g", "-target", "bpf", "-Wall", "-c", src, "-o", obj]
        done = subprocess.run(argv, capture_output=True, check=False)
        if done.returncode != 0:
            first = done.stderr.decode(errors="replace").strip().splitlines()
            raise BpfUnavailable(
                f"clang could not compile {SOURCE_NAME}: {first[0] if first else 'no message'}"
            )
        os.replace(obj, cached)
    with open(cached, "rb") as f:
        return f.read()


def _mount_tracefs() -> None:
    """libbpf finds tracepoint ids under tracefs; mount it where it is missing (as
    perf and bpftrace expect it to be)."""
    if os.path.isdir(os.path.join(TRACEFS, "events")):
        return
    if os.path.isdir("/sys/kernel/debug/tracing/events"):
        return
    done = subprocess.run(
        ["mount", "-t", "tracefs", "tracefs", TRACEFS], capture_output=True, check=False
    )
    if done.returncode != 0 or not os.path.isdir(os.path.join(TRACEFS, "events")):
        why = done.stderr.decode(errors="replace").strip() or "no events directory"
        raise BpfUnavailable(
            f"tracefs is not mounted and mounting it at {TRACEFS} failed ({why}): "
            "mount -t tracefs tracefs /sys/kernel/tracing, or use --engine proxy"
        )


def _fork_child_pid_offset() -> int:
    """Where sched_process_fork's child_pid is in this kernel (its layout changed in
    6.x, when the comm fields became __data_loc strings)."""
    root = (
        TRACEFS if os.path.isdir(os.path.join(TRACEFS, "events")) else "/sys/kernel/debug/tracing"
    )
    with open(os.path.join(root, "events/sched/sched_process_fork/format")) as f:
        for line in f:
            if "child_pid;" in line:
                return int(line.split("offset:")[1].split(";")[0])
    raise BpfUnavailable("sched_process_fork has no child_pid field here: use --engine proxy")


def _libbpf() -> ctypes.CDLL:
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise BpfUnavailable(
            f"libbpf is not installed ({exc}): apt-get install libbpf1, or use --engine proxy"
        ) from None
    vp, cp, ci = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    for fn, res, args in (
        ("bpf_object__open_mem", vp, [cp, ctypes.c_size_t, vp]),
        ("bpf_object__load", ci, [vp]),
        ("bpf_object__close", None, [vp]),
        ("bpf_object__next_program", vp, [vp, vp]),
        ("bpf_object__find_map_by_name", vp, [vp, cp]),
        ("bpf_map__set_max_entries", ci, [vp, ctypes.c_uint32]),
        ("bpf_map__fd", ci, [vp]),
        ("bpf_map__set_initial_value", ci, [vp, vp, ctypes.c_size_t]),
        ("bpf_program__attach", vp, [vp]),
        ("bpf_program__name", cp, [vp]),
        ("bpf_link__destroy", ci, [vp]),
        ("libbpf_get_error", ctypes.c_long, [vp]),
        ("bpf_map_update_elem", ci, [ci, vp, vp, ctypes.c_uint64]),
        ("bpf_map_lookup_elem", ci, [ci, vp, vp]),
        ("bpf_map_delete_elem", ci, [ci, vp]),
        ("libbpf_set_print", vp, [vp]),
    ):
        f = getattr(lib, fn)
        f.restype = res
        f.argtypes = args
    return lib


def check_environment() -> None:
    """Raise BpfUnavailable (one line) when the engine surely cannot run here."""
    if os.geteuid() != 0:
        raise BpfUnavailable(
            "the eBPF engine needs root (CAP_BPF and CAP_PERFMON): run it with sudo, "
            "or use --engine proxy"
        )
    _libbpf()
    if not os.path.exists(KERNEL_BTF):
        # The accept's exit reads who connected from kernel structures whose layout
        # libbpf takes from the kernel's BTF (CO-RE).
        raise BpfUnavailable(
            f"this kernel has no BTF ({KERNEL_BTF} is missing; CONFIG_DEBUG_INFO_BTF): "
            "the eBPF engine needs it to read who connects; use --engine proxy"
        )
    if shutil.which("clang") is None:
        # A cached object will do without clang.
        digest = hashlib.sha256(_source()).hexdigest()[:16]
        if not os.path.exists(os.path.join(_cache_dir(), f"unixdump-{digest}.o")):
            raise BpfUnavailable(
                "clang is not installed: it compiles the BPF program once "
                "(apt-get install clang), or use --engine proxy"
            )


def _errno_text(code: int) -> str:
    code = abs(code)
    return f"{errno.errorcode.get(code, str(code))}: {os.strerror(code)}"


@final
class BpfProgram:
    """The loaded and attached program, its maps, and the ring buffer reader.

    `on_record(memoryview)` is called for every ring buffer record during `poll()`;
    the memoryview is only valid during the call."""

    def __init__(self, on_record: Callable[[memoryview], None], ring_bytes: int = RING_BYTES):
        check_environment()
        obj_bytes = compiled_object()
        _mount_tracefs()
        self._lib = lib = _libbpf()
        if not os.environ.get("UDSKIT_BPF_DEBUG"):
            lib.libbpf_set_print(None)  # libbpf's own log lines would break ours
        self._obj_data = ctypes.create_string_buffer(obj_bytes, len(obj_bytes))
        self._obj: int | None = lib.bpf_object__open_mem(self._obj_data, len(obj_bytes), None)
        self._links: list[int] = []
        self._ring: RingReader | None = None
        if not self._obj or lib.libbpf_get_error(self._obj):
            self._obj = None
            raise BpfUnavailable("libbpf could not open the compiled BPF object")
        try:
            events = lib.bpf_object__find_map_by_name(self._obj, b"events")
            lib.bpf_map__set_max_entries(events, ring_bytes)
            rodata = lib.bpf_object__find_map_by_name(self._obj, b".rodata")
            if rodata:
                offset = ctypes.c_uint32(_fork_child_pid_offset())
                lib.bpf_map__set_initial_value(rodata, ctypes.byref(offset), 4)
            err = lib.bpf_object__load(self._obj)
            if err:
                raise BpfUnavailable(
                    f"the kernel refused the BPF program ({_errno_text(err)}); is BPF "
                    "restricted here (lockdown, kernel.unprivileged_bpf_disabled, a "
                    "container)? UDSKIT_BPF_DEBUG=1 shows libbpf's log; or use --engine proxy"
                )
            prog = lib.bpf_object__next_program(self._obj, None)
            while prog:
                link = lib.bpf_program__attach(prog)
                code = lib.libbpf_get_error(link) if link else -errno.EINVAL
                if not link or code:
                    name = (lib.bpf_program__name(prog) or b"?").decode()
                    raise BpfUnavailable(
                        f"the kernel refused to attach {name} to its syscall tracepoint "
                        f"({_errno_text(code)}): use --engine proxy"
                    )
                self._links.append(link)
                prog = lib.bpf_object__next_program(self._obj, prog)
            self.socks_fd = self._map_fd(b"socks")
            self.counters_fd = self._map_fd(b"counters")
            self.procs_fd = self._map_fd(b"procs")
            self.traced_fd = self._map_fd(b"traced")
            self.calls_fd = self._map_fd(b"calls")

            self._ring = RingReader(self._map_fd(b"events"), ring_bytes, on_record)
        except BaseException:
            self.close()
            raise

    def _map_fd(self, name: bytes) -> int:
        m = self._lib.bpf_object__find_map_by_name(self._obj, name)
        fd = self._lib.bpf_map__fd(m) if m else -1
        if fd < 0:
            raise BpfUnavailable(f"the BPF object has no map {name.decode()}")
        return int(fd)

    # -- the map of watched descriptors ------------------------------------------------
    def watch(self, pid: int, fd: int, cookie: int, flags: int) -> None:
        key = (ctypes.c_uint32 * 2)(pid, fd)
        value = (ctypes.c_uint32 * 2)(cookie, flags)
        if self._lib.bpf_map_update_elem(self.socks_fd, key, value, 0) != 0:
            err = ctypes.get_errno()
            raise BpfUnavailable(
                f"cannot watch fd {fd} of pid {pid}: {_errno_text(err)} (too many sockets?)"
            )

    def watch_process(self, pid: int) -> None:
        """Tell us when `pid` exits (it holds watched descriptors)."""
        key = ctypes.c_uint32(pid)
        value = ctypes.c_uint32(1)
        self._lib.bpf_map_update_elem(self.procs_fd, ctypes.byref(key), ctypes.byref(value), 0)

    def trace(self, pid: int) -> None:
        """Record the unix connections `pid` (and what it forks) makes from now on."""
        key = ctypes.c_uint32(pid)
        value = ctypes.c_uint32(1)
        self._lib.bpf_map_update_elem(self.traced_fd, ctypes.byref(key), ctypes.byref(value), 0)
        self.watch_process(pid)

    def resume_call(self, pid: int, tid: int, call: bytes) -> bool:
        """Record, at its exit, a call thread `tid` entered before the program ran:
        `call` is a struct call as the enter program would have made it. False when
        the thread has entered a call since (it is seen then): never overwritten."""
        key = ctypes.c_uint64((pid << 32) | tid)
        value = ctypes.create_string_buffer(call, len(call))
        return bool(self._lib.bpf_map_update_elem(self.calls_fd, ctypes.byref(key), value, 1) == 0)

    def forget_call(self, pid: int, tid: int, call: bytes) -> None:
        """Undo `resume_call` if the entry is still the one it made (the thread left
        that call before the entry was made: it must not be used at another exit)."""
        key = ctypes.c_uint64((pid << 32) | tid)
        value = ctypes.create_string_buffer(len(call))
        found = self._lib.bpf_map_lookup_elem(self.calls_fd, ctypes.byref(key), value) == 0
        if found and value.raw == call:
            self._lib.bpf_map_delete_elem(self.calls_fd, ctypes.byref(key))

    def unwatch(self, pid: int, fd: int) -> None:
        key = (ctypes.c_uint32 * 2)(pid, fd)
        self._lib.bpf_map_delete_elem(self.socks_fd, key)

    def counter(self, index: int) -> int:
        key = ctypes.c_uint32(index)
        value = ctypes.c_uint64(0)
        self._lib.bpf_map_lookup_elem(self.counters_fd, ctypes.byref(key), ctypes.byref(value))
        return int(value.value)

    # -- the ring buffer ----------------------------------------------------------------
    def poll(self, timeout_ms: int) -> int:
        """Wait up to `timeout_ms` for records and pass each to `on_record`."""
        assert self._ring is not None
        return self._ring.poll(timeout_ms)

    def consume(self) -> int:
        """Pass every record still in the ring buffer on, without waiting."""
        return self._ring.drain() if self._ring is not None else 0

    def set_handler(self, handler: Callable[[memoryview, int, int], None]) -> None:
        """See RingReader.set_handler."""
        assert self._ring is not None
        self._ring.set_handler(handler)

    def detach(self) -> None:
        """Stop recording: the program no longer runs, the ring can be drained."""
        links, self._links = self._links, []
        for link in links:
            self._lib.bpf_link__destroy(link)

    def close(self) -> None:
        self.detach()
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        if self._obj is not None:
            self._lib.bpf_object__close(self._obj)
            self._obj = None


@final
class RingReader:
    """A BPF ring buffer read straight from its memory mapping.

    Why not libbpf's ring_buffer__poll: it calls back into Python once per record, and
    each ctypes callback takes and releases the GIL; at redis-benchmark rates that
    alone was most of the reader's time. The layout is the kernel's ABI
    (kernel/bpf/ringbuf.c): a page with the consumer position (ours to write), then
    the producer position page and the data pages, the data mapped twice in a row so
    that a record that wraps around is contiguous. Each record has an 8-byte header:
    its length (with BUSY and DISCARD bits) and a page offset; records are 8-byte
    aligned. x86 and arm64 loads of aligned 8-byte words are atomic, and the kernel
    publishes a record's header before it moves the producer position on.
    """

    def __init__(self, map_fd: int, size: int, on_record: Callable[[memoryview], None]):
        import mmap
        import select

        page = mmap.PAGESIZE
        self._size = size
        self._mask = size - 1
        self._on_record = on_record
        self._at_handler: Callable[[memoryview, int, int], None] | None = None
        self._consumer = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._producer = mmap.mmap(
            map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page
        )
        self._data = memoryview(self._producer)[page:]
        self._prod_view = memoryview(self._producer)[:8].cast("Q")
        self._cons_view = memoryview(self._consumer)[:8].cast("Q")
        self._epoll = select.epoll()
        self._epoll.register(map_fd, select.EPOLLIN)

    def poll(self, timeout_ms: int) -> int:
        got = self.drain()
        if got:
            return got
        try:
            self._epoll.poll(timeout_ms / 1000)
        except InterruptedError:
            return 0
        return self.drain()

    def drain(self) -> int:
        """Hand every committed record to the handler; returns how many."""
        data = self._data
        cons_view = self._cons_view
        cons = cons_view[0]
        prod = self._prod_view[0]
        mask = self._mask
        handler = self._at_handler
        if handler is None:
            on_record = self._on_record

            def handler(buf: memoryview, at: int, size: int) -> None:
                on_record(buf[at : at + size])

        header_of = _U32.unpack_from
        n = 0
        while cons < prod:
            at = cons & mask
            (header,) = header_of(data, at)
            if header & _BUSY:
                break
            length = header & ~(_BUSY | _DISCARD)
            if not header & _DISCARD:
                handler(data, at + _RINGBUF_HEADER, length)
                n += 1
            cons += (length + _RINGBUF_HEADER + 7) & ~7
            cons_view[0] = cons  # the room is free again as soon as we are past it
        return n

    def set_handler(self, handler: Callable[[memoryview, int, int], None]) -> None:
        """Take records as (the ring's memory, offset, size) instead, sparing a slice
        per record: the reader's hot path."""
        self._at_handler = handler

    def close(self) -> None:
        self._epoll.close()
        self._prod_view.release()
        self._cons_view.release()
        self._data.release()
        self._producer.close()
        self._consumer.close()
