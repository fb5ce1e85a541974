"""The WAL archive on disk: one self-checking file per WAL file, written atomically.

File format (`<wal name>.zst`), readable by the plain `zstd -d` command as well:

    8 bytes   zstd skippable-frame header (magic 0x184D2A5E, length 104), ignored by zstd
    104 bytes "LIFEOS-WAL v1 sha256=<64 hex> size=<12 digits>\\n": SHA-256 and size of the
              uncompressed WAL file
    ...       one zstd frame (with its own content checksum) holding the WAL file

Sealed (LIFEOS_ENCRYPTION_RECIPIENTS set when pushed; lifeos_backup.wal.sealing): the frame
length is 108, the text ends in " age\\n", and the zstd frame is inside an age v1 file. The name
stays `<wal name>.zst`, so there is still exactly one file per WAL file, whatever the setting was.
The header's format and the errors are in lifeos_backup.wal.segment, which sealing shares.

The checksum sits in the file itself, so one rename publishes segment and checksum together:
there is no state in which one exists without the other. A push stores the file under a temporary
name, fsyncs it and publishes it with link(2), which fails if the name exists; so two pushes of one
segment can never overwrite each other, and an existing segment is compared, never replaced
(PostgreSQL's documentation requires exactly that of an archive_command).

Standard library only, plus `zstandard` when importable (else the `zstd` command): PostgreSQL runs
this once per segment as its own OS user. Sealing imports `cryptography`, only when it is used.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol, cast

from lifeos_backup.wal.names import SEGMENT, check_name
from lifeos_backup.wal.segment import (
    HEADER_LEN,
    SEALED_HEADER_LEN,
    ArchiveConflict,
    CorruptSegment,
    Header,
    SegmentMissing,
    WalError,
    read_header,
)

SUFFIX = ".zst"
FILE_MODE = 0o640  # the server's group may read (restore, base backup checks); others never
DIR_MODE = 0o750
STATUS_FILE = ".wal-status.json"
LOCK_FILE = ".wal-status.lock"
TEMP_PREFIX = ".tmp-"
DEFAULT_LEVEL = 1  # on real WAL faster than level 3 and no larger (benchmarks/README.md)
CHUNK = 1 << 20
ENV_ARCHIVE_DIR = "LIFEOS_WAL_ARCHIVE_DIR"
ENV_BACKUP_ROOT = "LIFEOS_BACKUP_ROOT"
ENV_LEVEL = "LIFEOS_WAL_COMPRESSION_LEVEL"
ARCHIVE_SUBDIR = ("postgresql", "wal")

try:  # the fast path; the server's Python may lack it (e.g. system python3 of a DB host)
    import zstandard as _zstd
except ImportError:  # pragma: no cover - exercised through force_cli in tests
    _zstd = None  # type: ignore[assignment]


class _Reader(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _Writer(Protocol):
    def write(self, data: bytes, /) -> int: ...


class _HashingReader:
    """SHA-256 and size of everything read through it: the Header of the WAL file."""

    def __init__(self, src: _Reader) -> None:
        self._src, self._digest, self.size = src, hashlib.sha256(), 0

    def read(self, size: int = -1, /) -> bytes:
        block = self._src.read(size)
        self._digest.update(block)
        self.size += len(block)
        return block

    def header(self) -> Header:
        return Header(self._digest.hexdigest(), self.size)


@dataclass(frozen=True)
class Pushed:
    name: str
    stored: bool  # False: the identical file was already archived
    size: int
    compressed: int
    seconds: float


# --------------------------------------------------------------------------- locations


def archive_dir_from_env(explicit: str | None = None) -> Path:
    """--archive-dir, else LIFEOS_WAL_ARCHIVE_DIR, else LIFEOS_BACKUP_ROOT/postgresql/wal.

    Must be absolute: PostgreSQL runs archive_command inside its data directory, where a relative
    default such as ./backups would silently put the archive into the database itself.
    """
    raw = explicit or os.environ.get(ENV_ARCHIVE_DIR)
    if not raw and os.environ.get(ENV_BACKUP_ROOT):
        raw = str(Path(os.environ[ENV_BACKUP_ROOT], *ARCHIVE_SUBDIR))
    if not raw:
        raise WalError(
            "no WAL archive configured",
            f"neither --archive-dir nor {ENV_ARCHIVE_DIR} nor {ENV_BACKUP_ROOT} is set",
            "see docs/pitr.md for the archive_command line",
        )
    path = Path(raw)
    if not path.is_absolute():
        raise WalError(
            "the WAL archive path must be absolute",
            f"{raw!r} would be relative to the server's data directory",
            f"set {ENV_ARCHIVE_DIR} (or --archive-dir) to an absolute path",
        )
    return path


def level_from_env() -> int:
    raw = os.environ.get(ENV_LEVEL, "")
    try:
        return int(raw) if raw else DEFAULT_LEVEL
    except ValueError:
        raise WalError(f"{ENV_LEVEL}={raw!r} is not an integer") from None


def archived_path(archive: Path, name: str) -> Path:
    return archive / (check_name(name) + SUFFIX)


# --------------------------------------------------------------------------- header


def header_of(path: Path) -> Header:
    with open(path, "rb") as handle:
        return read_header(handle, path.name)


def _hash_file(path: Path) -> Header:
    with open(path, "rb") as handle:
        hashing = _HashingReader(handle)
        while hashing.read(CHUNK):
            pass
    return hashing.header()


def _zstd_filter(
    args: list[str], src: _Reader, failure: type[WalError], what: str
) -> Iterator[bytes]:
    """Run the `zstd` command over `src`'s bytes and yield its output (`what` it does, for errors).

    A thread feeds its input: writing a child's input and reading its output from one thread
    deadlocks once both pipe buffers are full. An error of the feeder (a sealed chunk failing
    authentication, say) wins over zstd's complaint about the input it then lacked.
    """
    failed: list[BaseException] = []
    with subprocess.Popen(
        args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as child:
        assert child.stdin is not None and child.stdout is not None and child.stderr is not None
        sink = child.stdin

        def feed() -> None:
            try:
                while block := src.read(CHUNK):
                    sink.write(block)
            except BrokenPipeError:
                pass  # zstd stopped early: its exit status says why
            except BaseException as exc:  # re-raised below, in the caller's thread
                failed.append(exc)
            finally:
                with contextlib.suppress(OSError):
                    sink.close()

        feeder = threading.Thread(target=feed, name="zstd-feed", daemon=True)
        feeder.start()
        while block := child.stdout.read(CHUNK):
            yield block
        feeder.join()
        error = child.stderr.read().decode(errors="replace").strip()
    if failed:
        raise failed[0]
    if child.returncode != 0:
        raise failure(f"zstd failed while {what}", error or f"exit {child.returncode}")


# --------------------------------------------------------------------------- push


def ensure_dir(archive: Path) -> None:
    """Create the archive folder (0750) if needed; an existing one keeps its mode and owner."""
    if not archive.is_dir():
        archive.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _compare_existing(dest: Path, ours: Header, name: str) -> None:
    """Same name already archived: identical content is success, anything else a conflict."""
    theirs = header_of(dest)
    if theirs != ours:
        raise ArchiveConflict(
            f"WAL file {name} is already archived with different content",
            f"archived sha256 {theirs.sha256[:16]}... size {theirs.size}, "
            f"this one sha256 {ours.sha256[:16]}... size {ours.size}",
            "two clusters may share one archive (e.g. after a re-initdb or a restore that kept "
            "archiving on); give each cluster its own archive folder",
        )


def _compress_into(src: BinaryIO, out: _Writer, level: int, force_cli: bool) -> Header:
    """Stream `src` through zstd into `out` (positioned after the header), hashing the input."""
    hashing = _HashingReader(src)
    if _zstd is not None and not force_cli:
        compressor = _zstd.ZstdCompressor(level=level, write_checksum=True)
        with compressor.stream_writer(cast(IO[bytes], out), closefd=False) as writer:
            while block := hashing.read(CHUNK):
                writer.write(block)
        return hashing.header()
    for block in _zstd_filter(
        ["zstd", "-q", "-c", f"-{level}", "--check"], hashing, WalError, "compressing"
    ):
        out.write(block)
    return hashing.header()


def _sealing() -> Any:
    """lifeos_backup.wal.sealing, imported only when a file is (to be) sealed: it loads
    `cryptography`, which the unencrypted hot path never needs."""
    from lifeos_backup.wal import sealing

    return sealing


def _write_temp(
    source: Path, archive: Path, name: str, level: int, force_cli: bool, keys: list[Any]
) -> tuple[Path, Header, int]:
    """Compress (and seal for `keys`) `source` into a hidden, fsynced temporary file in
    `archive`; returns it with the header and its size. The caller publishes or removes it."""
    tmp = archive / f"{TEMP_PREFIX}{name}.{os.getpid()}.{os.urandom(4).hex()}"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, FILE_MODE)
    try:
        with os.fdopen(fd, "r+b") as out, open(source, "rb") as src:
            if keys:
                out.write(b"\0" * SEALED_HEADER_LEN)
                sealer = _sealing().sealer(out, keys)
                header = replace(_compress_into(src, sealer, level, force_cli), sealed=True)
                sealer.close()  # seals the final chunk
            else:
                out.write(b"\0" * HEADER_LEN)
                header = _compress_into(src, out, level, force_cli)
            out.seek(0)
            out.write(header.encode())
            out.flush()
            os.fsync(out.fileno())
            compressed = os.fstat(out.fileno()).st_size
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return tmp, header, compressed


def push(
    source: Path,
    archive: Path,
    *,
    level: int = DEFAULT_LEVEL,
    force_cli: bool = False,
    recipients: str | None = None,
) -> Pushed:
    """Archive one WAL file durably; return only once it is fsynced under its final name.

    Already archived with the same SHA-256 and size: success without writing (PostgreSQL may
    re-run archive_command after a crash). Different content: ArchiveConflict, nothing replaced.
    `recipients` (age public keys, comma-separated): the zstd frame is sealed for them; a key
    that does not parse fails the push rather than archive in the clear.
    """
    started = time.monotonic()
    name = check_name(source.name)
    keys = _sealing().parse_recipients(recipients) if (recipients or "").strip() else []
    ensure_dir(archive)
    dest = archive / (name + SUFFIX)
    if dest.exists():  # cheap re-push check: one read of the source, no compression
        ours = _hash_file(source)
        _compare_existing(dest, ours, name)
        return Pushed(name, False, ours.size, dest.stat().st_size, time.monotonic() - started)
    tmp, header, compressed = _write_temp(source, archive, name, level, force_cli, keys)
    try:
        try:
            os.link(tmp, dest)  # atomic and never overwrites, unlike rename
        except FileExistsError:  # a concurrent push of the same name won the race
            _compare_existing(dest, header, name)
            return Pushed(name, False, header.size, compressed, time.monotonic() - started)
        _fsync_dir(archive)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return Pushed(name, True, header.size, compressed, time.monotonic() - started)


PARTIAL = ".partial"  # a segment still being written: `<segment>.partial.zst` in the archive


def partial_path(archive: Path, segment: str) -> Path:
    """Where the streamed, unfinished copy of `segment` is kept."""
    return archive / (check_name(segment + PARTIAL) + SUFFIX)


def store_partial(
    source: Path,
    archive: Path,
    *,
    level: int = DEFAULT_LEVEL,
    force_cli: bool = False,
    recipients: str | None = None,
) -> Pushed:
    """Keep the newest copy of an unfinished segment as `<segment>.partial.zst`, replacing the
    previous one (the newest always holds more WAL).

    Unlike push, an existing copy is replaced: an unfinished segment grows, and the archive keeps
    only its newest state. Same format and the same temporary name, fsync and rename, so a
    reader sees the old copy or the new one, never a mix. The caller serialises the writers
    (lifeos_backup.wal.stream holds the archive's stream lock), so an older copy never replaces
    a newer one.
    """
    started = time.monotonic()
    name = check_name(source.name)
    if not name.endswith(PARTIAL):
        raise WalError(f"{name} is not an unfinished segment (.partial)")
    keys = _sealing().parse_recipients(recipients) if (recipients or "").strip() else []
    ensure_dir(archive)
    tmp, header, compressed = _write_temp(source, archive, name, level, force_cli, keys)
    try:
        os.replace(tmp, archive / (name + SUFFIX))
        _fsync_dir(archive)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return Pushed(name, True, header.size, compressed, time.monotonic() - started)


# --------------------------------------------------------------------------- fetch


def _decompressed_chunks(src: Any, force_cli: bool) -> Iterator[bytes]:
    """Decompress the zstd frame that follows the header (`src` positioned after it)."""
    if _zstd is not None and not force_cli:
        reader = _zstd.ZstdDecompressor().stream_reader(src, read_size=CHUNK, closefd=False)
        with reader:
            while block := reader.read(CHUNK):
                yield block
        return
    yield from _zstd_filter(["zstd", "-q", "-d", "-c"], src, CorruptSegment, "decompressing")


def read_verified(
    path: Path, force_cli: bool = False, identity_file: Path | None = None
) -> Iterator[bytes]:
    """Yield the WAL file's bytes; raise CorruptSegment at the end if they do not match.

    A sealed file is opened with the age identity in `identity_file` (KeyUnavailable without).
    """
    with open(path, "rb") as handle:
        header = read_header(handle, path.name)
        src: Any = _sealing().opener(handle, path.name, identity_file) if header.sealed else handle
        digest = hashlib.sha256()
        size = 0
        try:
            for block in _decompressed_chunks(src, force_cli):
                digest.update(block)
                size += len(block)
                yield block
            if header.sealed:
                src.drain()  # authenticates the age stream to its final chunk
        except Exception as exc:
            if isinstance(exc, WalError):
                raise
            raise CorruptSegment(f"archived {path.name} cannot be decompressed", str(exc)) from exc
    if Header(digest.hexdigest(), size) != header:
        raise CorruptSegment(
            f"archived {path.name} does not match its checksum",
            f"size {size}, header says {header.size}",
            "this copy is damaged; recovery must not replay it",
        )


def verify_file(path: Path, identity_file: Path | None = None) -> Header:
    """Decompress and check one archived file; return its header.

    A sealed file without `identity_file` gets what can be checked without the private key: our
    header, the age header and whole sealed chunks (the worker that verifies base backups holds
    only public keys).
    """
    header = header_of(path)
    if header.sealed and identity_file is None:
        _sealing().check_without_key(path)
        return header
    for _block in read_verified(path, identity_file=identity_file):
        pass
    return header


def fetch(
    name: str,
    dest: Path,
    archive: Path,
    *,
    force_cli: bool = False,
    identity_file: Path | None = None,
) -> int:
    """Restore one archived WAL file to `dest` (temporary name, then rename); returns its size.

    SegmentMissing when the archive does not hold it (PostgreSQL asks for files beyond the end
    of the archive, and for history files that may not exist, as a matter of course). A sealed
    file needs `identity_file`. A segment archived only as the stream's unfinished copy
    (`<name>.partial.zst`) is served under its full name: recovery to the end of the stream.
    """
    src = archive / (check_name(name) + SUFFIX)
    if not archive.is_dir():
        raise WalError(
            f"WAL archive {archive} is not reachable",
            "the folder does not exist or cannot be entered",
            "check the archive path in restore_command and that this user may read it",
        )
    if not src.exists() and SEGMENT.match(name):
        # The end of the stream: the unfinished segment, served under the full name PostgreSQL
        # asks for. Replay stops where its valid WAL ends (the rest is zeros), as it does at the
        # end of a primary's pg_wal.
        src = archive / (name + PARTIAL + SUFFIX)
    if not src.exists():
        raise SegmentMissing(f"{name} is not in the archive")
    tmp = dest.with_name(f".{dest.name}.lifeos-fetch.{os.getpid()}")
    size = 0
    try:
        with open(tmp, "wb") as out:
            for block in read_verified(src, force_cli, identity_file):
                out.write(block)
                size += len(block)
        os.replace(tmp, dest)  # no fsync: a crash during recovery just fetches it again
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return size


# --------------------------------------------------------------------------- status file


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@contextlib.contextmanager
def _status_lock(archive: Path) -> Iterator[None]:
    fd = os.open(archive / LOCK_FILE, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_status(archive: Path) -> dict[str, Any]:
    """The push record; a missing or damaged file reads as empty (it is health data only)."""
    try:
        data = json.loads((archive / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def record(archive: Path, *, pushed: Pushed | None = None, failure: str | None = None) -> None:
    """Update `.wal-status.json` atomically (temp name + rename) under a lock.

    Not fsynced: it is health information, and a crash loses at most the last update.
    """
    with _status_lock(archive):
        status = read_status(archive)
        now = _utc_now()
        if pushed is not None:
            status["last_push"] = {
                "name": pushed.name,
                "at": now,
                "stored": pushed.stored,
                "size": pushed.size,
                "compressed": pushed.compressed,
                "seconds": round(pushed.seconds, 4),
            }
            status["consecutive_failures"] = 0
        if failure is not None:
            status["failures_total"] = int(status.get("failures_total", 0)) + 1
            status["consecutive_failures"] = int(status.get("consecutive_failures", 0)) + 1
            status["last_failure"] = {"at": now, "error": failure[:1000]}
        tmp = archive / f"{TEMP_PREFIX}{STATUS_FILE}.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        with os.fdopen(fd, "w") as handle:
            json.dump(status, handle, indent=2, sort_keys=True)
        os.replace(tmp, archive / STATUS_FILE)
