"""`list`, `show` and `catalog rebuild`: what the catalog knows about the backups."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from lifeos_backup.cli.common import (
    KindOption,
    app,
    catalog_view,
    check_source,
    human_size,
    out,
    progress_bar,
    require_repository,
    settings,
    warn,
)

if TYPE_CHECKING:
    from lifeos_backup.storage.catalog.view import BackupRow
    from lifeos_backup.storage.offsite.download import KeyNeeded

catalog_app = typer.Typer(no_args_is_help=True, help="Maintain the catalog.")
app.add_typer(catalog_app, name="catalog")


def _row(b: BackupRow, held: dict[str, dict[str, str | None]] | None = None) -> dict[str, Any]:
    from lifeos_backup.storage.offsite.places import location

    return {
        "id": b.id,
        "kind": b.kind,
        "status": b.status,
        "location": location(b, settings().backup_root),  # local, offsite, both or none
        "offsite_status": b.offsite_status,
        "offsite_error": b.offsite_error,
        # The copy's status on each target that was ever tried: {"s3": "uploaded", ...}.
        "offsite_targets": dict((held or {}).get(b.id, {})),
        "created_at": b.created_at.isoformat(),
        "size": b.size,
        "path": str(settings().backup_root / b.path),
        "reason": b.reason,
        "initiator": b.initiator,
        "verified_at": b.verified_at.isoformat() if b.verified_at else None,
        "error": b.error,
    }


def good_targets(held: dict[str, str | None]) -> str:
    """The targets holding a good copy, by name: `gcs-eu+s3-eu` (`-` when none)."""
    return "+".join(sorted(t for t, status in held.items() if status == "uploaded")) or "-"


@app.command("list")
def list_backups(
    kind: KindOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON array for scripts.")] = False,
) -> None:
    """List backups, newest first."""
    with catalog_view() as view:
        held = view.copy_statuses()
        rows = [_row(b, held) for b in view.backups(kind=kind)]
    if as_json:
        out.print_json(json.dumps(rows)) if out.is_terminal else print(json.dumps(rows))
        return
    table = Table("id", "kind", "status", "location", "targets", "created (UTC)", "size", "reason")
    for r in rows:
        table.add_row(
            r["id"],
            r["kind"],
            r["status"],
            r["location"],
            good_targets(r["offsite_targets"]),
            r["created_at"][:19],
            human_size(r["size"]),
            r["reason"],
        )
    out.print(table)


@app.command()
def show(backup_id: str) -> None:
    """Show one backup: catalog record and manifest summary."""
    from lifeos_backup.formats.manifest import read_manifest
    from lifeos_backup.storage.repository import locate

    with catalog_view() as view:
        row, _archive, mpath = locate(settings(), view, backup_id)
    info = _row(row)
    if mpath.exists():
        m = read_manifest(mpath)
        info["manifest"] = {
            "path": str(mpath),
            "archive_sha256": m.archive.sha256,
            "compression": f"{m.compression.algorithm} {m.compression.level}",
            "files": sum(1 for f in m.iter_files() if f.type == "file"),
            "sources": [s.model_dump() for s in m.sources],
            "host": m.host,
            "tool_version": m.tool_version,
            "facts": m.facts,
        }
    print(json.dumps(info, indent=2, default=str))


def _print_listed(needed: KeyNeeded) -> None:
    """What the bucket tells without the private key: one row per backup."""
    table = Table("id", "kind", "created (UTC)", "size", "manifest")
    for item in needed.listed:
        size = human_size(item.archive_size) if item.archive_size is not None else "no archive"
        table.add_row(
            item.backup_id,
            item.kind,
            item.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            size,
            "sealed" if item.sealed else "clear",
        )
    out.print(table)


@catalog_app.command("rebuild")
def catalog_rebuild(
    source: Annotated[
        str,
        typer.Option(
            "--from",
            help="local (manifests on disk) or offsite (the bucket).",
            callback=check_source,
        ),
    ] = "local",
    trust_manifests: Annotated[
        bool,
        typer.Option(
            "--trust-manifests",
            help="Do not re-read the archives: list them unverified (never verified).",
        ),
    ] = False,
) -> None:
    """Recreate the catalog from the repository, re-checking every archive (exit 0 once it is
    rebuilt; what was skipped is named in warnings and the summary). A corrupt or missing
    catalog file is replaced by a new one; the old file is kept aside."""
    from lifeos_backup.jobs import rebuild

    s = settings()
    if source == "offsite":  # disaster recovery: may create the repository
        from lifeos_backup.storage.offsite.download import KeyNeeded

        try:
            report, _found = rebuild.rebuild_offsite(s, warn=warn)
        except KeyNeeded as exc:  # sealed manifests, no key: what the listing shows, then why
            _print_listed(exc)
            raise
    else:
        require_repository(s)
        with progress_bar("catalog rebuild") as show:
            report = rebuild.rebuild_local(s, trust=trust_manifests, progress=show, warn=warn)
    for line in rebuild.summary(report, source):
        out.print(line, highlight=False, markup=False, soft_wrap=True)
