"""Commands for working with the main app: rollback to JSON, entity restore, feature flags.

Importing this module registers these commands on the Typer apps of lifeos_backup.cli.common
(lifeos_backup.cli.commands imports it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from lifeos_backup.cli.common import app, catalog, err, out, restore_app, settings
from lifeos_backup.core.errors import PermanentError

if TYPE_CHECKING:  # redis and the flags module are imported by the commands that use them
    import redis

    from lifeos_backup.app import flags

flags_app = typer.Typer(no_args_is_help=True, help="Feature flags of the main app (in Redis).")
app.add_typer(flags_app, name="flags")

ActorOption = Annotated[
    str | None, typer.Option("--actor", help="Who makes the change (default: $USER).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="JSON for scripts.")]


def _actor(actor: str | None = None) -> str:
    return actor or os.environ.get("USER") or "operator"


def _print_json(document: Any) -> None:
    print(json.dumps(document, indent=2, default=str))


# Rollback to JSON ---------------------------------------------------------------------------


@app.command("rollback-to-json")
def rollback_to_json(
    dry_run: Annotated[
        bool, typer.Option(help="Only count files to create/change/leave; write nothing.")
    ] = False,
    backup_first: Annotated[
        bool, typer.Option(help="First run a JSON backup on the workers and wait until verified.")
    ] = False,
    entity_type: Annotated[
        list[str] | None, typer.Option(help="Only this entity type (repeatable).")
    ] = None,
    as_json: JsonOption = False,
    timeout: Annotated[
        float, typer.Option(min=0, help="Seconds to wait for --backup-first.")
    ] = 3600,
) -> None:
    """Export the app's entities from PostgreSQL into its JSON files under APP_DIR/data/."""
    from lifeos_backup.app import rollback

    s = settings()
    entities = rollback.select_entities(rollback.parse_entities(s.rollback_entities), entity_type)
    backup_id = None
    if backup_first and dry_run:
        err.print("dry run: no backup needed, none taken")
    elif backup_first:
        err.print("backing up the JSON files first (waiting until verified) ...")
        backup_id = rollback.backup_first(s, _actor(), timeout)
        err.print(f"backup {backup_id} verified")
    report = rollback.rollback_to_json(
        s,
        catalog(),
        entity_types=[e.name for e in entities],
        dry_run=dry_run,
        backup_id=backup_id,
        actor=_actor(),
    )
    if as_json:
        _print_json(report.as_dict())
        return
    verb = "would be " if dry_run else ""
    table = Table(
        "entity type",
        "folder",
        "rows",
        f"{verb}created",
        f"{verb}changed",
        "unchanged",
        "orphaned (left)",
        title=f"rollback to JSON into {report.data_dir}" + (" (dry run)" if dry_run else ""),
    )
    for e in report.entities:
        counts = (e.rows, e.created, e.changed, e.unchanged, e.orphaned)
        table.add_row(e.entity_type, e.folder, *map(str, counts))
    out.print(table)
    if dry_run:
        err.print("dry run: nothing was written")


# Entity restore -----------------------------------------------------------------------------

_STATUS = {
    False: {
        "missing": "deleted in production: would insert",
        "differs": "would update",
        "same": "same as production",
    },
    True: {"missing": "inserted", "differs": "updated", "same": "same as production (left)"},
}


@restore_app.command("entity")
def restore_entity(
    backup: Annotated[str, typer.Option(help="PostgreSQL backup id to take the row from.")],
    table: Annotated[str, typer.Option(help="Table of the row (name or schema.name).")],
    id_value: Annotated[str, typer.Option("--id", help="Primary key value of the row.")],
    with_children: Annotated[
        bool, typer.Option(help="Also the rows referencing it by foreign key, recursively.")
    ] = False,
    apply: Annotated[
        bool,
        typer.Option(
            help="Write the rows back to production in one transaction (nothing when "
            "production already holds them as the backup has them)."
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Show one row (and its children) from a backup beside production; --apply writes it back.

    The tables are restored into a scratch database <db>_entity_<timestamp> that is always dropped.
    """
    from lifeos_backup.app.entity_restore import restore_entity as run
    from lifeos_backup.cli.common import progress_bar, require_kind

    require_kind(backup, "postgres")

    with progress_bar(f"restore {table} from {backup}") as show:
        result = run(
            settings(),
            catalog(),
            backup,
            table,
            id_value,
            with_children=with_children,
            apply=apply,
            actor=_actor(),
            progress=show,
        )
    if as_json:
        _print_json(result.as_dict())
        return
    out.print(f"{result.table} {id_value} in backup {result.backup_id}:", highlight=False)
    out.print_json(json.dumps(result.rows[0].backup, default=str))
    words = _STATUS[result.applied]
    table_view = Table("table", "key", "status", "differences (production -> backup)")
    for row in result.rows:
        diff = "; ".join(
            f"{c}: {json.dumps(old, default=str)[:60]} -> {json.dumps(new, default=str)[:60]}"
            for c, (old, new) in row.differences.items()
        )
        key = ", ".join(f"{k}={v}" for k, v in row.key.items())
        table_view.add_row(row.table, key, words[row.status], diff)
    out.print(table_view)
    if result.applied:
        err.print(f"written back in one transaction; catalog action {result.action_id}")
    elif apply and result.nothing_to_change:
        children = len(result.rows) - 1
        rows = f" and the {children} rows referencing it" if children else ""
        err.print(
            f"nothing to change: production already holds {result.table} {id_value}{rows} as "
            f"in backup {result.backup_id}; nothing was written or recorded",
            highlight=False,
        )
    else:
        err.print("nothing was written: pass --apply to write these rows back")
    err.print(f"scratch database {result.scratch_database} dropped")


# Feature flags ------------------------------------------------------------------------------


def _flags_redis() -> redis.Redis:
    import redis

    s = settings()
    return redis.Redis.from_url(s.flags_redis_url or s.require_redis_url(), decode_responses=True)


@contextmanager
def _flag_errors() -> Iterator[None]:
    """Invalid names and values are expected mistakes: one `error:` line, exit 1."""
    from lifeos_backup.app import flags

    try:
        yield
    except flags.FlagError as exc:
        raise PermanentError(exc.what, exc.detail, exc.hint) from None


def _record(change: flags.Change, action: str) -> None:
    """Print the change and, if it changed anything, add it to the catalog's audit trail."""
    who = f" for user {change.user}" if change.user else ""
    if not change.changed:
        out.print(f"{change.flag}{who} already {change.new or 'unset'}; nothing changed")
        return
    catalog().record_action(
        action,
        change.flag,
        change.actor,
        {"user": change.user, "old": change.old, "new": change.new, "at": change.at},
    )
    out.print(
        f"{change.flag}{who}: {change.old or 'unset'} -> {change.new or 'unset'}", highlight=False
    )


@flags_app.command("list")
def flags_list(as_json: JsonOption = False) -> None:
    """Every flag, its value and how many users override it."""
    from lifeos_backup.app import flags

    states = flags.list_flags(_flags_redis())
    if as_json:
        _print_json([{"name": f.name, "value": f.value, "overrides": f.overrides} for f in states])
        return
    table = Table("flag", "value", "user overrides")
    for f in states:
        table.add_row(f.name, f.value or "(unset: off)", str(len(f.overrides)))
    out.print(table)


@flags_app.command("get")
def flags_get(name: str, as_json: JsonOption = False) -> None:
    """One flag: value, per-user overrides and its recent changes."""
    from lifeos_backup.app import flags

    client = _flags_redis()
    with _flag_errors():
        state = flags.get_flag(client, name)
        changes = flags.history(client, name)
    if as_json:
        _print_json(
            {
                "name": state.name,
                "value": state.value,
                "overrides": state.overrides,
                "history": [c.__dict__ for c in changes],
            }
        )
        return
    out.print(f"{state.name} = {state.value or '(unset: off)'}", highlight=False)
    if state.overrides:
        table = Table("user", "override", title="user overrides")
        for user, value in state.overrides.items():
            table.add_row(user, value)
        out.print(table)
    if changes:
        table = Table("when (UTC)", "who", "user", "old", "new", title="recent changes")
        for c in changes:
            table.add_row(c.at[:19], c.actor, c.user or "", c.old or "-", c.new or "-")
        out.print(table)


@flags_app.command("set")
def flags_set(name: str, value: str, actor: ActorOption = None) -> None:
    """Set a flag: true, false, or a rollout percentage N% (0-100)."""
    from lifeos_backup.app import flags

    with _flag_errors():
        change = flags.set_flag(_flags_redis(), name, value, _actor(actor))
    _record(change, "flag.set")


@flags_app.command("set-user")
def flags_set_user(name: str, user: str, value: str, actor: ActorOption = None) -> None:
    """Force a flag on (true) or off (false) for one user, whatever the rollout."""
    from lifeos_backup.app import flags

    with _flag_errors():
        change = flags.set_user(_flags_redis(), name, user, value, _actor(actor))
    _record(change, "flag.set_user")


@flags_app.command("unset-user")
def flags_unset_user(name: str, user: str, actor: ActorOption = None) -> None:
    """Remove one user's override; the flag's own value applies to them again."""
    from lifeos_backup.app import flags

    with _flag_errors():
        change = flags.unset_user(_flags_redis(), name, user, _actor(actor))
    _record(change, "flag.unset_user")
