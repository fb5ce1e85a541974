"""`lifeos-backup doctor`: one table of PASS / WARN / FAIL / SKIP with the fix for each line.

Registered on the main `lifeos-backup` app; the checks are lifeos_backup.monitoring.doctor. It
reads and changes nothing but a temporary file in the repository (is it writable?), so it runs
anywhere, before the first backup too.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from lifeos_backup.cli.common import app, out, settings
from lifeos_backup.core.errors import LifeosError


@app.command()
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="JSON for scripts.")] = False,
) -> None:
    """Check Redis, workers, Beat, catalog, repository, database, WAL archiving, off-site,
    encryption keys and ports; on any FAIL one `error:` line naming them, exit 1."""
    from lifeos_backup.monitoring.doctor import FAIL, PASS, SKIP, ok, run_checks

    checks = run_checks(settings())
    if as_json:
        document = {"ok": ok(checks), "checks": [c.as_dict() for c in checks]}
        print(json.dumps(document, indent=2))
    else:
        colour = {PASS: "green", FAIL: "red", SKIP: "dim"}
        table = Table("check", "state", "detail", "fix", title="lifeos-backup doctor")
        for c in checks:
            state = f"[{colour.get(c.state, 'yellow')}]{c.state}[/]"
            table.add_row(c.name, state, c.detail, c.fix, end_section=False)
        out.print(table)
    failing = [c.name for c in checks if c.state == FAIL]
    if failing:
        raise LifeosError(
            f"doctor found {len(failing)} failing check(s)",
            ", ".join(failing),
            "apply the fix printed beside each FAIL line, then run `lifeos-backup doctor` again",
        )
