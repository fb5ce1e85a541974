"""Base backups for point-in-time recovery: `pg_basebackup` streamed into the repository.

`pg_basebackup -D - -Ft -X none -c fast` writes the data directory as one tar on stdout. Every byte
goes once through our tar reader (to pick up `backup_label`, first in the stream, and
`backup_manifest`, injected last by pg_basebackup), zstd, age encryption when
LIFEOS_ENCRYPTION_RECIPIENTS is set (as every kind: lifeos_backup.formats.crypto), and SHA-256 into
a temporary file, which is fsynced and renamed. Nothing uncompressed or unencrypted touches the
disk.

Why `-X none`: the WAL written between the backup's start and stop reaches the WAL archive via
archive_command anyway, and pg_basebackup then waits until the last of it is archived (it asks
the server to wait unless WAL is included). `-X stream` cannot write to stdout, and `-X fetch`
fails when the server recycled a segment during a long backup. The price: a base backup alone is
not restorable; it needs its start..stop segments from the archive. So `verify` checks exactly
that (every segment present and matching its checksum), and WAL retention never removes them.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lifeos_backup.core.errors import ConfigError, DecryptionKeyError, VerificationFailed
from lifeos_backup.core.fsutil import atomic_writer
from lifeos_backup.core.procs import spawn
from lifeos_backup.core.progress import Progress, ProgressFn
from lifeos_backup.core.settings import Settings, get_settings
from lifeos_backup.formats.crypto import encryption_info, open_plain, parse_recipients, sealed
from lifeos_backup.formats.manifest import Manifest, require_archive_match
from lifeos_backup.formats.streams import (
    CHUNK,
    HashingReader,
    HashingWriter,
    ReadAhead,
    compressor,
    decompressor,
)
from lifeos_backup.formats.tarstream import TarReader
from lifeos_backup.kinds.base import Written
from lifeos_backup.kinds.basebackup import wal_archive_dir
from lifeos_backup.kinds.basebackup.pgconn import connect, conninfo_and_env, pg_tool
from lifeos_backup.wal.archive import verify_file
from lifeos_backup.wal.names import format_lsn, parse_lsn, segment_of_lsn, segment_range
from lifeos_backup.wal.segment import CorruptSegment, KeyUnavailable, WalError

LABEL_FILE = "backup_label"
MANIFEST_FILE = "backup_manifest"
DEFAULT_LEVEL = 3  # base backups are large and mostly written once; speed over ratio
_LABEL_LINE = re.compile(r"^([A-Z ]+): (.*)$")
_START_WAL = re.compile(r"^([0-9A-F]+/[0-9A-F]+) \(file ([0-9A-F]{24})\)$")


@dataclass(frozen=True)
class ServerFacts:
    version: str
    version_num: int
    wal_level: str
    archive_mode: str
    segment_size: int
    system_identifier: str

    @property
    def major(self) -> int:
        return self.version_num // 10000


def probe_server(settings: Settings) -> ServerFacts:
    """Version and WAL settings; refuse a server whose WAL is not archived (backup unusable)."""
    with connect(settings) as conn:
        row = conn.execute(
            "SELECT current_setting('server_version'),"
            " current_setting('server_version_num')::int,"
            " current_setting('wal_level'), current_setting('archive_mode'),"
            " (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'),"
            " (SELECT system_identifier::text FROM pg_control_system())"
        ).fetchone()
    assert row is not None
    version, num, level, mode, segment, system = (str(value) for value in row)
    facts = ServerFacts(version, int(num), level, mode, int(segment), system)
    if facts.archive_mode == "off" or facts.wal_level == "minimal":
        raise ConfigError(
            "WAL archiving is off on the database server",
            f"archive_mode={facts.archive_mode}, wal_level={facts.wal_level}: a base backup "
            "without archived WAL cannot be restored",
            "set wal_level = replica, archive_mode = on and archive_command as in docs/pitr.md, "
            "then restart PostgreSQL",
        )
    return facts


def parse_backup_label(text: str) -> dict[str, str]:
    """backup_label 'KEY: value' lines -> dict (keys as written, e.g. 'START WAL LOCATION')."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        match = _LABEL_LINE.match(line)
        if match:
            fields[match.group(1)] = match.group(2)
    return fields


class _Tee(io.RawIOBase):
    """A raw stream for TarReader: bytes read from `src` are also written to `sink`."""

    def __init__(self, src: Any, sink: Any, on_read: Any) -> None:
        super().__init__()
        self._src, self._sink, self._on_read = src, sink, on_read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._src.read(len(buffer))
        if data:
            self._sink.write(data)
            self._on_read(len(data))
        buffer[: len(data)] = data
        return len(data)


class _RawSink:
    """Hashes and counts the uncompressed tar on its way into the compressor."""

    def __init__(self, packed: Any) -> None:
        self._packed = packed
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.hash.update(data)
        self.size += len(data)
        self._packed.write(data)


def _scan(tar: TarReader) -> tuple[dict[str, bytes], int]:
    """Walk the tar once; keep backup_label and backup_manifest, count regular files."""
    kept: dict[str, bytes] = {}
    files = 0
    for member in tar:
        if member.path in (LABEL_FILE, MANIFEST_FILE):
            kept[member.path] = tar.read_all()
        if member.type == "file":
            files += 1
    return kept, files


def backup_facts(
    server: ServerFacts, kept: dict[str, bytes], files: int, tar_size: int, tar_sha256: str
) -> dict[str, Any]:
    """The manifest facts a restore needs: where the backup starts and stops in the WAL."""
    if LABEL_FILE not in kept or MANIFEST_FILE not in kept:
        raise VerificationFailed(
            "pg_basebackup output lacks backup_label or backup_manifest",
            f"found {sorted(kept)}",
            "use pg_basebackup 13 or newer without --no-manifest",
        )
    label = parse_backup_label(kept[LABEL_FILE].decode("utf-8", "replace"))
    start = _START_WAL.match(label.get("START WAL LOCATION", ""))
    ranges = json.loads(kept[MANIFEST_FILE]).get("WAL-Ranges") or []
    if start is None or not ranges:
        raise VerificationFailed("backup_label or backup_manifest is not understood", str(label))
    stop_lsn = parse_lsn(ranges[-1]["End-LSN"])
    stop_tli = int(ranges[-1]["Timeline"])
    started = datetime.strptime(label["START TIME"], "%Y-%m-%d %H:%M:%S %Z").replace(tzinfo=UTC)
    return {
        "start_lsn": start.group(1),
        "start_wal_file": start.group(2),
        "timeline": int(label.get("START TIMELINE") or int(start.group(2)[:8], 16)),
        "checkpoint_lsn": label.get("CHECKPOINT LOCATION", ""),
        "start_time": started.isoformat(),
        "stop_lsn": format_lsn(stop_lsn),
        "stop_timeline": stop_tli,
        "stop_wal_file": segment_of_lsn(max(stop_lsn - 1, 0), stop_tli, server.segment_size).name(
            server.segment_size
        ),
        "wal_segment_size": server.segment_size,
        "server_version": server.version,
        "server_version_num": server.version_num,
        "system_identifier": server.system_identifier,
        "label": label.get("LABEL", ""),
        "data_files": files,
        "tar_size": tar_size,
        "tar_sha256": tar_sha256,
    }


def write_base_backup(settings: Settings, archive: Path, progress: ProgressFn) -> Written:
    """Run pg_basebackup into `archive` (atomically) and describe where it sits in the WAL."""
    server = probe_server(settings)
    conninfo, env = conninfo_and_env(settings)
    level = int(getattr(settings, "postgres_compression_level", DEFAULT_LEVEL))
    recipients = parse_recipients(settings.encryption_recipients)
    args = [
        pg_tool(settings, "pg_basebackup", server.major),
        "-d", conninfo,
        "-D", "-", "-F", "t",
        "-X", "none",
        "-c", "fast",
        "-w",
        "-l", f"lifeos {archive.name.split('.')[0]}",
    ]  # fmt: skip
    report = Progress("pg_basebackup")

    def seen(n: int) -> None:
        report.bytes_done += n
        progress(report)

    with atomic_writer(archive) as out:
        hashed = HashingWriter(out)
        secret = sealed(hashed, recipients)  # `hashed` itself when encryption is off
        packed = compressor(secret, "zstd", level)
        sink = _RawSink(packed)
        with spawn(args, env=env, timeout=settings.task_time_limit) as proc:
            assert proc.stdout is not None
            tee = _Tee(proc.stdout, sink, seen)
            kept, files = _scan(TarReader(tee))  # type: ignore[arg-type]
            while tee.readinto(bytearray(CHUNK)):  # end-of-archive blocks and record padding
                pass
        packed.close()
        if secret is not hashed:
            secret.close()  # seals the final chunk
    facts = backup_facts(server, kept, files, sink.size, sink.hash.hexdigest())
    return Written(size=hashed.size, sha256=hashed.hexdigest(), algorithm="zstd", level=level,
                   facts=facts, encryption=encryption_info(recipients))  # fmt: skip


def required_segments(facts: dict[str, Any]) -> list[str]:
    """WAL segments from the backup's start to its stop: what a restore cannot do without."""
    size = int(facts["wal_segment_size"])
    names = segment_range(facts["start_wal_file"], parse_lsn(facts["stop_lsn"]), size)
    if int(facts["stop_timeline"]) != int(facts["timeline"]):  # promoted during the backup
        names.append(facts["stop_wal_file"])
    return names


def check_wal_coverage(
    facts: dict[str, Any], archive: Path, identity_file: Path | None = None
) -> list[str]:
    """Every segment the backup needs is archived and matches its checksum; returns them.

    Sealed segments are decrypted and checked with `identity_file`; without it, only what can be
    checked without the private key (wal.archive.verify_file).
    """
    needed = required_segments(facts)
    for name in needed:
        path = archive / f"{name}.zst"
        if not path.exists():
            raise VerificationFailed(
                f"base backup needs WAL segment {name}, which is not in the archive",
                f"archive {archive}",
                "check archive_command on the server (`lifeos-backup wal-status`); without it "
                "this base backup cannot be restored",
            )
        try:
            verify_file(path, identity_file)
        except KeyUnavailable as exc:  # not damage: the backup stays good
            raise DecryptionKeyError(exc.what, exc.detail, exc.hint) from exc
        except (CorruptSegment, WalError) as exc:
            raise VerificationFailed(f"archived WAL segment {name} is damaged", str(exc)) from exc
    return needed


def check_base_backup(archive: Path, manifest: Manifest, progress: ProgressFn) -> None:
    """Archive checksum, a readable tar whose backup_label matches the manifest, and its WAL.

    An encrypted base backup is decrypted with LIFEOS_ENCRYPTION_IDENTITY_FILE (verify without
    it checks the ciphertext: crypto.check_sealed and BaseBackupKind.check_without_key).
    """
    facts = manifest.facts
    identity_file = get_settings().encryption_identity_file
    report = Progress("verifying", bytes_total=manifest.archive.size)
    with open(archive, "rb") as raw:
        hashed = HashingReader(raw)
        opened = open_plain(hashed, manifest, identity_file)  # decrypts an encrypted archive
        try:
            with ReadAhead(decompressor(opened, "zstd")) as plain:  # decompressed in a thread
                kept, _files = _scan(TarReader(plain))
                while plain.read(CHUNK):  # end-of-archive blocks, the frame's checksum
                    pass
            if opened is not hashed:
                opened.drain()  # type: ignore[attr-defined]  # authenticates the final chunk
        except Exception as exc:
            if isinstance(exc, VerificationFailed):
                raise
            raise VerificationFailed(f"archive {archive.name} is corrupt", str(exc)) from exc
        hashed.drain()
    report.bytes_done = hashed.size
    progress(report)
    require_archive_match(manifest, archive.name, hashed.size, hashed.hexdigest())
    label = parse_backup_label(kept.get(LABEL_FILE, b"").decode("utf-8", "replace"))
    if not label.get("START WAL LOCATION", "").startswith(f"{facts.get('start_lsn')} "):
        raise VerificationFailed("backup_label does not match the manifest", str(label))
    check_wal_coverage(facts, wal_archive_dir(get_settings()), identity_file)
