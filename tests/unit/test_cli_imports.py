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
    assert heavy_in(loaded_after("import lifeos_backup.cli.commands")) == []


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
