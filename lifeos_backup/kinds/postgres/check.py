"""Verifying a PostgreSQL archive without a database: checksum, then the dump's own structure.

1. The archive's size and SHA-256 against the manifest (a cheap read of the compressed file).
2. Every part of the archive (parts.py) decompressed (zstd checks its frame checksum), the head
   of each pg_dump part fed to `pg_restore --list --verbose`: each table of contents must be
   readable, together with the COPY slices they must hold every table of the manifest with its
   definition and its data, and each part's decompressed length must be the length dumped. (A
   slice's rows are not recounted here: zstd's checksum already proves its bytes are the ones
   counted; the restore compares the rows the server loaded.)
"""

from __future__ import annotations

import functools
import os
import subprocess
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

import zstandard

from lifeos_backup.core import procs
from lifeos_backup.core.errors import CommandFailed, VerificationFailed
from lifeos_backup.core.progress import Progress, ProgressFn
from lifeos_backup.core.settings import get_settings
from lifeos_backup.formats.crypto import open_plain
from lifeos_backup.formats.manifest import Manifest, require_archive_match
from lifeos_backup.formats.streams import CHUNK, decompressor, sha256_file
from lifeos_backup.kinds.postgres.parts import Part, Window, parts_of
from lifeos_backup.kinds.postgres.toc import TocEntry, missing_tables, parse_toc
from lifeos_backup.kinds.postgres.tools import Tool

_STREAM_ERRORS = (zstandard.ZstdError, EOFError)
_HINT = "the backup is not good; use another one"


def manifest_tables(manifest: Manifest) -> list[tuple[str, str]]:
    """(schema, name) of every table the manifest recorded."""
    return [(t["schema"], t["name"]) for t in manifest.facts.get("tables", [])]


def verify_checksum(archive: Path, manifest: Manifest, progress: ProgressFn) -> None:
    """Size and SHA-256 of the archive file against the manifest."""
    progress(Progress("checksum", bytes_total=manifest.archive.size))
    digest, size = sha256_file(str(archive))
    require_archive_match(manifest, archive.name, size, digest)
    progress(Progress("checksum", bytes_done=size, bytes_total=size))


def read_tocs(
    archive: Path, manifest: Manifest, pg_restore: Tool, progress: ProgressFn
) -> list[str]:
    """Decompress every part, feeding each to `pg_restore --list --verbose`; their outputs.

    pg_restore stops reading after the table of contents; the rest is still decompressed, so
    that a damaged tail is found too, and each part's length compared with what pg_dump wrote.
    The parts of a plain archive are read side by side (one per core), those of an encrypted one
    (a single age stream) one after the other.
    """
    parts = parts_of(manifest)
    report = Progress("reading table of contents", bytes_total=manifest.archive.size)
    position = 0
    for number, part in enumerate(parts):
        if part.offset != position:
            raise _damaged(archive, f"part {number} is not where the manifest says",
                           f"offset {part.offset}, expected {position}")
        position += part.size
    try:
        if manifest.encryption is None and len(parts) > 1:
            if position != manifest.archive.size:
                raise _damaged(archive, "its parts do not add up to its size")
            # One thread per core, not per part: a database of many big tables has many parts.
            workers = min(len(parts), os.cpu_count() or 2)
            with ThreadPoolExecutor(workers, thread_name_prefix="verify") as pool:
                jobs = [
                    pool.submit(_read_alone, archive, manifest, pg_restore, number, part)
                    for number, part in enumerate(parts)
                ]
                return [job.result() for job in jobs]
        with open(archive, "rb") as raw:
            key = get_settings().encryption_identity_file
            plain = open_plain(raw, manifest, key)  # decrypts an encrypted archive
            tick = functools.partial(_report, progress, report, raw)
            listings = [
                _check_part(archive, manifest, pg_restore, n, part, Window(plain, part.size), tick)
                for n, part in enumerate(parts)
            ]
            if plain.read(1):
                raise _damaged(archive, "it has bytes after its last part")
            return listings
    except _STREAM_ERRORS as exc:
        raise _damaged(archive, "it is corrupt", f"{type(exc).__name__}: {exc}") from exc


def _read_alone(
    archive: Path, manifest: Manifest, pg_restore: Tool, number: int, part: Part
) -> str:
    with open(archive, "rb") as raw:
        raw.seek(part.offset)
        window = Window(raw, part.size)
        return _check_part(archive, manifest, pg_restore, number, part, window, lambda: None)


def _check_part(
    archive: Path,
    manifest: Manifest,
    pg_restore: Tool,
    number: int,
    part: Part,
    window: Window,
    tick: Callable[[], None],
) -> str:
    """One part: its table of contents (none for a slice), all of it decompressed, its length
    as dumped."""
    if part.copy is not None:
        stream = decompressor(window, manifest.compression.algorithm)  # type: ignore[arg-type]
        text, length = "", _feed(stream, None, tick)  # zstd checks the frame's checksum
    else:
        text, length = _list_part(window, manifest, pg_restore, tick)
    if window.read(1):
        raise _damaged(archive, f"part {number} has bytes after its zstd frame")
    if part.dump_bytes >= 0 and length != part.dump_bytes:
        raise _damaged(
            archive, f"part {number} decompresses to {length} bytes",
            f"{part.dump_bytes} bytes were dumped",
        )
    return text


def _damaged(archive: Path, what: str, detail: str = "") -> VerificationFailed:
    return VerificationFailed(f"archive {archive.name}: {what}", detail, _HINT)


def _list_part(
    window: Window, manifest: Manifest, pg_restore: Tool, tick: Callable[[], None]
) -> tuple[str, int]:
    """`pg_restore --list --verbose` of one part, and the part's decompressed length."""
    args = [pg_restore.path, "--list", "--verbose"]
    with tempfile.TemporaryFile() as listing:
        try:
            with procs.spawn(args, stdin=subprocess.PIPE, stdout=listing) as proc:
                assert proc.stdin is not None
                stream = decompressor(window, manifest.compression.algorithm)  # type: ignore[arg-type]
                length = _feed(stream, proc.stdin, tick)
        except CommandFailed as exc:
            raise VerificationFailed(
                "the dump's table of contents is unreadable", exc.detail, _HINT
            ) from exc
        listing.seek(0)
        return listing.read().decode(errors="replace"), length


def _report(progress: ProgressFn, report: Progress, raw: IO[bytes]) -> None:
    report.bytes_done = raw.tell()
    progress(report)


def _feed(stream: IO[bytes], sink: IO[bytes] | None, tick: Callable[[], None]) -> int:
    """Copy `stream` into `sink` (if any) until the reader hangs up, then read `stream` to its
    end; its length."""
    length = 0
    while chunk := stream.read(CHUNK):
        length += len(chunk)
        if sink is not None:
            try:
                sink.write(chunk)
            except BrokenPipeError:  # pg_restore --list is done after the table of contents
                sink = None
        tick()
    return length


def check_toc(entries: list[TocEntry], manifest: Manifest) -> None:
    """Every table of the manifest must be in the archive with its definition and its data."""
    if not entries:
        raise VerificationFailed("the dump's table of contents is empty", hint=_HINT)
    sliced = {(p.copy.schema, p.copy.name) for p in parts_of(manifest) if p.copy is not None}
    missing = missing_tables(entries, manifest_tables(manifest), sliced)
    if missing:
        raise VerificationFailed(
            "the dump lacks tables listed in the manifest",
            f"{len(missing)} missing: {', '.join(missing[:10])}",
            _HINT,
        )


def check_dump(
    archive: Path, manifest: Manifest, pg_restore: Tool, progress: ProgressFn
) -> list[TocEntry]:
    """The whole verification; returns the table of contents for callers that need it."""
    verify_checksum(archive, manifest, progress)
    entries = read_entries(archive, manifest, pg_restore, progress)
    check_toc(entries, manifest)
    return entries


def read_entries(
    archive: Path, manifest: Manifest, pg_restore: Tool, progress: ProgressFn
) -> list[TocEntry]:
    """The entries of every part's table of contents, part after part."""
    listings = read_tocs(archive, manifest, pg_restore, progress)
    return [entry for text in listings for entry in parse_toc(text)]
