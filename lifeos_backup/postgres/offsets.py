"""Data offsets for a custom-format archive that pg_dump wrote into a pipe.

pg_dump records where each table's data starts in the table of contents only when it can seek
back in its output. Dumped into a pipe (as we dump, to compress on the fly) every entry says
"position not set", and `pg_restore --jobs` then makes each worker read through all the data in
front of the block it wants: with one big table first, every other table waits for a scan of it
(measured: about 3 s of extra pg_restore CPU on the 1.3 GB benchmark database, docs/decisions.md).

The restore workspace holds a seekable, decompressed copy, so the offsets are computed here and
written into that copy exactly where and how pg_dump writes them when dumping to a file (a test
compares the bytes). Uncompressed COPY data never contains a zero byte, and a data block ends with
a zero-length chunk, i.e. five zero bytes; each block found that way is checked against the table
of contents before anything is written.

Best effort by design: an archive version not listed here, compressed data, large objects or
anything unexpected leaves the file as it is; pg_restore is then exactly as correct, only slower.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lifeos_backup.streams import CHUNK

log = logging.getLogger(__name__)

MAGIC = b"PGDMP"
ARCH_CUSTOM = 1
BLK_DATA = 1
OFFSET_NOT_SET, OFFSET_SET, OFFSET_NO_DATA = 1, 2, 3
MAX_STRING = 1 << 30  # a TOC string longer than this means we are not reading what we think
BLOCK_END = b"\0" * 5  # a zero-length chunk: sign byte 0 and a 4-byte zero length
# Archive versions (major, minor) whose header and TOC layout are read below (PostgreSQL 12-16).
SUPPORTED = {(1, 12), (1, 13), (1, 14), (1, 15)}


class Unsupported(Exception):
    """The archive is not one this module may patch; it is left alone."""


@dataclass
class _Entry:
    dump_id: int
    desc: str
    field: int  # position of the offset flag byte in the file
    state: int


class _Reader:
    """Reads pg_dump's integers and strings (sign byte + little-endian magnitude) from a file."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.int_size = 4

    def read(self, n: int) -> bytes:
        data = self.handle.read(n)
        if len(data) != n:
            raise Unsupported("archive ends early")
        return data

    def byte(self) -> int:
        return self.read(1)[0]

    def integer(self) -> int:
        sign = self.byte()
        value = int.from_bytes(self.read(self.int_size), "little")
        return -value if sign else value

    def string(self) -> bytes | None:
        length = self.integer()
        if length > MAX_STRING:
            raise Unsupported(f"implausible string length {length}")
        return None if length < 0 else self.read(length)


def _read_header(reader: _Reader) -> tuple[tuple[int, int], int]:
    """Version and offset size; raises Unsupported unless this module knows the layout."""
    if reader.read(5) != MAGIC:
        raise Unsupported("not a pg_dump archive")
    version = (reader.byte(), reader.byte())
    reader.byte()  # revision
    if version not in SUPPORTED:
        raise Unsupported(f"archive version {version[0]}.{version[1]}")
    reader.int_size, offset_size = reader.byte(), reader.byte()
    if reader.int_size not in (4, 8) or offset_size != 8:
        raise Unsupported(f"integer size {reader.int_size}, offset size {offset_size}")
    if reader.byte() != ARCH_CUSTOM:
        raise Unsupported("not the custom format")
    compressed = reader.byte() if version >= (1, 15) else reader.integer()
    if compressed != 0:
        raise Unsupported("compressed by pg_dump")
    for _ in range(7):  # creation time: sec, min, hour, day, month, year, isdst
        reader.integer()
    for _ in range(3):  # database name, server version, pg_dump version
        reader.string()
    return version, offset_size


def _read_toc(reader: _Reader, version: tuple[int, int], offset_size: int) -> dict[int, _Entry]:
    """The TOC entries and where each one's data offset field is."""
    entries: dict[int, _Entry] = {}
    for _ in range(reader.integer()):
        dump_id = reader.integer()
        reader.integer()  # has a data dumper
        reader.string(), reader.string()  # catalog id: table oid, oid
        reader.string()  # tag
        desc = (reader.string() or b"").decode(errors="replace")
        reader.integer()  # section
        for _ in range(5):  # definition, drop statement, copy statement, namespace, tablespace
            reader.string()
        if version >= (1, 14):
            reader.string()  # table access method
        reader.string()  # owner
        reader.string()  # "false" (WITH OIDS, no longer used)
        while reader.string() is not None:  # dependencies
            pass
        field = reader.handle.tell()
        state = reader.byte()
        reader.read(offset_size)
        if state not in (OFFSET_NOT_SET, OFFSET_SET, OFFSET_NO_DATA):
            raise Unsupported(f"unexpected offset state {state} of entry {dump_id}")
        entries[dump_id] = _Entry(dump_id, desc, field, state)
    return entries


class _Scanner:
    """Forward-only reads of the data part, one chunk at a time, without copying chunks.

    Not mmap: the pages of a mapped file count as this process's resident memory, and a worker
    (restore drills run in one) must stay small whatever the size of the dump.
    """

    def __init__(self, handle: BinaryIO, start: int) -> None:
        self.handle = handle
        self.base = start  # file position of self.chunk[0]
        self.chunk = b""

    def _next(self) -> bool:
        self.base += len(self.chunk)
        self.chunk = self.handle.read(CHUNK)
        return bool(self.chunk)

    def _reach(self, pos: int) -> bool:
        """Make the current chunk the one holding `pos`; False at the end of the file."""
        if pos < self.base:
            raise Unsupported("scanner moved backwards")
        while pos >= self.base + len(self.chunk):
            if not self._next():
                return False
        return True

    def take(self, pos: int, n: int) -> bytes:
        """The n bytes at `pos` (fewer at the end of the file)."""
        if not self._reach(pos):
            return b""
        out = self.chunk[pos - self.base : pos - self.base + n]
        while len(out) < n and self._next():  # the bytes span two chunks
            out += self.chunk[: n - len(out)]
        return out

    def find(self, pattern: bytes, pos: int) -> int:
        """File position of the next `pattern` at or after `pos`, or -1."""
        if not self._reach(pos):
            return -1
        keep = len(pattern) - 1
        while True:
            found = self.chunk.find(pattern, pos - self.base)
            if found >= 0:
                return self.base + found
            tail_at = max(pos - self.base, len(self.chunk) - keep)
            tail, tail_pos = self.chunk[tail_at:], self.base + tail_at
            if not self._next():
                return -1
            seam = (tail + self.chunk[:keep]).find(pattern)  # a match across the boundary
            if seam >= 0:
                return tail_pos + seam
            pos = self.base


def _find_blocks(
    handle: BinaryIO, start: int, int_size: int, entries: dict[int, _Entry]
) -> dict[int, int]:
    """dump id -> block position, for the TABLE DATA blocks from the start of the data on."""
    scanner = _Scanner(handle, start)
    found: dict[int, int] = {}
    pos = start
    while header := scanner.take(pos, 2 + int_size):
        if header[0] != BLK_DATA:
            break  # large objects: binary data, their end cannot be found this way
        if len(header) < 2 + int_size or header[1] != 0:
            raise Unsupported(f"unexpected block header at {pos}")
        dump_id = int.from_bytes(header[2:], "little")
        entry = entries.get(dump_id)
        if entry is None or entry.desc != "TABLE DATA" or dump_id in found:
            raise Unsupported(f"unexpected data block {dump_id} at {pos}")
        end = scanner.find(BLOCK_END, pos + len(header))
        if end < 0:
            raise Unsupported(f"data block {dump_id} has no end")
        found[dump_id] = pos
        pos = end + len(BLOCK_END)
    return found


class _Tee:
    """A readable stream that copies everything read through it to `out`."""

    def __init__(self, src: BinaryIO, out: BinaryIO, tick: Callable[[], None]) -> None:
        self.src, self.out, self.tick = src, out, tick
        self.pos = 0

    def read(self, n: int = -1) -> bytes:
        data = self.src.read(n)
        self.out.write(data)
        self.pos += len(data)
        if len(data) >= CHUNK:
            self.tick()
        return data

    def tell(self) -> int:
        return self.pos


def find_offsets(stream: BinaryIO) -> tuple[dict[int, int], int]:
    """{file position of an offset field: data block position}, and the offset size."""
    reader = _Reader(stream)
    version, offset_size = _read_header(reader)
    entries = _read_toc(reader, version, offset_size)
    found = _find_blocks(stream, stream.tell(), reader.int_size, entries)
    return {entries[dump_id].field: pos for dump_id, pos in found.items()}, offset_size


def _patch(handle: BinaryIO, fields: dict[int, int], offset_size: int) -> None:
    """Write each offset as pg_dump does on a seekable output: flag "set" + little-endian."""
    for field, position in fields.items():
        handle.seek(field)
        handle.write(bytes([OFFSET_SET]) + position.to_bytes(offset_size, "little"))
    handle.seek(0, 2)


def copy_with_offsets(src: BinaryIO, out: BinaryIO, tick: Callable[[], None]) -> int:
    """Copy a pipe-written archive to the seekable `out`, adding its data offsets on the way.

    One pass: the header and TOC are parsed and the data blocks found while the bytes go by.
    Returns how many offsets were set (0: the archive was copied unchanged).
    """
    tee = _Tee(src, out, tick)
    try:
        fields, offset_size = find_offsets(tee)  # type: ignore[arg-type]
    except (Unsupported, ValueError) as exc:
        log.info("data offsets not added: %s", exc)
        fields, offset_size = {}, 0
    while tee.read(CHUNK):
        pass
    _patch(out, fields, offset_size)
    return len(fields)


def add_data_offsets(path: Path) -> int:
    """Add the data offsets to an archive file in place; returns how many were set."""
    with open(path, "r+b") as handle:
        try:
            fields, offset_size = find_offsets(handle)
        except (Unsupported, ValueError) as exc:
            log.info("data offsets not added to %s: %s", path.name, exc)
            return 0
        _patch(handle, fields, offset_size)
    return len(fields)
