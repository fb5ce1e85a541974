"""Verifying a PostgreSQL archive without a database: checksum, then the dump's own structure.

1. The archive's size and SHA-256 against the manifest (a cheap read of the compressed file).
2. The whole archive decompressed (zstd checks its frame checksum), its head fed to
   `pg_restore --list --verbose`: the table of contents must be readable and list every table of
   the manifest with its data, and the decompressed length must be the length pg_dump wrote.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import zstandard

from lifeos_backup import procs
from lifeos_backup.crypto import open_plain
from lifeos_backup.errors import CommandFailed, VerificationFailed
from lifeos_backup.manifest import Manifest, require_archive_match
from lifeos_backup.postgres.toc import TocEntry, missing_tables, parse_toc
from lifeos_backup.postgres.tools import Tool
from lifeos_backup.progress import Progress, ProgressFn
from lifeos_backup.streams import CHUNK, decompressor, sha256_file

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


def read_toc(archive: Path, manifest: Manifest, pg_restore: Tool, progress: ProgressFn) -> str:
    """Decompress the whole archive, feeding it to `pg_restore --list --verbose`; its output.

    pg_restore stops reading after the table of contents; the rest is still decompressed, so
    that a damaged tail is found too, and its length compared with what pg_dump wrote.
    """
    report = Progress("reading table of contents", bytes_total=manifest.archive.size)
    args = [pg_restore.path, "--list", "--verbose"]
    with open(archive, "rb") as raw, tempfile.TemporaryFile() as listing:
        try:
            with procs.spawn(args, stdin=subprocess.PIPE, stdout=listing) as proc:
                assert proc.stdin is not None
                plain = open_plain(raw, manifest)  # decrypts an encrypted archive
                stream = decompressor(plain, manifest.compression.algorithm)  # type: ignore[arg-type]
                length = _feed(stream, proc.stdin, lambda: _report(progress, report, raw))
        except CommandFailed as exc:
            raise VerificationFailed(
                "the dump's table of contents is unreadable", exc.detail, _HINT
            ) from exc
        except _STREAM_ERRORS as exc:
            raise VerificationFailed(
                f"archive {archive.name} is corrupt", f"{type(exc).__name__}: {exc}", _HINT
            ) from exc
        listing.seek(0)
        text = listing.read().decode(errors="replace")
    expected = manifest.facts.get("dump_bytes")
    if expected is not None and length != expected:
        raise VerificationFailed(
            f"archive {archive.name} decompresses to {length} bytes",
            f"pg_dump wrote {expected} bytes",
            _HINT,
        )
    return text


def _report(progress: ProgressFn, report: Progress, raw: IO[bytes]) -> None:
    report.bytes_done = raw.tell()
    progress(report)


def _feed(stream: IO[bytes], sink: IO[bytes], tick: Callable[[], None]) -> int:
    """Copy `stream` into `sink` until the reader hangs up, then read `stream` to its end."""
    length = 0
    listening = True
    while chunk := stream.read(CHUNK):
        length += len(chunk)
        if listening:
            try:
                sink.write(chunk)
            except BrokenPipeError:  # pg_restore --list is done after the table of contents
                listening = False
        tick()
    return length


def check_toc(entries: list[TocEntry], manifest: Manifest) -> None:
    """Every table of the manifest must be in the archive with its definition and its data."""
    if not entries:
        raise VerificationFailed("the dump's table of contents is empty", hint=_HINT)
    missing = missing_tables(entries, manifest_tables(manifest))
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
    entries = parse_toc(read_toc(archive, manifest, pg_restore, progress))
    check_toc(entries, manifest)
    return entries
