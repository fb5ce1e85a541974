"""The head of a custom-format archive: its header and table of contents, without the data.

A parallel `pg_restore --jobs N --section=post-data` (indexes, keys, constraints) needs a file it
can seek in, but no table data. Instead of writing the whole decompressed dump to disk, the
restore writes only this head (a few kB to a few MB), read from the stream by the layout below.

Best effort by design: an archive version not listed here, or anything unexpected, makes the
caller copy the whole part instead; pg_restore reads that just as correctly.
"""

from __future__ import annotations

import logging
from typing import BinaryIO

from lifeos_backup.formats.streams import CHUNK

log = logging.getLogger(__name__)

MAGIC = b"PGDMP"
ARCH_CUSTOM = 1
OFFSET_NOT_SET, OFFSET_SET, OFFSET_NO_DATA = 1, 2, 3
MAX_STRING = 1 << 30  # a TOC string longer than this means we are not reading what we think
# Archive versions (major, minor) whose header and TOC layout are read below (PostgreSQL 12-16).
SUPPORTED = {(1, 12), (1, 13), (1, 14), (1, 15)}


class Unsupported(Exception):
    """The archive is not one whose layout this module knows."""


class _Reader:
    """Reads pg_dump's integers and strings (sign byte + little-endian magnitude) from a file."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.int_size = 4
        self.offset_size = 8
        self.version = (0, 0)

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


def _read_header(reader: _Reader) -> None:
    """Version and integer sizes; raises Unsupported unless this module knows the layout."""
    if reader.read(5) != MAGIC:
        raise Unsupported("not a pg_dump archive")
    reader.version = (reader.byte(), reader.byte())
    reader.byte()  # revision
    if reader.version not in SUPPORTED:
        raise Unsupported(f"archive version {reader.version[0]}.{reader.version[1]}")
    reader.int_size, reader.offset_size = reader.byte(), reader.byte()
    if reader.int_size not in (4, 8) or reader.offset_size != 8:
        raise Unsupported(f"integer size {reader.int_size}, offset size {reader.offset_size}")
    if reader.byte() != ARCH_CUSTOM:
        raise Unsupported("not the custom format")
    if reader.version >= (1, 15):  # compression: algorithm byte, or a level before 1.15
        reader.byte()
    else:
        reader.integer()
    for _ in range(7):  # creation time: sec, min, hour, day, month, year, isdst
        reader.integer()
    for _ in range(3):  # database name, server version, pg_dump version
        reader.string()


def _read_toc(reader: _Reader) -> int:
    """Read through the table of contents; returns how many entries it has."""
    count = reader.integer()
    for _ in range(count):
        dump_id = reader.integer()
        reader.integer()  # has a data dumper
        reader.string(), reader.string()  # catalog id: table oid, oid
        reader.string()  # tag
        reader.string()  # desc
        reader.integer()  # section
        for _ in range(5):  # definition, drop statement, copy statement, namespace, tablespace
            reader.string()
        if reader.version >= (1, 14):
            reader.string()  # table access method
        reader.string()  # owner
        reader.string()  # "false" (WITH OIDS, no longer used)
        while reader.string() is not None:  # dependencies
            pass
        state = reader.byte()
        reader.read(reader.offset_size)
        if state not in (OFFSET_NOT_SET, OFFSET_SET, OFFSET_NO_DATA):
            raise Unsupported(f"unexpected offset state {state} of entry {dump_id}")
    return count


class _Tee:
    """A readable stream that copies everything read through it to `out`."""

    def __init__(self, src: BinaryIO, out: BinaryIO) -> None:
        self.src, self.out = src, out

    def read(self, n: int = -1) -> bytes:
        data = self.src.read(n)
        self.out.write(data)
        return data


def copy_head(src: BinaryIO, out: BinaryIO, *, whole_if_unknown: bool = True) -> bool:
    """Copy the archive's header and table of contents from `src` to `out`, and stop there.

    True when only the head was copied; False when the layout is unknown here, in which case
    all of `src` is copied (pg_restore reads that as well, only more slowly), or, without
    `whole_if_unknown`, nothing more than was read to find that out (`out` is then of no use).
    """
    tee = _Tee(src, out)
    try:
        reader = _Reader(tee)  # type: ignore[arg-type]
        _read_header(reader)
        _read_toc(reader)
        return True
    except (Unsupported, ValueError) as exc:
        log.info("table of contents not cut out: %s", exc)
        while whole_if_unknown and tee.read(CHUNK):
            pass
        return False
