"""`lifeos-backup selftest`: the six checks of the old test_backup_restore.sh, in-process.

It never touches real backups: a scratch area `<backup root>/.selftest/<pid>/` (on the same disk
as the backups, removed afterwards unless kept) gets its own repository and SQLite catalog. What
each check does:

1. backup creation: a JSON backup of the real sources (LIFEOS_APP_DIR, read only) written into
   the scratch repository, with the configured compression (and encryption).
2. extraction: that archive restored into a scratch folder (the reader checks every member).
3. checksum integrity: every extracted file hashed again, independently of the reader, against
   the manifest; and against the live source file when its mtime is still the archived one.
4. manifest verification: the full `verify` of the backup (archive size and SHA-256, every
   member) and the manifest's own consistency (id, kind, one entry per extracted file).
5. rollback dry run: `rollback-to-json --dry-run` against the configured PostgreSQL (reads the
   database, writes nothing); SKIP when no database is configured or the module is absent.
6. rotation dry run: retention planned on a scratch catalog holding three synthetic backups with
   policy last=1; the newest must be kept, the two others planned for deletion, nothing deleted.
   The real catalog's own dry run (every kind) is reported alongside, for information.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from lifeos_backup.core.fsutil import DIR_MODE, private_dir
from lifeos_backup.core.settings import Settings
from lifeos_backup.formats.manifest import Manifest
from lifeos_backup.storage.catalog import Backup, Catalog, open_catalog
from lifeos_backup.storage.catalog.store import VERIFIED, utcnow

log = logging.getLogger(__name__)

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
SCRATCH = ".selftest"


@dataclass
class Check:
    number: int
    name: str
    status: str
    detail: str
    seconds: float


@dataclass
class Scratch:
    """The scratch repository and what the checks hand each other."""

    root: Path
    settings: Settings
    catalog: Catalog
    manifest: Manifest | None = None
    archive: Path | None = None
    extracted: Path | None = None
    files_restored: int = 0


@dataclass
class SelftestReport:
    checks: list[Check] = field(default_factory=list)
    workdir: str = ""
    kept: bool = False

    @property
    def ok(self) -> bool:
        return all(c.status != FAIL for c in self.checks)


class Skipped(Exception):
    """A check that cannot run here; its message is the reason."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_creation(s: Scratch) -> str:
    from lifeos_backup.formats.manifest import manifest_path
    from lifeos_backup.jobs.backups import create_backup

    s.manifest = create_backup(
        "json", s.settings, s.catalog, reason="selftest", initiator="selftest"
    )
    row = s.catalog.get(s.manifest.backup_id)
    s.archive = s.settings.backup_root / row.path
    if not s.archive.is_file() or not manifest_path(s.archive, row.id).is_file():
        raise AssertionError("archive or manifest missing after creation")
    files = sum(1 for f in s.manifest.iter_files() if f.type == "file")
    return f"{row.id}: {files} files, {row.size} bytes"


def check_extraction(s: Scratch) -> str:
    from lifeos_backup.kinds.json.restore import restore_archive

    if s.manifest is None or s.archive is None:
        raise AssertionError("not run: no backup was created")
    s.extracted = s.root / "restore"
    s.files_restored = restore_archive(s.archive, s.manifest, s.extracted, False, lambda _r: None)
    return f"{s.files_restored} files extracted"


def check_checksums(s: Scratch) -> str:
    if s.manifest is None or s.extracted is None:
        raise AssertionError("not run: nothing was extracted")
    compared = against_source = 0
    problems: list[str] = []
    for entry in s.manifest.iter_files():
        if entry.type != "file":
            continue
        path = s.extracted / entry.path
        if not path.is_file():
            problems.append(f"{entry.path} missing")
            continue
        digest = _sha256(path)
        compared += 1
        if digest != entry.sha256:
            problems.append(f"{entry.path} differs from the manifest")
        source = s.settings.app_dir / entry.path  # unchanged: the mtime the archive recorded
        if source.is_file() and int(source.stat().st_mtime) == int(path.stat().st_mtime):
            against_source += 1
            if _sha256(source) != digest:
                problems.append(f"{entry.path} differs from the unchanged source file")
    if problems:
        raise AssertionError(f"{len(problems)} problem(s): " + "; ".join(problems[:3]))
    return f"{compared} files match the manifest, {against_source} also the source files"


def check_manifest(s: Scratch) -> str:
    from lifeos_backup.jobs.backups import verify_backup

    if s.manifest is None:
        raise AssertionError("not run: no backup was created")
    verified = verify_backup(s.manifest.backup_id, s.settings, s.catalog)
    if verified.backup_id != s.manifest.backup_id or verified.kind != "json":
        raise AssertionError("manifest names another backup or kind")
    entries = sum(1 for f in verified.iter_files() if f.type == "file")
    if s.extracted is not None and entries != s.files_restored:
        raise AssertionError(f"manifest lists {entries} files, {s.files_restored} were extracted")
    if s.catalog.get(s.manifest.backup_id).status != VERIFIED:
        raise AssertionError("catalog does not mark the backup verified")
    return f"archive SHA-256 and {entries} members match; format {verified.format_version}"


def check_rollback(s: Scratch, real: Settings) -> str:
    from lifeos_backup.kinds.postgres.conninfo import postgres_configured

    if not postgres_configured(real):
        raise Skipped("no PostgreSQL configured (LIFEOS_DATABASE_URL / PG* unset)")
    try:
        from lifeos_backup.app.rollback import rollback_to_json
    except ImportError:
        raise Skipped("rollback module not installed") from None
    report = rollback_to_json(real, None, dry_run=True)
    rows = sum(e.rows for e in report.entities)
    creates = sum(e.created for e in report.entities)
    changes = sum(e.changed for e in report.entities)
    return (
        f"{rows} rows in {len(report.entities)} entity types; would create {creates}, "
        f"change {changes} files (nothing written)"
    )


def check_rotation(s: Scratch, real: Settings) -> str:
    from lifeos_backup.jobs.backups import rotate
    from lifeos_backup.kinds.registry import KINDS
    from lifeos_backup.storage.repository import new_backup_id

    catalog = open_catalog(f"sqlite:///{s.root.resolve() / 'rotation.sqlite3'}")
    now = utcnow().replace(microsecond=0)
    ids = []
    for days in (30, 20, 10):  # three synthetic verified backups, oldest first
        when = now - timedelta(days=days)
        backup_id = new_backup_id("json", when)
        ids.append(backup_id)
        catalog.add_backup(
            Backup(
                id=backup_id,
                kind="json",
                status=VERIFIED,
                path=f"json/{backup_id}.tar.zst",
                size=1,
                created_at=when,
                verified_at=when,
                reason="selftest rotation",
            )
        )
    settings = s.settings.model_copy(update={"retention_json": "last=1"})
    try:
        result = rotate("json", settings, catalog, dry_run=True)
        unchanged = all(catalog.get(i).status == VERIFIED for i in ids)
    finally:
        catalog.engine.dispose()
    planned = sorted(d.id for d in result.plan.delete)
    kept = [d.id for d in result.plan.keep]
    if planned != sorted(ids[:2]) or ids[2] not in kept:
        raise AssertionError(f"planned deletions {planned}, kept {kept}")
    if not unchanged:
        raise AssertionError("the dry run changed the catalog")
    real_catalog = open_catalog(real.effective_catalog_url)
    would = {k: len(rotate(k, real, real_catalog, dry_run=True).plan.delete) for k in KINDS}
    listed = ", ".join(f"{k} {n}" for k, n in would.items())
    return f"last=1 keeps the newest of 3, plans 2 deletions; real catalog would delete: {listed}"


def run_selftest(
    settings: Settings, *, keep: bool = False, on_check: Callable[[Check], None] | None = None
) -> SelftestReport:
    """Run the six checks in order in a fresh scratch area; a failing check never stops the rest."""
    root = private_dir(settings.backup_root / SCRATCH) / f"{os.getpid()}-{int(time.time())}"
    private_dir(root)
    scratch_settings = settings.model_copy(
        update={
            "backup_root": root / "backups",
            "catalog_url": f"sqlite:///{root.resolve() / 'catalog.sqlite3'}",
        }
    )
    scratch = Scratch(root, scratch_settings, open_catalog(scratch_settings.effective_catalog_url))
    steps: list[tuple[str, Callable[[], str]]] = [
        ("backup creation", lambda: check_creation(scratch)),
        ("extraction", lambda: check_extraction(scratch)),
        ("checksum integrity", lambda: check_checksums(scratch)),
        ("manifest verification", lambda: check_manifest(scratch)),
        ("rollback dry run", lambda: check_rollback(scratch, settings)),
        ("rotation dry run", lambda: check_rotation(scratch, settings)),
    ]
    report = SelftestReport(workdir=str(root), kept=keep)
    try:
        for number, (name, step) in enumerate(steps, 1):
            clock = time.monotonic()
            try:
                status, detail = PASS, step()
            except Skipped as exc:
                status, detail = SKIP, str(exc)
            except Exception as exc:  # every failure is a result of the self-test
                log.debug("selftest check %s failed", name, exc_info=True)
                status, detail = FAIL, str(exc) or type(exc).__name__
            check = Check(number, name, status, detail, time.monotonic() - clock)
            report.checks.append(check)
            if on_check is not None:
                on_check(check)
    finally:
        scratch.catalog.engine.dispose()
        if not keep:
            for folder, _dirs, _files in os.walk(root):
                os.chmod(folder, DIR_MODE)
            shutil.rmtree(root, ignore_errors=True)
            with contextlib.suppress(OSError):  # the parent, once no other selftest uses it
                root.parent.rmdir()
    return report
