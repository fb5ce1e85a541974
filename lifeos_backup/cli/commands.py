"""The `lifeos-backup` command tree, loaded as far as a command needs, and the runner that never
shows a traceback.

Each command group module registers its commands on the Typer app of lifeos_backup.cli.common
when imported. `main` imports only the modules that define the command being run (`HOMES`):
Typer turns every registered command into a click command on each run, so `list` does not pay
for the other sixty; `--help`, no command at all, or a name no module defines (a usage error
that suggests the nearest names) load the whole tree, as `load()` does for tests and tools.
Only the entry point (lifeos_backup.cli.main) imports this module.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

from lifeos_backup.cli import errors as cli_errors
from lifeos_backup.cli.common import app, settings

__all__ = ["GROUPS", "HOMES", "app", "load", "main"]

# The command group modules, in the order `--help` lists their commands.
GROUPS = (
    "backup", "catalog", "restore", "service", "audit", "integration", "monitoring", "offsite",
    "wal", "pitr", "browse", "forget", "doctor", "dashboard",
)  # fmt: skip
# Each top-level command or group, and the modules that define it and its subcommands
# (tests/unit/test_cli_imports.py derives this from the whole tree and compares).
HOMES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("backup", "follow", "verify", "rotate"), ("backup",)),
    **dict.fromkeys(("list", "show", "catalog"), ("catalog",)),
    **dict.fromkeys(("ls", "find", "diff"), ("browse",)),
    "up": ("service",),
    **dict.fromkeys(("rollback-to-json", "flags"), ("integration",)),
    **dict.fromkeys(("drill", "selftest", "status", "metrics"), ("monitoring",)),
    **dict.fromkeys(("keygen", "offsite"), ("offsite",)),
    **dict.fromkeys(("wal-push", "wal-fetch", "wal"), ("wal",)),
    "forget": ("forget",),
    "doctor": ("doctor",),
    **dict.fromkeys(("dashboard", "users"), ("dashboard",)),
    "audit": ("audit",),
    "restore": ("restore", "integration", "pitr"),
}
_ROOT_VALUED = ("--repo", "-r")  # the program's own options that take a value


def command_of(args: Sequence[str]) -> str | None:
    """The command `args` names after the program's own options; None when there is none."""
    rest = list(args)
    while rest and rest[0].startswith("-"):
        option = rest.pop(0)
        if option in _ROOT_VALUED and rest:
            rest.pop(0)
    return rest[0] if rest else None


def load(args: Sequence[str] | None = None) -> None:
    """Import the group modules the command in `args` needs; all of them without `args`, for
    help, or for a name no module defines."""
    command = command_of(args) if args is not None else None
    wanted = HOMES.get(command, GROUPS) if command is not None else GROUPS
    for name in GROUPS:
        if name in wanted:
            importlib.import_module(f"lifeos_backup.cli.{name}")


def _catalog_url() -> str:
    return settings().effective_catalog_url


def main() -> None:
    """Entry point: never a traceback. Usage errors, expected failures and bugs are answered as
    lifeos_backup.cli.errors describes; the exit code is 0 only when the command succeeded."""
    os.umask(0o077)
    load(sys.argv[1:])
    try:
        code = app(standalone_mode=False)  # returns the code of typer.Exit instead of exiting
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        sys.exit(cli_errors.EXIT_INTERRUPTED)
    except Exception as exc:
        sys.exit(cli_errors.exit_code(exc, _catalog_url))
    if isinstance(code, int) and code:
        sys.exit(code)
