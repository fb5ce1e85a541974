"""`lifeos-backup --help` and the command tree load no heavy library (benchmarks/cli_start.py).

Operators call `list` and `status` in loops, so the CLI imports SQLAlchemy, Celery, Redis and the
other large libraries only inside the commands that use them. These tests import the command
tree, and run `--help`, in a fresh interpreter and read `sys.modules` at the end: a module-level
import of one of them anywhere on the way fails here, by name, instead of slowing every command.
They measure no time (benchmarks/cli_start.py does).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# Libraries no command needs to be listed or described.
HEAVY = (
    "alembic",
    "apprise",
    "argon2",
    "boto3",
    "botocore",
    "celery",
    "itsdangerous",
    "jinja2",
    "kombu",
    "prometheus_client",
    "psycopg",
    "redis",
    "sqlalchemy",
    "starlette",
    "uvicorn",
    "zstandard",
)

# Prints the top-level names of every module loaded once `code` ran (also when it exits).
_REPORT = """\
import atexit, json, sys
top = lambda: sorted({m.split(".")[0] for m in sys.modules})
atexit.register(lambda: print("@@MODULES@@" + json.dumps(top())))
"""


def loaded_after(code: str) -> set[str]:
    """Top-level modules in sys.modules after `code` ran in a fresh interpreter."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFEOS_")}
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    done = subprocess.run(
        [sys.executable, "-c", _REPORT + code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for line in done.stdout.splitlines():
        if line.startswith("@@MODULES@@"):
            return set(json.loads(line.removeprefix("@@MODULES@@")))
    raise AssertionError(f"no module report (exit {done.returncode}):\n{done.stderr[-3000:]}")


def heavy_in(modules: set[str]) -> list[str]:
    return sorted(set(HEAVY) & modules)


def test_the_command_tree_imports_no_heavy_library() -> None:
    code = "import lifeos_backup.cli.commands as tree\ntree.load()\n"
    assert heavy_in(loaded_after(code)) == []


def test_each_command_is_found_in_the_modules_that_define_it() -> None:
    """`main` imports only the group modules HOMES names for the command being run: every
    top-level command and group of the whole tree is there, with exactly the modules whose
    functions define it and its subcommands (a new command missing from HOMES fails here)."""
    from typer.models import TyperInfo

    from lifeos_backup.cli import commands as tree

    tree.load()

    def modules(group: TyperInfo) -> set[str]:
        sub = group.typer_instance
        assert sub is not None
        found = {c.callback.__module__ for c in sub.registered_commands if c.callback}
        callback = sub.registered_callback
        if callback is not None and callback.callback is not None:
            found.add(callback.callback.__module__)
        for inner in sub.registered_groups:
            found |= modules(inner)
        return found

    derived: dict[str, set[str]] = {}
    for command in tree.app.registered_commands:
        assert command.callback is not None
        name = command.name or command.callback.__name__.replace("_", "-")
        derived.setdefault(name, set()).add(command.callback.__module__)
    for group in tree.app.registered_groups:
        assert group.name is not None
        derived.setdefault(group.name, set()).update(modules(group))
    homes = {name: {f"lifeos_backup.cli.{m}" for m in found} for name, found in tree.HOMES.items()}
    assert homes == derived
    assert set(tree.GROUPS) == {m.rsplit(".", 1)[1] for found in derived.values() for m in found}


@pytest.mark.parametrize(
    ("args", "command"),
    [
        (["list"], "list"),
        (["--repo", "x", "list"], "list"),
        (["-r", "x", "restore", "json"], "restore"),
        (["--repo=x", "audit"], "audit"),
        (["--help"], None),
        ([], None),
    ],
)
def test_the_command_is_found_after_the_programs_own_options(
    args: list[str], command: str | None
) -> None:
    from lifeos_backup.cli.commands import command_of

    assert command_of(args) == command


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["list", "--help"],
        ["status", "--help"],
        ["flags", "get", "--help"],
        ["audit", "--help"],
        ["restore", "--help"],
        ["dashboard", "--help"],
        ["users", "add", "--help"],
    ],
    ids=" ".join,
)
def test_help_imports_no_heavy_library(args: list[str]) -> None:
    code = (
        "import sys\n"
        "from lifeos_backup.cli import main\n"
        f"sys.argv = ['lifeos-backup', *{args!r}]\n"
        "main()\n"
    )
    assert heavy_in(loaded_after(code)) == []


def test_the_check_sees_a_heavy_import() -> None:
    """The report is read after the code ran: a library it imports is found."""
    assert heavy_in(loaded_after("import lifeos_backup.cli.commands\nimport sqlalchemy")) == [
        "sqlalchemy"
    ]
