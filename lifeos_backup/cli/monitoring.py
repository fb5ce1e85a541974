"""Commands proving and watching the backups: drill, selftest, status, metrics.

They register themselves on the main `lifeos-backup` app (lifeos_backup.cli.commands imports
this module). Each runs in this process, against the same catalog the workers write
(docs/monitoring.md).
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from collections.abc import Iterator
from typing import Annotated, Any

import typer
from rich.table import Table

from lifeos_backup.cli.common import (
    app,
    audited,
    catalog,
    check_kind,
    err,
    human_size,
    out,
    progress_bar,
    require_repository,
    settings,
)
from lifeos_backup.core.errors import ConfigError

JsonOption = Annotated[bool, typer.Option("--json", help="JSON for scripts.")]


def _print_json(document: Any) -> None:
    print(json.dumps(document, indent=2, default=str))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


@contextlib.contextmanager
def _drill_lock(kind: str) -> Iterator[None]:
    """The kind's drill lock (the same one the workers take); without Redis, run unlocked."""
    import redis

    from lifeos_backup.jobs.locks import exclusive

    s = settings()
    try:
        client = redis.Redis.from_url(s.require_redis_url())
        client.ping()
    except (ConfigError, redis.RedisError) as exc:
        err.print(f"warning: no Redis lock for the drill ({exc}); make sure no other drill runs")
        yield
        return
    with exclusive(client, f"drill:{kind}", s.lock_ttl, "cli"):
        yield


@app.command()
def drill(
    kind: Annotated[
        str | None,
        typer.Option(
            help="Only this kind (json, postgres; basebackup: the point-in-time recovery drill).",
            callback=check_kind,
        ),
    ] = None,
    backup: Annotated[str | None, typer.Option(help="Drill this backup id.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Restore drill: restore a verified backup into scratch space, prove it, clean up.

    Without --kind: every dump kind; `--kind basebackup` recovers the newest base backup plus WAL
    to latest in a scratch cluster and measures its RPO and RTO.
    """
    from lifeos_backup.monitoring.drill import DrillFailed, kinds_to_drill, run_drill

    c = catalog()
    kinds = [c.get(backup).kind] if backup else [kind] if kind else kinds_to_drill(c)
    if not kinds:
        raise ConfigError("no verified backup of any kind to drill", hint="make a backup first")
    results = []
    for name in kinds:
        with (
            audited(c, "drill", backup or name) as entry,
            _drill_lock(name),
            progress_bar(f"drill {name}") as show,
        ):
            result = run_drill(settings(), c, name, backup, progress=show)
            results.append(result)
            entry.target, entry.backup_id = result.backup_id, result.backup_id
            entry.location = str(result.report_dir)
            entry.detail.update({"restore_s": result.restore_s, "error": result.error})
            entry.status = "succeeded" if result.passed else "failed"
    if as_json:
        _print_json([r.as_dict() for r in results])
    else:
        table = Table("kind", "backup", "result", "restore", "total", "report", "problem")
        for r in results:
            table.add_row(
                r.kind,
                r.backup_id,
                "[green]PASSED[/]" if r.passed else "[red]FAILED[/]",
                _duration(r.restore_s),
                _duration(r.duration_s),
                str(r.report_dir),
                r.error or "",
            )
        out.print(table)
    failed = [r for r in results if not r.passed]
    if failed:
        raise DrillFailed(
            f"restore drill failed for {', '.join(r.backup_id for r in failed)}",
            hint="read drill.log in the report folder",
        )


@app.command()
def selftest(
    keep: Annotated[bool, typer.Option(help="Keep the scratch area for inspection.")] = False,
    as_json: JsonOption = False,
) -> None:
    """The six checks of the old test script, in a scratch area; exit 1 on any FAIL."""
    from dataclasses import asdict

    from lifeos_backup.monitoring.selftest import FAIL, PASS, run_selftest

    require_repository(settings())  # its scratch area lies inside the repository
    report = run_selftest(settings(), keep=keep)
    if as_json:
        _print_json(
            {
                "ok": report.ok,
                "workdir": report.workdir,
                "kept": report.kept,
                "checks": [asdict(c) for c in report.checks],
            }
        )
    else:
        colour = {PASS: "green", FAIL: "red"}
        table = Table("#", "check", "result", "detail", "time", title="lifeos-backup selftest")
        for c in report.checks:
            style = colour.get(c.status, "yellow")
            table.add_row(
                str(c.number), c.name, f"[{style}]{c.status}[/]", c.detail, _duration(c.seconds)
            )
        out.print(table)
        if report.kept:
            out.print(f"scratch area kept in {report.workdir}")
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def status(as_json: JsonOption = False) -> None:
    """Per kind: newest good backup, drills, RPO/RTO; exit 0 healthy, 1 degraded, 2 critical."""
    from lifeos_backup.monitoring.status import build_status

    report = build_status(settings(), catalog())
    if as_json:
        _print_json(report)
        raise typer.Exit(report["exit_code"])
    colour = {"healthy": "green", "degraded": "yellow", "critical": "red"}[report["status"]]
    out.print(f"status: [{colour}]{report['status'].upper()}[/]  ({report['checked_at'][:19]}Z)")
    table = Table(
        "kind",
        "newest good backup",
        "age",
        "size",
        "off-site",
        "last drill",
        "drill time",
        "RPO",
        "RTO",
    )
    for k in report["kinds"]:
        good, drill_info = k["newest_good"], k["last_drill"]
        measured = k.get("drill_rpo_s")
        table.add_row(
            k["kind"],
            good["id"] if good else "-",
            _duration(good["age_s"]) if good else "-",
            human_size(good["size"]) if good else "-",
            (good.get("offsite") or "-") if good else "-",
            f"{drill_info['status']} {drill_info['started_at'][:10]}" if drill_info else "never",
            _duration(drill_info["duration_s"]) if drill_info else "-",
            _duration(k["rpo_s"])
            + (" (WAL)" if k["rpo_source"] == "wal" else "")
            + (f", drill {_duration(measured)}" if measured is not None else ""),
            _duration(k["rto_s"]),
        )
    out.print(table)
    disk = report["disk"]
    out.print(
        f"disk: {human_size(disk['free_bytes'])} free of {human_size(disk['total_bytes'])} "
        f"at {disk['path']}"
    )
    from lifeos_backup.storage.offsite.state import describe_behind

    for target in report.get("offsite_targets") or []:
        if target["behind"]:
            error = f" (last error: {target['error']})" if target["error"] else ""
            out.print(f"off-site: {describe_behind(target)}{error}", highlight=False)
    offsite = (report.get("wal") or {}).get("offsite")
    if offsite:
        out.print(
            f"WAL off-site: lag {_duration(offsite['lag_s'])} "
            f"({offsite['pending_files']} files pending), last upload run "
            f"{str(offsite['last_run_at'])[:19]}Z",
            highlight=False,
        )
        per_target = offsite.get("targets") or {}
        for name, lag in per_target.items() if len(per_target) > 1 else ():
            out.print(
                f"  {name}: lag {_duration(lag['lag_s'])} ({lag['pending_files']} files pending)"
                + (f", {lag['error']}" if lag.get("error") else ""),
                highlight=False,
            )
    if report["conditions"]:
        conditions = Table("severity", "condition", "detail", title="conditions")
        for c in report["conditions"]:
            style = "red" if c["severity"] == "critical" else "yellow"
            conditions.add_row(f"[{style}]{c['severity']}[/]", c["summary"], c["detail"])
        out.print(conditions)
    raise typer.Exit(report["exit_code"])


@app.command()
def metrics(
    port: Annotated[
        int | None,
        typer.Option(min=0, max=65535, help="Port (default LIFEOS_METRICS_PORT)."),
    ] = None,
) -> None:
    """Serve the Prometheus endpoint (/metrics) until Ctrl-C."""
    from lifeos_backup.monitoring.metrics import serve

    s = settings()
    require_repository(s)  # what it reports comes from the repository's catalog
    chosen = s.metrics_port if port is None else port
    if not chosen:
        raise ConfigError("metrics port is 0 (off)", hint="pass --port or set LIFEOS_METRICS_PORT")
    try:
        stop_server = serve(s, chosen)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {s.metrics_address}:{chosen}", str(exc), "choose another --port"
        ) from None
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_args: stopped.set())
    out.print(f"serving metrics on http://{s.metrics_address}:{chosen}/metrics", highlight=False)
    try:
        while not stopped.wait(1.0):
            pass
    finally:
        stop_server()
