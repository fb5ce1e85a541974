"""Every command answers bad input clearly: walked from the Typer/click command tree itself, so a
new command is covered without touching this file.

For each command (groups included) in a subprocess, as a user runs it: `--help` works; an unknown
option is a usage error; a group's unknown subcommand is a usage error; a command without its
required arguments is a usage error; a number option given `abc` is a usage error naming the
option. Commands run without arguments on a machine with no repository and no settings refuse
with one `error:` line and create nothing; commands given made-up ids, names and paths in an empty
repository answer with a usage error or one `error:` line. Never a traceback.

Each run is its own process, forked from one subprocess that imported the CLI once
(tests/support/forked_cli.py), so the walk of over a hundred runs takes seconds.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer

from lifeos_backup.cli import commands as cli
from lifeos_backup.core.fsutil import private_dir
from lifeos_backup.storage.catalog import open_catalog
from tests.support.cli import (
    EXIT_FAILURE,
    EXIT_USAGE,
    Answer,
    Run,
    assert_failure,
    assert_no_traceback,
    assert_usage_error,
    clean_env,
    run_many,
)

# `up` runs until stopped and creates the repository by design (tests/integration/test_up.py).
LONG_RUNNING = {("up",)}
# archive_command / restore_command: PostgreSQL's exit codes, not the `error:` line (docs/pitr.md).
OWN_EXIT_CODES = {("wal-push",), ("wal-fetch",)}


@dataclass(frozen=True)
class Param:
    """One parameter of a command, as much as the walk needs to know."""

    name: str
    flag: str | None  # the option's long name; None for an argument
    required: bool
    kind: str  # "flag", "number", "path" or "text"


@dataclass(frozen=True)
class Command:
    path: tuple[str, ...]
    is_group: bool
    params: tuple[Param, ...]

    @property
    def label(self) -> str:
        return " ".join(self.path) or "(root)"


def _kind(annotation: Any) -> str:
    """flag / number / path / text, from the Python annotation of the command's function (the
    same on every Typer version, whatever its click parameter objects look like)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if annotation is bool:
        return "flag"
    if annotation in (int, float):
        return "number"
    if isinstance(annotation, type) and issubclass(annotation, Path):
        return "path"
    return "text"


def _params(command: Any) -> tuple[Param, ...]:
    if command.callback is None:
        return ()
    hints = typing.get_type_hints(inspect.unwrap(command.callback))
    found = []
    for p in command.params:
        if p.name not in hints:  # not one of ours (none today); nothing to learn from it
            continue
        argument = p.param_type_name == "argument"
        flag = None if argument else max(p.opts, key=len)
        found.append(Param(p.name, flag, bool(p.required), _kind(hints[p.name])))
    return tuple(found)


def _walk(command: Any, path: tuple[str, ...]) -> Iterator[Command]:
    subcommands = getattr(command, "commands", None)
    yield Command(path, subcommands is not None, _params(command))
    for name, sub in sorted((subcommands or {}).items()):
        yield from _walk(sub, (*path, name))


cli.load()  # the whole tree (a run loads only the modules its command needs)
COMMANDS = list(_walk(typer.main.get_command(cli.app), ()))
LEAVES = [c for c in COMMANDS if not c.is_group]
GROUPS = [c for c in COMMANDS if c.is_group]


def _filled(command: Command, where: Path) -> list[str]:
    """The command with every required parameter given a made-up value."""
    args = list(command.path)
    for p in command.params:
        if not p.required:
            continue
        value = str(where / "no" / "such" / "path") if p.kind == "path" else "nosuch"
        args += [value] if p.flag is None else [p.flag, value]
    return args


# ----------------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    """One run of the walk: arguments, where it runs (no repository, or an empty one), and
    the check of its answer."""

    id: str
    args: Callable[[Path], list[str]]
    check: Callable[[Answer, Path], None]
    in_repository: bool = False


def check_help(answer: Answer, _cwd: Path) -> None:
    assert answer.code == 0, answer
    assert_no_traceback(answer)
    assert "usage:" in answer.stdout.lower(), answer


def check_usage(answer: Answer, _cwd: Path) -> None:
    assert_usage_error(answer)


def check_refused_and_nothing_created(answer: Answer, cwd: Path) -> None:
    assert_failure(answer)
    assert sorted(p.name for p in cwd.iterdir()) == [], answer


def check_clear_answer(answer: Answer, _cwd: Path) -> None:
    """A made-up id, name or path: a usage error, or one `error:` line."""
    assert answer.code in (EXIT_USAGE, EXIT_FAILURE), answer
    if answer.code == EXIT_USAGE:
        assert_usage_error(answer)
    else:
        assert_failure(answer)


def _number_check(flag: str) -> Callable[[Answer, Path], None]:
    def check(answer: Answer, _cwd: Path) -> None:
        assert_usage_error(answer, f"'{flag}'")

    return check


def _cases() -> list[Case]:
    cases = []
    for c in COMMANDS:
        cases.append(Case(f"help:{c.label}", lambda _w, c=c: [*c.path, "--help"], check_help))
        cases.append(
            Case(
                f"unknown-option:{c.label}",
                lambda _w, c=c: [*c.path, "--no-such-option"],
                check_usage,
            )
        )
        for p in c.params:
            if p.kind == "number" and p.flag is not None:
                cases.append(
                    Case(
                        f"not-a-number:{c.label}:{p.flag}",
                        lambda w, c=c, p=p: [*_filled(c, w), p.flag, "abc"],
                        _number_check(p.flag),
                    )
                )
    for g in GROUPS:
        cases.append(
            Case(f"unknown-command:{g.label}", lambda _w, g=g: [*g.path, "nosuch"], check_usage)
        )
    for c in LEAVES:
        if any(p.required for p in c.params):
            cases.append(Case(f"missing:{c.label}", lambda _w, c=c: list(c.path), check_usage))
            if c.path not in OWN_EXIT_CODES:
                cases.append(
                    Case(
                        f"made-up-values:{c.label}",
                        lambda w, c=c: _filled(c, w),
                        check_clear_answer,
                        in_repository=True,
                    )
                )
        elif c.path not in LONG_RUNNING:
            cases.append(
                Case(
                    f"no-repository:{c.label}",
                    lambda _w, c=c: list(c.path),
                    check_refused_and_nothing_created,
                )
            )
    return cases


CASES = {case.id: case for case in _cases()}


def _plan(case: Case, base: Path) -> Run:
    """Where and how a case runs: a fresh working folder, no LIFEOS_* setting, and for
    `in_repository` an empty repository (with its catalog, as `up` leaves it)."""
    where = base / case.id.replace(":", "_").replace(" ", "_").replace("/", "_")
    cwd = private_dir(where / "cwd")
    env = clean_env(where)
    if case.in_repository:
        root = private_dir(where / "repository")
        open_catalog(f"sqlite:///{root / 'catalog.sqlite3'}").engine.dispose()
        # a Redis nobody listens on: commands that need one fail at once, as when it is down
        env.update(LIFEOS_BACKUP_ROOT=str(root), LIFEOS_REDIS_URL="redis://127.0.0.1:9/0")
    return Run(tuple(case.args(where)), cwd, env)


@pytest.fixture(scope="module")
def answers(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Answer, Path]]:
    """Run the selected cases of this module once, each in its own process."""
    selected = [
        item.callspec.params["case_id"]
        for item in request.session.items
        if item.module is request.module and hasattr(item, "callspec")
    ]
    base = tmp_path_factory.mktemp("walk")
    plans = [_plan(CASES[i], base) for i in selected]
    return {
        i: (answer, plan.cwd)
        for i, plan, answer in zip(selected, plans, run_many(plans), strict=True)
    }


def test_the_walk_sees_every_command() -> None:
    """The tree really is walked: the commands of every module that registers some."""
    labels = {c.label for c in COMMANDS}
    assert {"list", "restore json", "audit verify", "flags get", "offsite sync", "wal-push"} <= (
        labels
    )
    assert {"restore pitr", "drill", "keygen", "catalog rebuild", "rollback-to-json"} <= labels
    assert len(LEAVES) >= 29 and len(GROUPS) >= 6


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_command_answers_clearly(case_id: str, answers: dict[str, tuple[Answer, Path]]) -> None:
    answer, cwd = answers[case_id]
    CASES[case_id].check(answer, cwd)
