"""`lifeos-backup audit`: read the audit trail, verify its hash chain, rotate it.

Listing reads the trail through the catalog's read-only view (lifeos_backup.storage.catalog.view),
without SQLAlchemy; verify and rotate import lifeos_backup.storage.audit when they run, so that
`--help` loads neither.

Registered on the main app when lifeos_backup.cli.commands imports it, like the other groups.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from lifeos_backup.cli.common import app, catalog, catalog_view, err, human_size, out, settings
from lifeos_backup.core.errors import ConfigError, PermanentError

audit_app = typer.Typer(
    help="The audit trail: who backed up, verified, uploaded, restored, drilled, rotated, "
    "rolled back or changed a flag, when, with what result.",
    invoke_without_command=True,
)
app.add_typer(audit_app, name="audit")


class AuditVerifyFailed(PermanentError):
    """`audit verify` found records that do not fit the chain."""


def check_since(value: str | None) -> str | None:
    """`--since` that is no duration or date, or reaches before the year 1: a usage error."""
    from lifeos_backup.storage import audit_query as audit

    if value is not None:
        try:
            audit.parse_since(value)
        except ConfigError as exc:
            raise typer.BadParameter(f"{exc.what.removeprefix('--since ')} ({exc.hint})") from None
    return value


def check_action(value: str | None) -> str | None:
    """An `--action` no record can have is a usage error naming the actions, not an empty list."""
    from lifeos_backup.storage import audit_query as audit

    if value is None or value in audit.action_filters():
        return value
    groups = sorted(set(audit.action_filters()) - set(audit.ACTIONS))
    raise typer.BadParameter(
        f"{value!r} is not an audit action; choose from: {', '.join(audit.ACTIONS)}; "
        f"or a group: {', '.join(groups)}"
    )


@audit_app.callback()
def audit_list(
    ctx: typer.Context,
    since: Annotated[
        str | None,
        typer.Option(
            help="Only records since: 7d, 24h, 30m, 2w or an ISO date.", callback=check_since
        ),
    ] = None,
    action: Annotated[
        str | None,
        typer.Option(
            help="Only this action, or a group of them (`restore` finds restore.*).",
            callback=check_action,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON array for scripts.")] = False,
) -> None:
    """List audit records, oldest first (without a subcommand)."""
    if ctx.invoked_subcommand is not None:
        return
    from lifeos_backup.storage import audit_query as audit

    moment = audit.parse_since(since) if since else None
    with catalog_view() as view:
        rows = [audit.as_dict(r) for r in view.actions(since=moment, action=action)]
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    table = Table(
        "id", "time (UTC)", "initiator", "action", "target", "status", "size", "duration",
        "location",
    )  # fmt: skip
    for r in rows:
        duration = "-" if r["duration_s"] is None else f"{r['duration_s']:.1f} s"
        status = r["status"] or "-"
        colour = "green" if status == audit.SUCCEEDED else "red"
        table.add_row(
            str(r["id"]), r["at"][:19], r["initiator"], r["action"], r["target"],
            f"[{colour}]{status}[/]", human_size(r["size"]), duration, r["location"] or "",
        )  # fmt: skip
    out.print(table)


@audit_app.command("verify")
def audit_verify(
    as_json: Annotated[bool, typer.Option("--json", help="JSON for scripts.")] = False,
) -> None:
    """Check the hash chain: an edited or deleted record is named; exit 1 if any."""
    from lifeos_backup.storage import audit

    result = audit.verify(catalog())
    if as_json:
        print(json.dumps(result.as_dict(), indent=2))
    elif result.ok:
        out.print(
            f"audit trail intact: {result.checked} records chained from record "
            f"{result.base_id} (rotation base) to {result.head_id}"
        )
    else:
        for problem in result.problems:
            err.print(f"record {problem.record_id}: {problem.what}", highlight=False)
    if not result.ok:
        first = result.problems[0]
        raise AuditVerifyFailed(
            f"audit trail tampered: {len(result.problems)} problem(s) in {result.checked} records",
            f"first: record {first.record_id} {first.what}",
            "restore the catalog from a copy, or keep this one as evidence",
        )


@audit_app.command("rotate")
def audit_rotate(
    dry_run: Annotated[bool, typer.Option(help="Only count what would be removed.")] = False,
) -> None:
    """Remove records older than LIFEOS_AUDIT_RETENTION_DAYS (what Beat runs daily)."""
    from lifeos_backup.storage import audit

    days = settings().audit_retention_days
    count = audit.rotate(catalog(), days, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    out.print(f"{verb} {count} audit records older than {days} days")
