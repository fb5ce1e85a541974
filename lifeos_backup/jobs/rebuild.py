"""`catalog rebuild`: the catalog recreated from the backup repository, every claim re-checked.

A manifest describes a backup but proves nothing: a damaged archive keeps its manifest, and a
manifest can be edited. So the rebuild re-reads every archive against its manifest (the check
`verify` makes) and lists only what it saw: `verified` (checked now), `failed` (with the reason),
`unverified` (`--trust-manifests`: not re-read, so never `verified`) or `incomplete` (an archive
without its manifest). Nothing on disk is dropped silently; a manifest that is invalid (not
JSON, an id or archive name that is not the repository's pattern, a file name that is not the
id inside it) is reported and skipped.

It runs beside working workers: the checks happen outside any catalog transaction, each while
holding the backup's lease (a busy lease means a worker is writing or verifying that backup
right now: its row is left as it is); then every row change is applied in one transaction, in
place (audit trail, drills, task runs and off-site columns stay), and a row that a worker
changed during the checks keeps the worker's version.

Which catalog it fills (lifeos_backup.storage.catalog.generations): the current one when it opens
and passes `PRAGMA quick_check`; otherwise (not a database, corrupt, not a catalog) a new
generation, swapped in at the end, the old file kept aside for inspection.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lifeos_backup.core.errors import InvalidName, LifeosError, VerificationFailed
from lifeos_backup.core.fsutil import PARTIAL_SUFFIX, remove_quietly
from lifeos_backup.core.names import (
    LAYOUTS,
    check_backup_id,
    created_at_of_id,
    is_backup_id,
    layout,
    split_file_name,
)
from lifeos_backup.core.progress import Progress, ProgressFn, ignore
from lifeos_backup.core.settings import Settings
from lifeos_backup.formats.manifest import MANIFEST_SUFFIX, Manifest, read_manifest
from lifeos_backup.jobs.backups import check_files
from lifeos_backup.jobs.leases import holder_of, try_lease
from lifeos_backup.storage.catalog import Backup, Catalog, open_catalog
from lifeos_backup.storage.catalog import generations as gens
from lifeos_backup.storage.catalog.store import (
    CREATED,
    DELETED,
    FAILED,
    INCOMPLETE,
    RUNNING,
    UNVERIFIED,
    VERIFIED,
    sqlite_file,
    utcnow,
)
from lifeos_backup.storage.offsite.state import remote_only

Warn = Callable[[str], None]
# The columns a worker changes as a backup lives: a row whose values differ from those read
# before the checks was changed meanwhile, and the rebuild leaves it as the worker made it.
WATCHED = ("status", "path", "size", "sha256", "verified_at", "error", "finished_at")
TRUSTED = "not re-read: listed from its manifest by `catalog rebuild --trust-manifests`"
NO_MANIFEST = (
    "archive without its manifest (found by catalog rebuild): it cannot be checked or "
    "restored as it is"
)


# ----------------------------------------------------------------------------- results


@dataclass
class Change:
    """What the rebuild sets on one row (other columns of an existing row stay); `fields` None
    removes the row (only rows whose id is not a backup id)."""

    backup_id: str
    fields: dict[str, Any] | None


@dataclass
class Report:
    """What a rebuild found and did; the CLI prints it."""

    statuses: Counter[str] = field(default_factory=Counter)  # rows set, by status
    found: list[str] = field(default_factory=list)  # ids with files on disk that got a row
    vanished: list[str] = field(default_factory=list)  # rows whose files are both gone
    in_progress: list[str] = field(default_factory=list)  # "<id> (<holder>)": left as they are
    changed_meanwhile: list[str] = field(default_factory=list)
    offsite_only: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # rows with an invalid id
    skipped: list[str] = field(default_factory=list)  # invalid manifests, one message each
    warnings: list[str] = field(default_factory=list)  # everything else worth a warning line
    database: Path | None = None  # the SQLite file filled
    fresh: bool = False  # a new generation replaced an unusable catalog
    problem: str | None = None  # why the old catalog was unusable
    aside: Path | None = None  # where the unusable catalog was kept
    kept: list[Path] = field(default_factory=list)  # earlier catalogs still on disk
    started: float = field(default_factory=time.monotonic)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started


@dataclass
class Context:
    """What every judgement needs: settings, the mode, where results and warnings go."""

    settings: Settings
    trust: bool
    report: Report
    warn_sink: Warn
    progress: Overall

    def skip(self, text: str) -> None:
        """An invalid manifest: reported (one warning line), counted, skipped."""
        self.report.skipped.append(text)
        self.warn_sink(text)

    def warn(self, text: str) -> None:
        self.report.warnings.append(text)
        self.warn_sink(text)


class Overall:
    """One progress bar over all archives: the bytes of those checked plus the current one."""

    def __init__(self, sink: ProgressFn, count: int, total: int) -> None:
        self.sink, self.count, self.total = sink, count, total
        self.number, self.offset, self.backup_id = 0, 0, ""

    def start(self, backup_id: str) -> None:
        self.number += 1
        self.backup_id = backup_id

    def done(self, size: int) -> None:
        self.offset += size

    def __call__(self, report: Progress) -> None:
        self.sink(
            Progress(
                phase=f"backup {self.number}/{self.count} {self.backup_id} {report.phase}",
                files_done=report.files_done,
                files_total=report.files_total,
                bytes_done=self.offset + report.bytes_done,
                bytes_total=self.total,
            )
        )


# ----------------------------------------------------------------------------- what is on disk


@dataclass
class OnDisk:
    """The files of one backup id in its kind's folder."""

    backup_id: str
    kind: str
    manifest: Path | None = None
    archives: list[Path] = field(default_factory=list)
    partials: list[Path] = field(default_factory=list)  # `.<name>.partial`: being written


def _name_of(entry: Path, kind: str) -> tuple[str, str]:
    """(backup id, rest of the name) of a file in `kind`'s folder; InvalidName if it has none."""
    split = split_file_name(entry.name)
    if split is None:
        raise InvalidName(f"{entry.name!r} is not named after a backup id")
    check_backup_id(split[0], kind)
    created_at_of_id(split[0])  # the id's time must be a real one
    return split


def _is_manifest_name(entry: Path) -> bool:
    return entry.name.endswith(MANIFEST_SUFFIX) and not entry.name.startswith(".")


def _sort_file(entry: Path, kind: str, found: dict[str, OnDisk], ctx: Context) -> None:
    try:
        backup_id, rest = _name_of(entry, kind)
    except InvalidName as exc:
        if _is_manifest_name(entry):
            ctx.skip(f"skipped manifest {entry}: {exc}")
        return
    files = found.setdefault(backup_id, OnDisk(backup_id, kind))
    if entry.name.startswith("."):
        if rest.endswith(PARTIAL_SUFFIX):
            files.partials.append(entry)
    elif rest == MANIFEST_SUFFIX:
        files.manifest = entry
    elif rest in layout(kind).suffixes:
        files.archives.append(entry)
    elif _is_manifest_name(entry):
        ctx.skip(f"skipped manifest {entry}: not named <backup id>{MANIFEST_SUFFIX}")


def scan(root: Path, ctx: Context) -> dict[str, OnDisk]:
    """Every backup's files under the root, by id (names checked by lifeos_backup.core.names)."""
    found: dict[str, OnDisk] = {}
    for kind, lay in LAYOUTS.items():
        folder = root / lay.folder
        if folder.is_dir():
            for entry in sorted(folder.iterdir()):
                if entry.is_file() and not entry.is_symlink():
                    _sort_file(entry, kind, found, ctx)
    return found


# ----------------------------------------------------------------------------- judging


def _described(manifest: Manifest, archive: Path, root: Path) -> dict[str, Any]:
    """The row's descriptive columns, from the manifest."""
    return {
        "kind": manifest.kind,
        "path": str(archive.relative_to(root)),
        "size": manifest.archive.size,
        "sha256": manifest.archive.sha256,
        "reason": manifest.reason,
        "initiator": manifest.initiator,
        "host": manifest.host,
        "created_at": manifest.created_at,
        "finished_at": manifest.finished_at,
        "duration_s": (manifest.finished_at - manifest.created_at).total_seconds(),
    }


def _valid_manifest(files: OnDisk, ctx: Context) -> Manifest | None:
    """The manifest, or None after reporting why it is skipped."""
    assert files.manifest is not None
    try:
        manifest = read_manifest(files.manifest)
    except (VerificationFailed, OSError) as exc:
        ctx.skip(f"skipped manifest {files.manifest}: {exc}")
        return None
    if manifest.backup_id != files.backup_id:
        ctx.skip(
            f"skipped manifest {files.manifest}: it describes {manifest.backup_id}, "
            "not the backup its file is named after"
        )
        return None
    return manifest


def _unreadable_manifest(files: OnDisk, row: Backup | None) -> Change | None:
    """An invalid manifest vouches for nothing: a row the catalog has for it fails (as `verify`
    would conclude); no row is made from it."""
    if row is None or row.status in (DELETED, FAILED):
        return None
    return Change(
        files.backup_id,
        {"status": FAILED, "verified_at": None, "error": "manifest invalid (catalog rebuild)"},
    )


def _trusted(row: Backup | None, manifest: Manifest) -> dict[str, Any]:
    """--trust-manifests: what this catalog already proved about the same archive stays;
    everything else is unverified, never verified."""
    same = row is not None and (row.sha256, row.size) == (
        manifest.archive.sha256,
        manifest.archive.size,
    )
    if row is not None and same and row.status in (VERIFIED, FAILED, CREATED, UNVERIFIED):
        return {"status": row.status, "verified_at": row.verified_at, "error": row.error}
    return {"status": UNVERIFIED, "verified_at": None, "error": TRUSTED}


def _checked(archive: Path, manifest: Manifest, ctx: Context) -> dict[str, Any]:
    """Re-read the archive against its manifest: verified now, failed with the reason, or
    unverified when it could not be read for a reason that is not the archive's (a key)."""
    ctx.progress.start(manifest.backup_id)
    try:
        check_files(ctx.settings, archive, manifest, ctx.progress)
    except VerificationFailed as exc:
        return {"status": FAILED, "verified_at": None, "error": str(exc)[:4000]}
    except (LifeosError, OSError) as exc:
        ctx.warn(f"{manifest.backup_id} could not be checked: {exc}")
        return {"status": UNVERIFIED, "verified_at": None, "error": f"not checked: {exc}"[:4000]}
    finally:
        ctx.progress.done(manifest.archive.size)
    return {"status": VERIFIED, "verified_at": utcnow(), "error": None}


def _with_manifest(files: OnDisk, row: Backup | None, ctx: Context) -> Change | None:
    manifest = _valid_manifest(files, ctx)
    if manifest is None:
        return _unreadable_manifest(files, row)
    assert files.manifest is not None
    archive = files.manifest.with_name(manifest.archive.name)
    fields = _described(manifest, archive, ctx.settings.backup_root)
    if not archive.is_file():
        fields.update(
            status=FAILED, verified_at=None, error="archive missing on disk (catalog rebuild)"
        )
    elif ctx.trust:
        fields.update(_trusted(row, manifest))
    else:
        fields.update(_checked(archive, manifest, ctx))
    return Change(files.backup_id, fields)


def _incomplete(files: OnDisk, row: Backup | None, root: Path) -> Change:
    """An archive without its manifest: listed with its path, size and the time of its id."""
    archive = files.archives[0]
    fields: dict[str, Any] = {
        "kind": files.kind,
        "status": INCOMPLETE,
        "path": str(archive.relative_to(root)),
        "size": _size(archive),
        "sha256": None,
        "verified_at": None,
        "error": NO_MANIFEST,
    }
    if row is None:
        fields["created_at"] = created_at_of_id(files.backup_id)
    return Change(files.backup_id, fields)


def judge(files: OnDisk | None, row: Backup | None, ctx: Context) -> Change | None:
    """The row one backup gets, decided while holding its lease; None leaves it as it is."""
    root = ctx.settings.backup_root
    if files is not None and files.manifest is not None:
        return _with_manifest(files, row, ctx)
    if files is not None and files.archives:
        if files.partials or (row is not None and row.status == RUNNING):
            return None  # its task is finishing it, or the kind's next run cleans it up
        return _incomplete(files, row, root)
    if row is None or row.status in (DELETED, FAILED, RUNNING):
        return None  # nothing new to say; a running row belongs to its task or the clean-up
    ctx.report.vanished.append(row.id)
    return Change(
        row.id,
        {
            "status": FAILED,
            "verified_at": None,
            "error": "manifest and archive missing on disk (catalog rebuild)",
        },
    )


def _provisional(files: OnDisk | None, ctx: Context) -> Change | None:
    """A row for a backup a worker is busy with, so the worker's own update finds its row:
    `created` (unchecked) with a manifest, else `running`."""
    if files is None:
        return None
    root = ctx.settings.backup_root
    if files.manifest is not None:
        try:
            manifest = read_manifest(files.manifest)
        except (VerificationFailed, OSError):
            manifest = None
        if manifest is not None and manifest.backup_id == files.backup_id:
            fields = _described(manifest, files.manifest.with_name(manifest.archive.name), root)
            return Change(files.backup_id, {**fields, "status": CREATED, "error": None})
    names = [p.name.removeprefix(".").removesuffix(PARTIAL_SUFFIX) for p in files.partials]
    archive = (
        files.archives[0]
        if files.archives
        else (root / layout(files.kind).folder / (names[0] if names else files.backup_id))
    )
    return Change(
        files.backup_id,
        {
            "kind": files.kind,
            "status": RUNNING,
            "path": str(archive.relative_to(root)),
            "created_at": created_at_of_id(files.backup_id),
        },
    )


def _busy(files: OnDisk | None, row: Backup | None, ctx: Context, backup_id: str) -> Change | None:
    """A worker holds the lease: its row stays as it is; a catalog without one (new, or
    rebuilt after the file was lost) gets a provisional row for the worker to update."""
    holder = holder_of(ctx.settings.backup_root, backup_id) or {}
    what = f"{holder.get('what', 'in use')} by {holder.get('owner', '?')}"
    ctx.report.in_progress.append(f"{backup_id} ({what})")
    return _provisional(files, ctx) if row is None else None


def _leave_alone(files: OnDisk | None, row: Backup | None, ctx: Context) -> bool:
    """Rows the rebuild has nothing to say about: only off-site (their local files are gone by
    design), and rows without files whose status already says so."""
    if row is None:
        return False
    if remote_only(row, ctx.settings.backup_root) and (files is None or not files.archives):
        ctx.report.offsite_only.append(row.id)
        return True
    return files is None and row.status in (DELETED, FAILED, RUNNING)


def plan(found: dict[str, OnDisk], snapshot: dict[str, Backup], ctx: Context) -> list[Change]:
    """Every row change, decided outside any catalog transaction."""
    changes: list[Change] = []
    for backup_id in sorted(set(snapshot) - {b for b in snapshot if is_backup_id(b)}):
        ctx.warn(f"catalog row {backup_id!r} is not a backup id: removed")
        ctx.report.removed.append(backup_id)
        changes.append(Change(backup_id, None))
    for backup_id in sorted(set(found) | set(filter(is_backup_id, snapshot))):
        files, row = found.get(backup_id), snapshot.get(backup_id)
        if _leave_alone(files, row, ctx):
            continue
        with try_lease(ctx.settings.backup_root, backup_id, "cli", "rebuild") as free:
            change = judge(files, row, ctx) if free else _busy(files, row, ctx, backup_id)
        if change is not None:
            changes.append(change)
    return changes


# ----------------------------------------------------------------------------- applying


def _seen(row: Backup | None) -> tuple[Any, ...] | None:
    return None if row is None else tuple(getattr(row, name) for name in WATCHED)


def apply(catalog: Catalog, changes: list[Change], snapshot: dict[str, Backup]) -> list[str]:
    """All changes in one transaction (rows updated in place); returns the ids of rows a
    worker changed since the snapshot, which keep the worker's version."""
    meanwhile: list[str] = []
    with catalog.write_transaction() as s:
        for change in changes:
            row = s.get(Backup, change.backup_id)
            if _seen(row) != _seen(snapshot.get(change.backup_id)):
                meanwhile.append(change.backup_id)
            elif change.fields is None:
                s.delete(row)
            elif row is None:
                s.add(Backup(id=change.backup_id, **change.fields))
            else:
                for name, value in change.fields.items():
                    setattr(row, name, value)
    return meanwhile


# ----------------------------------------------------------------------------- the target catalog


@contextmanager
def target_catalog(settings: Settings, report: Report) -> Iterator[Catalog]:
    """The catalog to fill: the current one when it is healthy (or PostgreSQL, or none yet:
    the opener makes one), else a new generation that replaces it when the block succeeds."""
    url = settings.effective_catalog_url
    pointer = sqlite_file(url)
    existing = gens.current(pointer) if pointer is not None else None
    problem = gens.problem_of(existing) if existing is not None else None
    if pointer is None or existing is None or problem is None:
        catalog = open_catalog(url)
        report.database = catalog.database_file
        yield catalog
        return
    replaced = gens.identity(existing)
    fresh = gens.new_generation(pointer)
    catalog = Catalog(f"sqlite:///{fresh}")
    report.database, report.fresh, report.problem = fresh, True, problem
    try:
        yield catalog
    except BaseException:
        catalog.engine.dispose()
        remove_quietly(fresh, *(Path(f"{fresh}{suffix}") for suffix in gens.SIDECARS))
        raise
    catalog.engine.dispose()
    report.aside = gens.swap(pointer, fresh, existing, replaced)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # gone since the scan: judged (and reported) when its turn comes
        return 0


def _archive_bytes(found: dict[str, OnDisk]) -> tuple[int, int]:
    """(count, bytes) of the archives a checking rebuild will read (for the progress bar)."""
    sizes = [_size(f.archives[0]) for f in found.values() if f.manifest and f.archives]
    return len(sizes), sum(sizes)


def rebuild_local(
    settings: Settings,
    *,
    trust: bool = False,
    progress: ProgressFn = ignore,
    warn: Warn = lambda _text: None,
) -> Report:
    """Rebuild the catalog from the repository on disk (see the module's docstring)."""
    report = Report()
    with target_catalog(settings, report) as catalog:
        snapshot = {row.id: row for row in catalog.list()}
        ctx = Context(settings, trust, report, warn, Overall(ignore, 0, 0))
        found = scan(settings.backup_root, ctx)
        if not trust:
            ctx.progress = Overall(progress, *_archive_bytes(found))
        changes = plan(found, snapshot, ctx)
        report.changed_meanwhile = apply(catalog, changes, snapshot)
    _count(report, changes, found)
    _finish(settings, report, "local")
    return report


def rebuild_offsite(
    settings: Settings, *, warn: Warn = lambda _text: None
) -> tuple[Report, list[str]]:
    """Rebuild from the manifests in the bucket (lifeos_backup.storage.offsite.download) into the
    same target as a local rebuild; invalid remote manifests are reported and skipped. Every
    manifest is read before the catalog is touched, so sealed manifests without their key
    (KeyNeeded) or a wrong key leave the catalog as it was."""
    from lifeos_backup.storage.offsite.download import add_to_catalog, scan_offsite
    from lifeos_backup.storage.offsite.s3 import require_bucket

    require_bucket(settings)  # before the catalog is touched: nothing to rebuild from
    report = Report()

    def skip(text: str) -> None:
        report.skipped.append(text)
        warn(text)

    remote_backups = scan_offsite(settings, skip)
    with target_catalog(settings, report) as catalog:
        found = add_to_catalog(catalog, remote_backups)
    report.found = found
    _finish(settings, report, "offsite")
    return report, found


def _finish(settings: Settings, report: Report, source: str) -> None:
    """Name the earlier catalogs still on disk, and record the rebuild in the audit trail of
    the catalog now in use (a new catalog's trail starts with it)."""
    from lifeos_backup.storage.audit import SUCCEEDED, AuditEntry, record_quietly

    pointer = sqlite_file(settings.effective_catalog_url)
    report.kept = gens.kept_aside(pointer) if pointer is not None else []
    entry = AuditEntry(target=str(report.database or settings.effective_catalog_url))
    entry.detail = {
        "from": source,
        "found": len(report.found),
        "statuses": dict(report.statuses),
        "skipped": len(report.skipped),
        "in_progress": report.in_progress,
        "replaced": report.problem,
        "kept_aside": str(report.aside) if report.aside else None,
    }
    catalog = open_catalog(settings.effective_catalog_url)
    record_quietly(catalog, "catalog.rebuild", entry, None, SUCCEEDED, report.seconds)


def _count(report: Report, changes: list[Change], found: dict[str, OnDisk]) -> None:
    """Rows set for backups found on disk, by status (rows whose files are both gone are
    counted apart, in `vanished`)."""
    skipped = set(report.changed_meanwhile)
    for change in changes:
        if change.fields is None or change.backup_id in skipped or change.backup_id not in found:
            continue
        report.statuses[change.fields["status"]] += 1
        report.found.append(change.backup_id)


def summary(report: Report, source: str = "local") -> list[str]:
    """The lines `catalog rebuild` prints on stdout."""
    where = "in a new catalog" if report.fresh else "in place"
    if source == "offsite":
        lines = [f"catalog rebuilt from off-site {where}: {len(report.found)} backups found"]
    else:
        counts = ", ".join(f"{n} {status}" for status, n in sorted(report.statuses.items()))
        lines = [f"catalog rebuilt {where}: {len(report.found)} backups found ({counts or 'none'})"]
    if report.vanished:
        lines.append(f"{len(report.vanished)} backups lost both files: marked failed")
    for item in report.in_progress:
        lines.append(f"left as it is: {item}, in progress")
    for backup_id in report.changed_meanwhile:
        lines.append(f"left as it is: {backup_id}, changed by a worker during the rebuild")
    if report.offsite_only:
        lines.append(f"left as they are: {len(report.offsite_only)} backups only off-site")
    if report.skipped:
        lines.append(f"skipped: {len(report.skipped)} invalid manifests (see the warnings)")
    if report.fresh:
        lines.append(f"the old catalog was unusable: {report.problem}")
        lines.append(
            f"the old catalog is kept at {report.aside}; its audit trail, drills and task "
            "history are not in the new catalog"
        )
    for path in report.kept:
        if path == report.aside:
            continue
        why = (
            "set aside as unusable"
            if gens.ASIDE in path.name
            else "superseded: its audit trail, drills and task history are not in the current "
            "catalog"
        )
        lines.append(f"earlier catalog kept at {path} ({why}; remove it when no longer needed)")
    return lines
