"""Commands for off-site copies and encryption keys, registered on the main `lifeos-backup` app.

`offsite sync|upload|rotate` run here, in the CLI's process (not on a worker), holding the same
Redis locks as the tasks, so they never run beside a worker doing the same.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from lifeos_backup.cli.common import app, audited, catalog, err, out, progress_bar, settings
from lifeos_backup.core.errors import ConfigError, LifeosError

if TYPE_CHECKING:
    from lifeos_backup.jobs.locks import HeldLock

offsite_app = typer.Typer(no_args_is_help=True, help="Off-site copies (S3-compatible storage).")
app.add_typer(offsite_app, name="offsite")


@contextmanager
def _lock(name: str) -> Iterator[HeldLock]:
    import redis

    from lifeos_backup.jobs.locks import exclusive

    s = settings()
    client = redis.Redis.from_url(s.require_redis_url())
    with exclusive(client, name, s.lock_ttl, f"cli:{os.getpid()}") as held:
        yield held


@offsite_app.command("sync")
def sync_command() -> None:
    """Re-check remote copies, upload what is missing, apply remote retention (as the daily job)."""
    from lifeos_backup.jobs.deletion import finish_deletions
    from lifeos_backup.storage.offsite.sync import sync
    from lifeos_backup.storage.offsite.targets import require_targets

    targets = require_targets(settings())
    with (
        audited(catalog(), "offsite.sync", "off-site copies") as entry,
        _lock("offsite-sync"),
        progress_bar("off-site sync") as show,
    ):
        entry.location = ", ".join(t.where for t in targets)
        report = sync(settings(), catalog(), _lock, show)
        finish_deletions(settings(), catalog(), f"cli:{os.getpid()}")  # a killed `forget`'s
        entry.detail["result"] = report.as_dict()
        entry.status = "failed" if report.failed else None
    print(json.dumps(report.as_dict(), indent=2))
    if report.failed:
        raise LifeosError(
            f"{len(report.failed)} backup(s) could not be uploaded",
            "; ".join(f"{k}: {v}" for k, v in report.failed.items())[:2000],
        )


@offsite_app.command("upload")
def upload_command(backup_id: str) -> None:
    """Upload one verified backup now (resuming an interrupted upload)."""
    from lifeos_backup.storage.offsite.s3 import require_bucket
    from lifeos_backup.storage.offsite.upload import upload_backup

    require_bucket(settings())
    with (
        audited(catalog(), "upload", backup_id) as entry,
        _lock(f"upload:{backup_id}"),
        progress_bar(f"upload {backup_id}") as show,
    ):
        entry.backup_id = backup_id
        done = upload_backup(backup_id, settings(), catalog(), show)
        assert done is not None
        entry.location = f"s3://{settings().s3_bucket}/{done.key}"
    verb = "already off-site" if done.adopted else f"uploaded in {done.seconds:.1f}s"
    out.print(f"{backup_id} {verb}: {done.key}", highlight=False)


@offsite_app.command("rotate")
def rotate_command(
    dry_run: Annotated[bool, typer.Option(help="Only show what would be deleted.")] = False,
) -> None:
    """Apply each target's retention (LIFEOS_RETENTION_OFFSITE by default) to its copies (never
    the newest of a kind)."""
    from lifeos_backup.storage.offsite.sync import expire_remote
    from lifeos_backup.storage.offsite.targets import connect, require_targets

    table = Table("id", "target", "action", "why")
    for target in require_targets(settings()):
        remote = connect(target, settings())
        with _lock("offsite-sync"):
            decided = expire_remote(remote, settings(), catalog(), dry_run, target)
        for d in decided:
            action = "would delete" if dry_run else "deleted"
            table.add_row(d.id, target.name, action, ", ".join(d.reasons))
    out.print(table)


@app.command("keygen")
def keygen(
    output: Annotated[Path, typer.Option(help="Identity file to create (mode 0600).")],
) -> None:
    """Create an age key pair: the private identity goes to OUTPUT, the public key is printed.

    Put the printed age1... key into LIFEOS_ENCRYPTION_RECIPIENTS on the backup machines; keep
    OUTPUT offline (it is needed only to restore). Compatible with `age`/`rage`.
    """
    from lifeos_backup.formats.crypto import generate_identity

    if output.exists():
        raise ConfigError(f"{output} exists", hint="choose another file; keys are never replaced")
    try:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise ConfigError(
            f"cannot create {output}",
            exc.strerror or str(exc),
            "choose a file in a folder that exists and that you may write to",
        ) from None
    identity, recipient = generate_identity()
    with os.fdopen(fd, "w") as handle:
        handle.write(f"# created by lifeos-backup keygen\n# public key: {recipient}\n{identity}\n")
    err.print(f"private key written to {output}; keep it offline")
    out.print(recipient, highlight=False)
