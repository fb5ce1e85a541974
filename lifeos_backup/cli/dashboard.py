"""`dashboard` (serve the web dashboard) and `users add|list|remove` (its accounts).

Starlette, uvicorn and argon2 are imported inside the commands (lifeos_backup.web), never by the
command tree. A password is read from a prompt (twice, not echoed) or from stdin when it is not
a terminal, never from the command line, where `ps` and the shell history would keep it.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.table import Table

from lifeos_backup.cli.common import app, catalog, choice, err, out, settings
from lifeos_backup.web.roles import ROLES

users_app = typer.Typer(no_args_is_help=True, help="Dashboard accounts and their roles.")
app.add_typer(users_app, name="users")
ROLE_HELP = "viewer (reads), operator (requests backups, drills, syncs, restores elsewhere), admin"


@app.command()
def dashboard(
    port: Annotated[int | None, typer.Option(help="Port (default LIFEOS_DASHBOARD_PORT).")] = None,
) -> None:
    """Serve the web dashboard in the foreground (`up` runs it too); Ctrl-C stops it."""
    from lifeos_backup.web.serve import check_address, serve, url

    s = settings()
    check_address(s)
    catalog()  # refuse a folder without a repository before listening
    err.print(f"dashboard: {url(s, port)}", highlight=False)
    serve(s, port)


def _read_password() -> str:
    if sys.stdin.isatty():
        first = typer.prompt("password", hide_input=True)
        second = typer.prompt("password again", hide_input=True)
        if first != second:
            from lifeos_backup.core.errors import ConfigError

            raise ConfigError("the two passwords differ", hint="run the command again")
        return str(first)
    return sys.stdin.readline().rstrip("\r\n")


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="Account name (lower-case letters, digits, ._-).")],
    role: Annotated[str, typer.Option(help=ROLE_HELP, callback=choice("a role", lambda: ROLES))],
) -> None:
    """Create a dashboard account; the password is asked for (or read from stdin)."""
    from lifeos_backup.storage.audit import operator
    from lifeos_backup.web import accounts

    accounts.check_name(name)
    account = accounts.add(catalog(), name, role, _read_password(), operator())
    out.print(f"account {account.name} ({account.role}) created", highlight=False)


@users_app.command("list")
def users_list() -> None:
    """Dashboard accounts and their roles (never a password or its hash)."""
    from lifeos_backup.web import accounts

    table = Table("name", "role", "created (UTC)", "created by")
    for a in accounts.accounts(catalog()):
        table.add_row(a.name, a.role, a.created_at.isoformat()[:19], a.created_by)
    out.print(table)


@users_app.command("remove")
def users_remove(name: str) -> None:
    """Delete a dashboard account; its open sessions end at their next page."""
    from lifeos_backup.storage.audit import operator
    from lifeos_backup.web import accounts

    accounts.remove(catalog(), name, operator())
    out.print(f"account {name} removed", highlight=False)
