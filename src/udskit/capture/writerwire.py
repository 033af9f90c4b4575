"""Pure: the records on the pipe from the proxy to the pcapng writer process.

The proxy appends records to a buffer (`PcapngWriter` in udskit.capture.pcapwriter,
and the tap's lean per-chunk path); the writer process (udskit.capture.writerproc)
decodes them with `RecordDecoder` and feeds a `PcapngEncoder`. A record is a kind
byte, then:
  DATA  : c2s (1 byte), conn id, real length, recorded length, time_ns; the bytes
  OPEN  : conn id, time_ns, JSON length; JSON {path, type, pid, uid, gid, command}
  CLOSE : first (0 unknown, 1 c2s, 2 s2c), conn id, time_ns
  FDS   : as OPEN; JSON {direction, fds}: descriptors passed with the next chunk
`shed_records` decides what a proxy whose writer fell behind keeps of them.
"""

from __future__ import annotations

import errno
import json
import os
import struct
from dataclasses import dataclass
from typing import Final, final

from udskit.capture.pcapng import PcapngEncoder
from udskit.errors import UdskitError
from udskit.socktype import SocketType
from udskit.tap import ClientInfo, Direction

__all__ = [
    "CLOSE",
    "DATA",
    "FLUSH_BYTES",
    "KIND_CLOSE",
    "KIND_DATA",
    "KIND_FDS",
    "KIND_OPEN",
    "OPEN",
    "RecordDecoder",
    "Shed",
    "cannot_write",
    "close_record",
    "fds_record",
    "open_record",
    "shed_records",
]

#: Bytes gathered before one write(2): 256 KiB is a guess that keeps syscalls rare at
#: redis-benchmark rates while a killed dump loses little; see benchmarks/dump.py.
FLUSH_BYTES: Final = 256 * 1024
DATA: Final = struct.Struct("<BBIIIQ")
OPEN: Final = struct.Struct("<BIQI")
CLOSE: Final = struct.Struct("<BBIQ")
KIND_DATA: Final = 1
KIND_OPEN: Final = 2
KIND_CLOSE: Final = 3
KIND_FDS: Final = 4
_FIRST_CODE: Final = {None: 0, Direction.C2S: 1, Direction.S2C: 2}
_FIRST: Final = (None, Direction.C2S, Direction.S2C)


def cannot_write(path: str, exc: OSError) -> UdskitError:
    """The one line a failed write of the capture file is reported with."""
    return UdskitError(f"cannot write {path}: {os.strerror(exc.errno or errno.EIO).lower()}")


def open_record(
    conn: int,
    path: str,
    sock_type: SocketType,
    client: ClientInfo,
    time_ns: int,
    midstream: bool = False,
) -> bytes:
    meta = json.dumps(
        {
            "midstream": midstream,
            "path": path,
            "type": sock_type.value,
            "pid": client.pid,
            "uid": client.uid,
            "gid": client.gid,
            "command": client.command,
        }
    ).encode()
    return OPEN.pack(KIND_OPEN, conn, time_ns, len(meta)) + meta


def close_record(conn: int, first: Direction | None, time_ns: int) -> bytes:
    return CLOSE.pack(KIND_CLOSE, _FIRST_CODE[first], conn, time_ns)


def fds_record(conn: int, direction: Direction, kinds: tuple[str, ...], time_ns: int) -> bytes:
    """Descriptors passed with the next chunk of `conn` in `direction`."""
    meta = json.dumps({"direction": direction.value, "fds": list(kinds)}).encode()
    return OPEN.pack(KIND_FDS, conn, time_ns, len(meta)) + meta


@final
@dataclass(frozen=True, slots=True)
class Shed:
    """What `shed_records` left out."""

    cut_chunks: int  #: chunks kept as their lengths only
    cut_bytes: int  #: the bytes those chunks had
    dropped_chunks: int  #: chunks left out altogether


def shed_records(records: bytes | bytearray, keep_lengths: bool) -> tuple[bytearray, Shed]:
    """The records with the bytes of every chunk left out (keep_lengths: each chunk
    stays as its header, with recorded length 0) or with the chunks left out; opens,
    closes and passed descriptors are always kept."""
    kept = bytearray()
    view = memoryview(records)
    pos, size = 0, len(records)
    cut_chunks = cut_bytes = dropped = 0
    while pos < size:
        kind = records[pos]
        if kind == KIND_DATA:
            k, c2s, conn, length, caplen, t = DATA.unpack_from(records, pos)
            if keep_lengths:
                kept += DATA.pack(k, c2s, conn, length, 0, t)
                cut_chunks += 1
                cut_bytes += caplen
            else:
                dropped += 1
            pos += DATA.size + caplen
        elif kind in (KIND_OPEN, KIND_FDS):
            meta_len = OPEN.unpack_from(records, pos)[3]
            end = pos + OPEN.size + meta_len
            kept += view[pos:end]
            pos = end
        else:
            kept += view[pos : pos + CLOSE.size]
            pos += CLOSE.size
    view.release()
    return kept, Shed(cut_chunks, cut_bytes, dropped)


@final
class RecordDecoder:
    """Pipe records -> encoder calls (records may be split
    across reads; an incomplete tail waits for the next read, or is dropped at EOF)."""

    def __init__(self, encoder: PcapngEncoder) -> None:
        self.encoder = encoder
        self.pending = b""

    def feed(self, chunk: bytes) -> None:
        buf = self.pending + chunk if self.pending else chunk
        view = memoryview(buf)
        pos, size = 0, len(buf)
        encoder = self.encoder
        data_size, open_size, close_size = DATA.size, OPEN.size, CLOSE.size
        while pos < size:
            kind = buf[pos]
            if kind == KIND_DATA:
                if pos + data_size > size:
                    break
                _k, c2s, conn, length, caplen, t = DATA.unpack_from(buf, pos)
                end = pos + data_size + caplen
                if end > size:
                    break
                direction = Direction.C2S if c2s else Direction.S2C
                encoder.data(conn, direction, view[pos + data_size : end], length, t)
                pos = end
            elif kind == KIND_CLOSE:
                if pos + close_size > size:
                    break
                _k, first, conn, t = CLOSE.unpack_from(buf, pos)
                encoder.closed(conn, _FIRST[first], t)
                pos += close_size
            elif kind in (KIND_OPEN, KIND_FDS):
                # The same header and a JSON body: who connected, or what was passed.
                if pos + open_size > size:
                    break
                _k, conn, t, meta_len = OPEN.unpack_from(buf, pos)
                end = pos + open_size + meta_len
                if end > size:
                    break
                meta = json.loads(bytes(view[pos + open_size : end]))
                if kind == KIND_OPEN:
                    client = ClientInfo(meta["pid"], meta["uid"], meta["gid"], meta["command"])
                    encoder.opened(
                        conn,
                        meta["path"],
                        SocketType(meta["type"]),
                        client,
                        t,
                        bool(meta.get("midstream")),
                    )
                else:
                    encoder.fds(conn, Direction(meta["direction"]), tuple(meta["fds"]), t)
                pos = end
            else:
                raise ValueError(f"bad record kind {kind} at {pos}")
        view.release()
        self.pending = buf[pos:]
