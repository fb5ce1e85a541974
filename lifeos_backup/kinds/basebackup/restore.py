"""`restore pitr`: a base backup laid out as a data directory, set to recover to a moment.

PostgreSQL 12 and later have no recovery.conf: recovery is requested by an empty
`recovery.signal` file, and its settings (restore_command, recovery_target_*) are ordinary
configuration. We append them to `postgresql.auto.conf`, which is read after postgresql.conf, so
they win without touching the operator's own configuration file.

Archiving is switched off in the restored copy unless asked (`keep_archiving`): a copy restored
for inspection would otherwise archive its new timeline into the production archive.

With the WAL stream, the archive also holds the unfinished segment it received last
(`<segment>.partial.zst`); restore_command serves it under the full name, so recovery reaches the
last record received. Whatever the stream's spool holds on this host is sealed first.

Encrypted base backups and sealed WAL need LIFEOS_ENCRYPTION_IDENTITY_FILE: the key is checked
before anything is created, and restore_command passes its path on to `lifeos-wal fetch`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from lifeos_backup.core.errors import (
    CommandFailed,
    ConfigError,
    DecryptionKeyError,
    LifeosError,
    NotFound,
    TargetNotEmpty,
    VerificationFailed,
)
from lifeos_backup.core.progress import Progress, ProgressFn, ignore
from lifeos_backup.core.settings import Settings
from lifeos_backup.formats.crypto import identities_for, open_plain
from lifeos_backup.formats.manifest import Manifest, manifest_path, read_manifest
from lifeos_backup.formats.streams import CHUNK, HashingReader, ReadAhead, decompressor
from lifeos_backup.formats.tarstream import TarReader
from lifeos_backup.kinds.basebackup import wal_archive_dir
from lifeos_backup.kinds.basebackup.backup import check_wal_coverage
from lifeos_backup.kinds.basebackup.pgconn import pg_tool
from lifeos_backup.kinds.basebackup.retention import KIND
from lifeos_backup.kinds.basebackup.streaming import seal_received
from lifeos_backup.kinds.json.restore import safe_link, safe_relpath
from lifeos_backup.storage.catalog import Catalog
from lifeos_backup.storage.catalog.store import VERIFIED
from lifeos_backup.wal.archive import SUFFIX, header_of
from lifeos_backup.wal.names import parse_lsn

DATA_DIR_MODE = 0o700
LOG_NAME = "log/lifeos-pitr.log"
_STOP_LINE = re.compile(r"recovery stopping .*")
_LAST_XACT = re.compile(r"last completed transaction was at log time (.+?)\s*$")
_STATE = re.compile(r"^Database cluster state:\s*(.+)$", re.M)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecoveryTarget:
    """At most one of: a time (with zone), an LSN, a restore point name; none = end of WAL."""

    time: datetime | None = None
    lsn: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        given = [v for v in (self.time, self.lsn, self.name) if v is not None]
        if len(given) > 1:
            raise ConfigError(
                "give one recovery target", "--target-time, --target-lsn or --target-name"
            )
        if self.time is not None and self.time.tzinfo is None:
            raise ConfigError(
                "the target time needs a time zone", hint='e.g. "2026-11-28 12:00:00+00"'
            )
        if self.lsn is not None:
            try:
                parse_lsn(self.lsn)
            except ValueError as exc:
                raise ConfigError("bad --target-lsn", str(exc), "e.g. 0/3000060") from None

    def settings_lines(self) -> list[str]:
        if self.time is not None:
            return [f"recovery_target_time = {_quote(self.time.isoformat(sep=' '))}"]
        if self.lsn is not None:
            return [f"recovery_target_lsn = {_quote(self.lsn)}"]
        if self.name is not None:
            return [f"recovery_target_name = {_quote(self.name)}"]
        return []

    def describe(self) -> str:
        if self.time is not None:
            return f"time {self.time.isoformat(sep=' ')}"
        if self.lsn is not None:
            return f"LSN {self.lsn}"
        if self.name is not None:
            return f"restore point {self.name!r}"
        return "the end of the archived WAL (latest)"


@dataclass
class PitrResult:
    backup_id: str
    datadir: Path
    target: str
    started: bool = False
    reached_time: str | None = None
    stop_line: str | None = None
    log_file: Path | None = None
    wal_dir: Path | None = None  # WAL downloaded from off-site, kept for a later start


def parse_target_time(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(
            f"--target-time {text!r} is not a timestamp", hint='e.g. "2026-11-28 12:00:00+00"'
        ) from None


def _quote(value: str) -> str:
    """A postgresql.conf string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


# --------------------------------------------------------------------------- choosing


def _manifest_of(settings: Settings, row: Any) -> Manifest:
    return read_manifest(manifest_path(settings.backup_root / row.path, row.id))


def choose_base(
    settings: Settings,
    catalog: Catalog,
    target: RecoveryTarget,
    backup_id: str | None = None,
    manifest_of: Callable[[Any], Manifest] | None = None,
    offsite: bool = False,
) -> Manifest:
    """The newest verified base backup that ends before the target.

    A time target needs a backup finished before it (recovery cannot stop before the backup's
    consistent point); an LSN target one whose stop LSN is at or before it. A restore point's
    position is unknown until replay, so a name target (and `backup_id`-less end-of-WAL
    recovery) takes the oldest (for a name) or newest (for end of WAL) verified base backup.
    """
    rows = catalog.list(kind=KIND, statuses=(VERIFIED,))
    if offsite:  # those with a good copy in the bucket (`catalog rebuild --from offsite`)
        rows = [r for r in rows if getattr(r, "offsite_status", None) == "uploaded"]
    if backup_id is not None:
        rows = [r for r in rows if r.id == backup_id]
        if not rows:
            raise NotFound(f"no verified base backup {backup_id}", hint="see `lifeos-backup list`")
    read = manifest_of or (lambda row: _manifest_of(settings, row))
    manifests = [read(row) for row in rows]  # newest first
    if target.name is not None and backup_id is None:
        manifests = manifests[-1:]
    for manifest in manifests:
        if target.time is not None and manifest.finished_at > target.time:
            continue
        if target.lsn is not None and parse_lsn(manifest.facts["stop_lsn"]) > parse_lsn(
            target.lsn
        ):
            continue
        return manifest
    oldest = manifests[-1].finished_at.isoformat() if manifests else "none"
    raise NotFound(
        f"no verified base backup ends before {target.describe()}",
        f"oldest usable base backup finished at {oldest}",
        "choose a later target, or take base backups more often",
    )


# --------------------------------------------------------------------------- laying out


def _check_empty(datadir: Path) -> None:
    if datadir.exists() and any(datadir.iterdir()):
        raise TargetNotEmpty(
            f"data directory {datadir} is not empty",
            hint="restore into a new or empty folder; never over a live cluster",
        )


def extract_base(
    archive: Path,
    manifest: Manifest,
    datadir: Path,
    progress: ProgressFn,
    identity_file: Path | None = None,
) -> int:
    """Unpack the base backup into `datadir`, checking the archive checksum in the same pass.

    Member paths and link targets are checked as for JSON restores (no absolute paths, no '..',
    no links out). An encrypted backup is decrypted with `identity_file` (default: the setting)
    and authenticated to its end. On any failure what was extracted is removed again.
    """
    datadir.mkdir(mode=DATA_DIR_MODE, parents=True, exist_ok=True)
    os.chmod(datadir, DATA_DIR_MODE)
    report = Progress("extracting", bytes_total=manifest.archive.size)
    files = 0
    try:
        with open(archive, "rb") as raw:
            hashed = HashingReader(raw)
            opened = open_plain(hashed, manifest, identity_file)  # decrypts an encrypted archive
            # Decompression (and decryption, the archive hash) run ahead in a thread, beside
            # the file writes here (formats.streams.ReadAhead).
            with ReadAhead(decompressor(opened, manifest.compression.algorithm)) as plain:
                tar = TarReader(plain)
                for found in tar:
                    # pg_basebackup writes a few members as './pg_wal/...'; that prefix is harmless.
                    member = dataclasses.replace(found, path=found.path.removeprefix("./"))
                    dest = datadir / safe_relpath(member.path)
                    if member.type == "dir":
                        dest.mkdir(mode=DATA_DIR_MODE, parents=True, exist_ok=True)
                    elif member.type == "symlink":
                        safe_link(member)  # tablespace links point outside: refused, not followed
                        dest.parent.mkdir(mode=DATA_DIR_MODE, parents=True, exist_ok=True)
                        os.symlink(member.linkname, dest)
                    else:
                        dest.parent.mkdir(mode=DATA_DIR_MODE, parents=True, exist_ok=True)
                        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                        fd = os.open(dest, flags, member.mode & 0o750 or 0o600)
                        with os.fdopen(fd, "wb") as out:
                            for chunk in tar.chunks():
                                out.write(chunk)
                        files += 1
                    report.bytes_done = hashed.size
                    progress(report)
                while plain.read(CHUNK):  # end-of-archive blocks, the frame's checksum
                    pass
            if opened is not hashed:
                opened.drain()  # type: ignore[attr-defined]  # authenticates the final chunk
            hashed.drain()
        if hashed.hexdigest() != manifest.archive.sha256:
            raise VerificationFailed(
                f"base backup {manifest.backup_id} does not match its manifest checksum",
                hint="the backup is not good; restore from another one (--backup)",
            )
    except BaseException:
        _empty_folder(datadir)
        raise
    return files


def _refuse_sealed_wal(archive_dir: Path, needed: list[str]) -> None:
    """Sealed WAL without a key would only fail later, inside the server's recovery: say it now."""
    sealed = [name for name in needed if header_of(archive_dir / f"{name}{SUFFIX}").sealed]
    if sealed:
        raise DecryptionKeyError(
            f"archived WAL segment {sealed[0]} is encrypted and no private key is configured",
            f"{len(sealed)} of the {len(needed)} segments this base backup needs are sealed",
            "set LIFEOS_ENCRYPTION_IDENTITY_FILE to the age identity file (readable by the "
            "server's OS user: restore_command passes its path on)",
        )


def _empty_folder(folder: Path) -> None:
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def default_wal_command() -> str:
    """`lifeos-wal` beside the running interpreter (the venv), else on PATH; absolute."""
    beside = Path(sys.executable).parent / "lifeos-wal"
    found = str(beside) if beside.is_file() else shutil.which("lifeos-wal")
    if not found:
        raise ConfigError(
            "lifeos-wal not found", hint="install lifeos-backup, or pass --wal-command"
        )
    return shlex.quote(str(Path(found).resolve()))


def restore_command(
    archive: Path, wal_command: str | None = None, identity_file: Path | None = None
) -> str:
    """restore_command text: absolute paths, the archive passed in the environment.

    `wal_command` is the program part (e.g. '/usr/local/bin/lifeos-wal.sh' where the server has
    no Python); both implementations read LIFEOS_WAL_ARCHIVE_DIR. `identity_file` (its path, not
    the key) opens sealed WAL; the server's OS user must be able to read that file.
    """
    program = wal_command or default_wal_command()
    env = f"LIFEOS_WAL_ARCHIVE_DIR={shlex.quote(str(archive))}"
    if identity_file is not None:
        env += f" LIFEOS_ENCRYPTION_IDENTITY_FILE={shlex.quote(str(identity_file.absolute()))}"
    return f"{env} {program} fetch %f %p"


def write_recovery_settings(
    datadir: Path,
    target: RecoveryTarget,
    command: str,
    *,
    port: int | None = None,
    keep_archiving: bool = False,
    note: str = "",
    extra: Sequence[str] = (),
) -> list[str]:
    """recovery.signal plus the recovery settings appended to postgresql.auto.conf.

    `extra` lines follow ours (a scratch copy's own listen address, authentication file).
    """
    lines = [
        f"# lifeos-backup restore pitr {note}".rstrip(),
        f"restore_command = {_quote(command)}",
        *target.settings_lines(),
        "recovery_target_action = 'promote'",
        "recovery_target_timeline = 'latest'",
    ]
    if not keep_archiving:
        lines.append("archive_mode = 'off'  # a restored copy must not write into the archive")
    if port is not None:
        lines.append(f"port = {int(port)}")
    lines.extend(extra)
    auto = datadir / "postgresql.auto.conf"
    with open(auto, "a", encoding="utf-8") as handle:
        handle.write("\n" + "\n".join(lines) + "\n")
    (datadir / "standby.signal").unlink(missing_ok=True)
    fd = os.open(datadir / "recovery.signal", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.close(fd)
    return lines


# --------------------------------------------------------------------------- starting


def _as_user(args: list[str], os_user: str | None) -> list[str]:
    return ["runuser", "-u", os_user, "--", *args] if os_user else args


def _chown_tree(root: Path, os_user: str) -> None:
    entry = pwd.getpwnam(os_user)
    for folder, dirs, files in os.walk(root):
        os.chown(folder, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(folder, name), entry.pw_uid, entry.pw_gid, follow_symlinks=False)


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


def start_server(
    datadir: Path,
    bindir_tool: str,
    *,
    os_user: str | None,
    socket_dir: Path | None,
    timeout: int,
) -> Path:
    """pg_ctl start (as `os_user` when we are root); returns the server log path."""
    log_file = datadir / LOG_NAME
    log_file.parent.mkdir(mode=DATA_DIR_MODE, exist_ok=True)
    if os_user:
        _chown_tree(datadir, os_user)
    options = "-c logging_collector=off"  # keep the log where we can read the outcome
    if socket_dir is not None:
        options += f" -c unix_socket_directories={shlex.quote(str(socket_dir))}"
    args = [bindir_tool, "-D", str(datadir), "-l", str(log_file), "-w", "-t", str(timeout),
            "-o", options, "start"]  # fmt: skip
    done = subprocess.run(
        _as_user(args, os_user), capture_output=True, text=True, cwd=datadir,
        stdin=subprocess.DEVNULL, timeout=timeout + 30, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise CommandFailed(
            "the restored server did not start",
            f"{done.stdout.strip()} {done.stderr.strip()}\n{_log_tail(log_file)}",
            "read the server log above; a target before the base backup's end, or missing WAL, "
            "stops recovery",
        )
    return log_file


def wait_recovered(controldata: str, datadir: Path, log_file: Path, timeout: float) -> None:
    """Wait until the cluster left recovery (pg_controldata: 'in production').

    Equivalent to pg_is_in_recovery() turning false, without needing credentials of the
    restored cluster. A server that stopped meanwhile (FATAL in recovery) is reported.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(
            [controldata, "-D", str(datadir)], capture_output=True, text=True, check=False,
            env={**os.environ, "LC_ALL": "C"},
        )  # fmt: skip
        match = _STATE.search(out.stdout)
        if match and match.group(1).strip() == "in production":
            return
        if not (datadir / "postmaster.pid").exists():
            raise CommandFailed(
                "the restored server stopped during recovery", _log_tail(log_file),
                "read the server log above",
            )  # fmt: skip
        time.sleep(0.2)
    raise CommandFailed(
        f"recovery did not finish within {timeout:.0f}s", _log_tail(log_file),
        "it is still running; follow the server log",
    )  # fmt: skip


def reached(log_file: Path) -> tuple[str | None, str | None]:
    """(time of the last replayed transaction, the 'recovery stopping ...' line) from the log."""
    reached_time = stop_line = None
    with contextlib.suppress(OSError):
        for line in log_file.read_text(errors="replace").splitlines():
            if stop := _STOP_LINE.search(line):
                stop_line = stop.group(0)
            if last := _LAST_XACT.search(line):
                reached_time = last.group(1)
    return reached_time, stop_line


# --------------------------------------------------------------------------- the whole restore


def restore_pitr(
    settings: Settings,
    catalog: Catalog,
    target: RecoveryTarget,
    datadir: Path,
    *,
    port: int | None = None,
    start: bool = False,
    backup_id: str | None = None,
    wal_command: str | None = None,
    os_user: str | None = None,
    socket_dir: Path | None = None,
    keep_archiving: bool = False,
    timeout: int = 3600,
    progress: ProgressFn = ignore,
    extra_settings: Sequence[str] = (),
    source: str = "local",
) -> PitrResult:
    """Choose, check, lay out and configure; with `start`, run recovery and report the outcome.

    `extra_settings` are postgresql.conf lines added after the recovery settings. With `source`
    "offsite" the base backup and the WAL come from the bucket (`_from_offsite`).
    """
    datadir = datadir.absolute()
    _check_empty(datadir)
    if os_user is None and os.geteuid() == 0:
        os_user = "postgres"  # PostgreSQL refuses to run as root
    options = _Options(
        port, start, wal_command, os_user, socket_dir, keep_archiving, timeout, progress,
        tuple(extra_settings),
    )  # fmt: skip
    if source == "offsite":
        return _from_offsite(settings, catalog, target, datadir, backup_id, options)
    manifest = choose_base(settings, catalog, target, backup_id)
    _check_key(settings, manifest)
    archive_dir = wal_archive_dir(settings).absolute()
    seal_received(settings)  # what the WAL stream received last, up to the moment of the loss
    row = catalog.get(manifest.backup_id)
    return _lay_out(
        settings, manifest, settings.backup_root / row.path, archive_dir, target, datadir, options
    )


@dataclass(frozen=True)
class _Options:
    """How to lay out and start, as `restore_pitr` was asked."""

    port: int | None
    start: bool
    wal_command: str | None
    os_user: str | None
    socket_dir: Path | None
    keep_archiving: bool
    timeout: int
    progress: ProgressFn
    extra_settings: tuple[str, ...]


def _check_key(settings: Settings, manifest: Manifest) -> None:
    if manifest.encryption is not None:  # a missing or wrong key: one error, no datadir
        identities_for(manifest, settings.encryption_identity_file)


def _lay_out(
    settings: Settings,
    manifest: Manifest,
    base: Path,
    archive_dir: Path,
    target: RecoveryTarget,
    datadir: Path,
    opts: _Options,
) -> PitrResult:
    """Check the WAL, unpack the base backup, write the recovery settings, maybe start."""
    identity_file = settings.encryption_identity_file
    # fail before unpacking gigabytes; sealed segments are opened with the key here already
    needed = check_wal_coverage(manifest.facts, archive_dir, identity_file)
    if identity_file is None:
        _refuse_sealed_wal(archive_dir, needed)
    extract_base(base, manifest, datadir, opts.progress, identity_file)
    write_recovery_settings(
        datadir,
        target,
        restore_command(archive_dir, opts.wal_command, identity_file),
        port=opts.port,
        keep_archiving=opts.keep_archiving,
        note=f"from {manifest.backup_id} to {target.describe()}",
        extra=opts.extra_settings,
    )
    result = PitrResult(manifest.backup_id, datadir, target.describe())
    if not opts.start:
        return result
    major = int(manifest.facts.get("server_version_num", 0)) // 10000 or None
    pg_ctl = pg_tool(settings, "pg_ctl", major)
    log_file = start_server(
        datadir, pg_ctl, os_user=opts.os_user, socket_dir=opts.socket_dir,
        timeout=min(opts.timeout, 600),
    )  # fmt: skip
    wait_recovered(pg_tool(settings, "pg_controldata", major), datadir, log_file, opts.timeout)
    result.started, result.log_file = True, log_file
    result.reached_time, result.stop_line = reached(log_file)
    return result


# --------------------------------------------------------------------------- from the bucket


def offsite_wal_dir(datadir: Path) -> Path:
    """Where `--from offsite` puts the WAL it downloads: beside the data directory."""
    return datadir.with_name(datadir.name + ".wal")


def _from_offsite(
    settings: Settings,
    catalog: Catalog,
    target: RecoveryTarget,
    datadir: Path,
    backup_id: str | None,
    opts: _Options,
) -> PitrResult:
    """The base backup downloaded (checked against its manifest) and the WAL from its start
    segment on prefetched in parallel (each file checked, sealed ones decrypted) beside the
    data directory; restore_command reads that folder. Removed once recovery has ended; kept
    (and named) when the server is to be started later."""
    import tempfile

    from lifeos_backup.core.fsutil import private_dir
    from lifeos_backup.kinds.basebackup.offsite_wal import download_wal
    from lifeos_backup.storage.offsite import state
    from lifeos_backup.storage.offsite.download import USABLE, fetched, read_remote_manifest
    from lifeos_backup.storage.offsite.store import find_manifest, manifest_key
    from lifeos_backup.storage.offsite.targets import connect, require_targets

    targets = require_targets(settings)
    stores: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=private_dir(settings.state_dir)) as scratch:

        def remote_manifest(row: Any) -> Manifest:
            """From the first target holding a good copy (each target tried in turn)."""
            held = state.copies(catalog, row.id)
            keys = [
                (t, c.key) for t in targets if (c := held.get(t.name)) and c.status in USABLE
            ] or [(t, row.offsite_key) for t in targets]
            places: list[tuple[Any, str]] = [(t, str(key)) for t, key in keys if key]
            for i, (target, key) in enumerate(places):
                remote = stores.get(target.name) or connect(target, settings)
                stores[target.name] = remote
                try:
                    with remote.errors(f"reading the manifest of {row.id} on {target.name}"):
                        found = find_manifest(remote, key, row.id)
                        return read_remote_manifest(
                            remote, found or manifest_key(key, row.id), Path(scratch),
                            settings.encryption_identity_file,
                        )  # fmt: skip
                except (LifeosError, OSError) as exc:
                    if i + 1 == len(places) or isinstance(exc, DecryptionKeyError):
                        raise
                    log.warning("manifest of %s on %s: %s; trying the next", row.id, target, exc)
            raise NotFound(
                f"backup {row.id} has no off-site copy",
                f"off-site status: {row.offsite_status or 'never uploaded'}",
                "choose a backup that `list` shows as offsite/both",
            )

        manifest = choose_base(settings, catalog, target, backup_id, remote_manifest, True)
    _check_key(settings, manifest)
    wal_dir = offsite_wal_dir(datadir)
    _check_empty(wal_dir)
    wal_dir.mkdir(mode=DATA_DIR_MODE, parents=True, exist_ok=True)
    try:
        download_wal(
            settings, wal_dir, str(manifest.facts["start_wal_file"]),
            settings.encryption_identity_file,
        )  # fmt: skip
        if opts.os_user:
            _chown_tree(wal_dir, opts.os_user)  # restore_command runs as the server's user
        with fetched(manifest.backup_id, settings, catalog, opts.progress) as (archive, _m):
            result = _lay_out(settings, manifest, archive, wal_dir, target, datadir, opts)
    except BaseException:
        shutil.rmtree(wal_dir, ignore_errors=True)
        raise
    if result.started:
        shutil.rmtree(wal_dir, ignore_errors=True)
    else:
        result.wal_dir = wal_dir
    return result
