"""`lifeos-backup`: the operators' command line.

What every command group shares: the Typer `app` (and its `restore` group) the groups register
on, the consoles, settings and catalog access, option checks and the progress bar. Long work shows
a Rich progress bar on a terminal (on stderr), so stdout stays clean for scripts. Never a
traceback: see lifeos_backup.cli.errors.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from lifeos_backup.core.errors import ConfigError, NotFound
from lifeos_backup.core.names import LAYOUTS, kind_of_id
from lifeos_backup.core.progress import Progress
from lifeos_backup.jobs.source import SOURCES
from lifeos_backup.version import package_version

# What a command does not need is imported inside the functions that use it (settings, catalog,
# the progress bar), so that `--help`, `list` or `status` start without loading them all.
if TYPE_CHECKING:
    from lifeos_backup.core.settings import Settings
    from lifeos_backup.storage.audit import AuditEntry
    from lifeos_backup.storage.catalog import Catalog
    from lifeos_backup.storage.catalog.view import CatalogView

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__.splitlines()[0])
restore_app = typer.Typer(no_args_is_help=True, help="Restore a backup.")
app.add_typer(restore_app, name="restore")

# How each kind is named to people, and the command that restores a backup of it.
KIND_NAMES = {"json": "JSON", "postgres": "PostgreSQL", "basebackup": "base (point-in-time)"}
RESTORED_BY = {
    "json": "restore json {id} --target DIR",
    "postgres": "restore postgres {id} --database NAME",
    "basebackup": "restore pitr --backup {id} --datadir DIR --target-time T",
}

# Not on a terminal (scripts, CI): wide enough that ids and errors are never wrapped or cut.
out = Console(width=None if sys.stdout.isatty() else 250)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 250)


def settings() -> Settings:
    from lifeos_backup.core.settings import get_settings

    return get_settings()


def require_repository(s: Settings) -> None:
    """Refuse to work without a backup repository.

    Opening the default catalog (an SQLite file inside the backup root) would otherwise create
    an empty repository wherever the command happens to run, and answer about that one. Only
    what makes backups creates a repository: `up`, the workers, `catalog rebuild --from
    offsite`. A catalog configured elsewhere (LIFEOS_CATALOG_URL) creates nothing here.
    """
    root = s.backup_root
    if s.catalog_url or root.is_dir():
        return
    shown = str(root) if root.is_absolute() or str(root).startswith(".") else f"./{root}"
    state = "is not a folder" if root.exists() else "does not exist"
    raise NotFound(
        f"no backup repository at {shown}",
        f"{root.resolve()} {state}",
        "set LIFEOS_BACKUP_ROOT or run from the folder that holds the repository; "
        "`lifeos-backup up` or a first backup creates one",
    )


def catalog() -> Catalog:
    """The catalog of an existing repository (see `require_repository`)."""
    from lifeos_backup.storage.catalog import open_catalog

    s = settings()
    require_repository(s)
    return open_catalog(s.effective_catalog_url)


@contextmanager
def catalog_view() -> Iterator[CatalogView]:
    """The read-only view of an existing repository's catalog, for commands that only look:
    it reads without importing SQLAlchemy (lifeos_backup.storage.catalog.view)."""
    from lifeos_backup.storage.catalog.view import open_view

    s = settings()
    require_repository(s)
    with open_view(s.effective_catalog_url) as view:
        yield view


@contextmanager
def audited(catalog: Catalog, action: str, target: str) -> Iterator[AuditEntry]:
    """lifeos_backup.storage.audit.audited, imported when a command records an action."""
    from lifeos_backup.storage.audit import audited as record

    with record(catalog, action, target) as entry:
        yield entry


def choice(what: str, choices: Callable[[], Iterable[str]]) -> Callable[[Any], Any]:
    """A Typer callback making a value outside `choices` a usage error that names them all
    (exit 2, like a mistyped option), instead of a silent empty answer."""

    def check(value: Any) -> Any:
        allowed = sorted(choices())
        if value is not None and value not in allowed:
            raise typer.BadParameter(f"{value!r} is not {what}; choose from: {', '.join(allowed)}")
        return value

    return check


check_kind = choice("a backup kind", lambda: LAYOUTS)
check_source = choice("a source", lambda: SOURCES)
KindOption = Annotated[
    str | None, typer.Option(help=f"Only this kind: {', '.join(LAYOUTS)}.", callback=check_kind)
]
SourceOption = Annotated[
    str, typer.Option("--from", help="local, or offsite (download).", callback=check_source)
]


def require_kind(backup_id: str, wanted: str) -> None:
    """Refuse an id of another kind before reading anything, naming the command for it."""
    kind = kind_of_id(backup_id)
    if kind != wanted:
        raise ConfigError(
            f"backup {backup_id} is a {KIND_NAMES[kind]} backup, not a {KIND_NAMES[wanted]} one",
            hint=f"restore it with `lifeos-backup {RESTORED_BY[kind].format(id=backup_id)}`",
        )


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[Progress | dict[str, Any]], None]]:
    """A Rich bar on stderr when it is a terminal; otherwise a silent sink."""
    if not err.is_terminal:
        yield lambda _report: None
        return
    from rich.progress import DownloadColumn, MofNCompleteColumn, TimeRemainingColumn
    from rich.progress import Progress as Bar

    columns = (*Bar.get_default_columns()[:-1], MofNCompleteColumn(), DownloadColumn())
    with Bar(*columns, TimeRemainingColumn(), console=err, transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(report: Progress | dict[str, Any]) -> None:
            data: dict[str, Any] = report.as_meta() if isinstance(report, Progress) else report
            total = data.get("bytes_total") or None
            files = data.get("files_total")
            counted = f" {data.get('files_done', 0)}/{files} files" if files else ""
            bar.update(
                task,
                description=f"{label}: {data.get('phase', '')}{counted}",
                completed=data.get("bytes_done", 0),
                total=total,
            )

        yield update


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _print_version(value: bool) -> None:
    """`--version`: answered before any command runs or any setting is read."""
    if value:
        print(f"lifeos-backup {package_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the installed version and exit.",
        ),
    ] = False,
    repo: Annotated[
        Path | None,
        typer.Option(
            "--repo",
            "-r",
            help="The backup repository (default: LIFEOS_BACKUP_ROOT, else ./backups); its "
            "running workers' settings are found there.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Options of the program itself (`--version`, `--repo`), not of a command; the help text
    is the Typer app's."""
    if repo is not None:
        from lifeos_backup.core.settings import get_settings

        os.environ["LIFEOS_BACKUP_ROOT"] = str(repo)
        get_settings.cache_clear()


def warn(text: str) -> None:
    """One `warning:` line on stderr (above a live progress bar on a terminal)."""
    err.print(f"warning: {text}", highlight=False, markup=False, soft_wrap=True)
