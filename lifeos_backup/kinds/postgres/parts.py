"""A PostgreSQL archive in parts: pg_dump's custom archive, then COPY slices of big tables.

Part 0 is an ordinary custom-format archive of the whole schema and of the data of every table
not carried by a slice (rows.py); every other part is one slice of one big table, in COPY's
binary or text format. Each part is compressed with zstd on its own and the archive file is the
parts one after the other; the manifest records where each starts, and for a slice its table,
columns, rows and format (docs/postgres.md shows how to restore one by hand). The parts are
dumped side by side from one snapshot and restored side by side. Archives of earlier versions
are read too: one part (the whole file), or several pg_dump archives (part 0 with the schema,
the others `--data-only`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from lifeos_backup.core.fsutil import FILE_MODE
from lifeos_backup.core.settings import get_settings
from lifeos_backup.formats.crypto import open_plain
from lifeos_backup.formats.manifest import Manifest
from lifeos_backup.formats.streams import CHUNK, ReadStream, decompressor
from lifeos_backup.kinds.postgres.rows import Slice


@dataclass
class Part:
    """One part: where its compressed bytes lie, how long it is plain, what it holds.

    `offset`/`size` count bytes of the compressed stream (before encryption, if any). A pg_dump
    part lists in `tables` the schema.name of the tables whose data it holds (part 0: every
    table not in another part); a slice part has `copy` and its one table.
    """

    offset: int
    size: int
    dump_bytes: int
    tables: list[str] = field(default_factory=list)
    copy: Slice | None = None

    def as_fact(self) -> dict[str, Any]:
        fact = asdict(self)
        if self.copy is None:
            del fact["copy"]
        return fact


def parts_of(manifest: Manifest) -> list[Part]:
    """The manifest's parts; an archive from before parts is one part spanning the whole file."""
    facts = manifest.facts.get("parts")
    if facts:
        return [
            Part(**{**fact, "copy": Slice(**fact["copy"]) if fact.get("copy") else None})
            for fact in facts
        ]
    size = manifest.archive.size if manifest.encryption is None else -1
    return [Part(0, size, int(manifest.facts.get("dump_bytes", -1)))]


class Window(ReadStream):
    """Reads `size` bytes of `src` from where it stands (all of it when size < 0), no further.

    zstd must not read past the end of its part into the next one.
    """

    def __init__(self, src: BinaryIO, size: int) -> None:
        self._src = src
        self._left = size

    def read(self, size: int = -1) -> bytes:
        if self._left < 0:
            return self._src.read(size)
        if size < 0 or size > self._left:
            size = self._left
        data = self._src.read(size)
        self._left -= len(data)
        return data

    def tell(self) -> int:
        return self._src.tell()


@dataclass
class PartSource:
    """Where a restore reads one part's compressed bytes: a file, from `offset`, `size` long."""

    path: Path
    offset: int
    size: int


def part_sources(archive: Path, manifest: Manifest, parts: Sequence[Part], work: Path) -> list[
    PartSource
]:
    """Each part as something pg_restore processes can read side by side.

    Plain archives are read in place. An encrypted archive is one age stream, so it is decrypted
    once, each part into its own file in the restore's private workspace (still compressed: about
    the archive's size, never the dump's).
    """
    if manifest.encryption is None:
        return [PartSource(archive, part.offset, part.size) for part in parts]
    sources: list[PartSource] = []
    with open(archive, "rb") as raw:
        plain = open_plain(raw, manifest, get_settings().encryption_identity_file)
        position = 0
        for number, part in enumerate(parts):  # in archive order, as the dump wrote them
            _skip(plain, part.offset - position)
            path = work / f"part-{number}.zst"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            with os.fdopen(fd, "wb") as copy:
                _copy(Window(plain, part.size), copy)  # type: ignore[arg-type]
            sources.append(PartSource(path, 0, -1))
            position = part.offset + max(part.size, 0)
        while plain.read(CHUNK):  # the age stream authenticates its last chunk at its end
            pass
    return sources


@contextlib.contextmanager
def open_part(source: PartSource, algorithm: str) -> Iterator[BinaryIO]:
    """The plain (decompressed) dump bytes of one part."""
    with open(source.path, "rb") as raw:
        raw.seek(source.offset)
        yield decompressor(Window(raw, source.size), algorithm)  # type: ignore[arg-type]


@contextlib.contextmanager
def open_first_part(
    archive: Path, manifest: Manifest, identity_file: Path | None
) -> Iterator[BinaryIO]:
    """Part 0's plain dump bytes straight from the archive, decrypted (with the identity in
    `identity_file`) only as far as they are read: nothing is copied to disk, so reading its
    head costs the head, not the archive."""
    part = parts_of(manifest)[0]
    with open(archive, "rb") as raw:
        if manifest.encryption is None:
            raw.seek(part.offset)
            src: BinaryIO = raw
        else:
            src = open_plain(raw, manifest, identity_file)
            _skip(src, part.offset)
        yield decompressor(Window(src, part.size), manifest.compression.algorithm)  # type: ignore[arg-type]


def _skip(src: BinaryIO, n: int) -> None:
    while n > 0 and (data := src.read(min(n, CHUNK))):
        n -= len(data)


def _copy(src: BinaryIO, out: BinaryIO) -> None:
    while chunk := src.read(CHUNK):
        out.write(chunk)
    out.flush()
