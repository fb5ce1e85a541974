"""Running the installed `lifeos-backup` in a subprocess, and what its answers must look like.

The README's promise, checked from outside the process as a user sees it: a usage error prints
click's short message (or argparse's, for the fast `wal-push`/`wal-fetch` path) and exits 2; an
expected failure prints exactly one `error:` line on stderr and exits 1; nothing ever prints a
Python traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

CLI = str(Path(sys.executable).with_name("lifeos-backup"))
REPO = Path(__file__).resolve().parents[2]
EXIT_USAGE, EXIT_FAILURE, EXIT_BUG = 2, 1, 70


@dataclass(frozen=True)
class Answer:
    """What one run of the command line printed and returned."""

    args: tuple[str, ...]
    code: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return (
            f"lifeos-backup {' '.join(self.args)} -> exit {self.code}\n"
            f"--- stdout\n{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-3000:]}"
        )

    @property
    def stderr_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def clean_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The caller's environment without any LIFEOS_* setting (a fresh machine), traceback
    files kept in `tmp`, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFEOS_")}
    env.update({"TMPDIR": str(tmp), "PYTHONWARNINGS": "ignore", **extra})
    return env


def run_cli(
    args: Sequence[str],
    cwd: Path,
    env: Mapping[str, str],
    *,
    prelude: str | None = None,
    timeout: float = 90,
) -> Answer:
    """`lifeos-backup ARGS` in `cwd`; with `prelude`, Python code run first in the same
    process (to simulate a fault the machine cannot be put into, such as a full disk)."""
    if prelude is None:
        command = [CLI, *args]
    else:
        launcher = (
            f"{prelude}\nimport sys\nsys.argv[0] = 'lifeos-backup'\n"
            "from lifeos_backup.cli import main as lifeos_backup_main\nlifeos_backup_main()\n"
        )
        command = [sys.executable, "-c", launcher, *args]
    done = subprocess.run(
        command, cwd=cwd, env=dict(env), capture_output=True, text=True, timeout=timeout
    )
    return Answer(tuple(args), done.returncode, done.stdout, done.stderr)


@dataclass(frozen=True)
class Run:
    """One planned run for `run_many`."""

    args: tuple[str, ...]
    cwd: Path
    env: Mapping[str, str]


def run_many(runs: Sequence[Run], timeout: float = 600) -> list[Answer]:
    """Each run in its own process, forked from one subprocess that imported the CLI once
    (tests/support/forked_cli.py): the same answers as `run_cli`, a hundred runs in seconds."""
    plan = [{"args": list(r.args), "cwd": str(r.cwd), "env": dict(r.env)} for r in runs]
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.forked_cli"],
        input=json.dumps(plan),
        cwd=REPO,
        env=clean_env(Path(os.environ.get("TMPDIR", "/tmp"))),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    results = json.loads(done.stdout)
    return [
        Answer(run.args, r["code"], r["stdout"], r["stderr"])
        for run, r in zip(runs, results, strict=True)
    ]


def assert_no_traceback(answer: Answer) -> None:
    assert "Traceback" not in answer.stdout + answer.stderr, answer
    assert "╭─" not in answer.stderr, answer  # typer's boxed exception display


def assert_usage_error(answer: Answer, *fragments: str) -> None:
    """Exit 2 with a short usage message: click's (`Usage:`, `Try ...`, `Error:`) or, on the
    argparse path of wal-push/wal-fetch, argparse's (`usage:`, `... error: ...`)."""
    assert answer.code == EXIT_USAGE, answer
    assert_no_traceback(answer)
    click_style = "Usage:" in answer.stderr and "Error:" in answer.stderr
    argparse_style = "usage:" in answer.stderr and "error:" in answer.stderr
    assert click_style or argparse_style, answer
    for fragment in fragments:
        assert fragment in answer.stderr, (fragment, str(answer))


def assert_failure(answer: Answer, *fragments: str) -> None:
    """Exit 1 with exactly one non-empty stderr line, `error: ...`, containing `fragments`."""
    assert answer.code == EXIT_FAILURE, answer
    assert_no_traceback(answer)
    assert len(answer.stderr_lines) == 1, answer
    assert answer.stderr_lines[0].startswith("error: "), answer
    for fragment in fragments:
        assert fragment in answer.stderr, (fragment, str(answer))
