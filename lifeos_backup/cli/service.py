"""`up`: the whole service (workers, Beat, Flower, metrics) in the foreground."""

from __future__ import annotations

import typer

from lifeos_backup.cli.common import (
    app,
    settings,
)


@app.command()
def up() -> None:
    """Start workers (dumps; the other queues), Beat and Flower (embedded Redis if no URL)."""
    from lifeos_backup.service.up import run_stack

    raise typer.Exit(run_stack(settings()))
