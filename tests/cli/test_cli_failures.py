"""Each failure a new user met on a fresh install, run as they ran it: the installed
`lifeos-backup` in a subprocess, with no LIFEOS_* settings beyond the ones a case sets.

Usage errors exit 2 with click's short message; expected failures exit 1 with one `error:` line;
a bug exits 70 with one `error:` line naming its traceback file; never a traceback on screen.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lifeos_backup.core.fsutil import private_dir
from lifeos_backup.core.settings import Settings
from lifeos_backup.jobs.backups import create_backup, verify_backup
from lifeos_backup.storage.catalog import open_catalog
from tests.support.cli import (
    EXIT_BUG,
    Answer,
    assert_failure,
    assert_no_traceback,
    assert_usage_error,
    clean_env,
    run_cli,
)
from tests.support.services import PostgresCluster
from tests.support.trees import make_tree

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Repository:
    """A backup repository with two verified JSON backups, and the environment pointing at it."""

    root: Path
    cwd: Path
    env: dict[str, str]
    first: str
    second: str

    def run(self, *args: str, prelude: str | None = None, **extra: str) -> Answer:
        return run_cli(args, self.cwd, {**self.env, **extra}, prelude=prelude)


def _settings(root: Path, app_dir: Path, **values: object) -> Settings:
    """Settings of the test's repository only: no .env file, explicit values."""
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        backup_root=root,
        app_dir=app_dir,
        **values,
    )


def _json_backup(settings: Settings) -> str:
    catalog = open_catalog(settings.effective_catalog_url)
    backup_id = create_backup("json", settings, catalog).backup_id
    verify_backup(backup_id, settings, catalog)
    return backup_id


@pytest.fixture
def fresh(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """An empty folder and no settings: a fresh clone on a new machine."""
    return private_dir(tmp_path / "cwd"), clean_env(tmp_path)


@pytest.fixture
def repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Repository]:
    for key in [k for k in os.environ if k.startswith("LIFEOS_")]:
        monkeypatch.delenv(key)
    root, app_dir = tmp_path / "backups", tmp_path / "app"
    make_tree(app_dir, files=6)
    settings = _settings(root, app_dir)
    first = _json_backup(settings)
    second = _json_backup(settings)
    env = clean_env(tmp_path, LIFEOS_BACKUP_ROOT=str(root), LIFEOS_APP_DIR=str(app_dir))
    yield Repository(root, private_dir(tmp_path / "cwd"), env, first, second)
    open_catalog(settings.effective_catalog_url).engine.dispose()


# ------------------------------------------------------------------------------ usage errors


def test_mistyped_command_is_a_usage_error(fresh: tuple[Path, dict[str, str]]) -> None:
    answer = run_cli(["bakup", "json"], *fresh)
    assert_usage_error(answer, "No such command 'bakup'", "Try 'lifeos-backup --help'")
    assert answer.stderr.startswith("Usage: lifeos-backup"), answer


def test_mistyped_option_is_a_usage_error(fresh: tuple[Path, dict[str, str]]) -> None:
    answer = run_cli(["list", "--kidn", "json"], *fresh)
    assert_usage_error(answer, "No such option", "--kidn", "Try 'lifeos-backup list --help'")
    assert "('" not in answer.stderr  # typer before 0.26.8 printed its suggestion as a tuple


def test_show_without_an_id_is_a_usage_error(fresh: tuple[Path, dict[str, str]]) -> None:
    assert_usage_error(run_cli(["show"], *fresh), "Missing argument")


def test_restore_postgres_without_database_is_a_usage_error(
    fresh: tuple[Path, dict[str, str]],
) -> None:
    answer = run_cli(["restore", "postgres", "postgres_full_20260101_020000"], *fresh)
    assert_usage_error(answer, "Missing option '--database'")


def test_jobs_not_a_number_is_a_usage_error(fresh: tuple[Path, dict[str, str]]) -> None:
    args = ["restore", "postgres", "postgres_full_20260101_020000", "--database", "x"]
    assert_usage_error(run_cli([*args, "--jobs", "abc"], *fresh), "'--jobs'")
    assert_usage_error(run_cli([*args, "--jobs", "0"], *fresh), "'--jobs'")


def test_flags_get_without_a_name_is_a_usage_error(fresh: tuple[Path, dict[str, str]]) -> None:
    assert_usage_error(run_cli(["flags", "get"], *fresh), "Missing argument")


def test_unknown_kind_is_a_usage_error_naming_the_kinds(repository: Repository) -> None:
    listed = repository.run("list", "--kind", "nosuch")
    assert_usage_error(listed, "'--kind'", "choose from: basebackup, json, postgres")
    assert listed.stdout == ""
    rotated = repository.run("rotate", "--kind", "nosuch", "--dry-run")
    assert_usage_error(rotated, "'--kind'", "choose from: basebackup, json, postgres")


def test_unknown_audit_action_is_a_usage_error_naming_the_actions(
    repository: Repository,
) -> None:
    answer = repository.run("audit", "--action", "nope")
    assert_usage_error(answer, "'--action'", "restore.json", "or a group: ")
    assert answer.stdout == ""
    assert repository.run("audit", "--action", "restore").code == 0  # a group still works


def test_since_too_far_back_is_a_usage_error(repository: Repository) -> None:
    answer = repository.run("audit", "--since", "99999999999d")
    assert_usage_error(answer, "'--since'", "before the year 1")


# ------------------------------------------------------------------------------ --version


def test_version_comes_from_the_package_metadata(fresh: tuple[Path, dict[str, str]]) -> None:
    cwd, env = fresh
    expected = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    answer = run_cli(["--version"], cwd, env)
    assert (answer.code, answer.stdout, answer.stderr) == (0, f"lifeos-backup {expected}\n", "")
    assert list(cwd.iterdir()) == []


def test_version_works_before_the_settings_are_valid(fresh: tuple[Path, dict[str, str]]) -> None:
    cwd, env = fresh
    (cwd / ".env").write_text("LIFEOS_COMPRESSION=bzip9\nLIFEOS_REDIS_URL=notaurl\n")
    broken = {**env, "LIFEOS_DUMP_JOBS": "many"}
    answer = run_cli(["--version"], cwd, broken)
    assert answer.code == 0 and answer.stdout.startswith("lifeos-backup "), answer
    refused = run_cli(["list"], cwd, broken)  # any command that reads them says which are wrong
    assert_failure(
        refused, "invalid settings", "LIFEOS_COMPRESSION", "LIFEOS_DUMP_JOBS", "LIFEOS_REDIS_URL"
    )
    assert "notaurl" not in refused.stderr and "bzip9" not in refused.stderr  # values unsaid


# ------------------------------------------------------------------------- expected failures


def test_list_outside_a_repository_refuses_and_creates_nothing(
    fresh: tuple[Path, dict[str, str]],
) -> None:
    cwd, env = fresh
    for args in (["list"], ["audit"], ["show", "json_backup_20260101_020000"]):
        answer = run_cli(args, cwd, env)
        assert_failure(
            answer, "error: no backup repository at ./backups", "hint: set LIFEOS_BACKUP_ROOT"
        )
        assert list(cwd.iterdir()) == [], answer


def test_restore_into_an_existing_file_is_refused(repository: Repository) -> None:
    target = repository.cwd / "afile"
    target.write_text("keep me")
    answer = repository.run("restore", "json", repository.first, "--target", str(target))
    assert_failure(answer, f"restore target {target} is not a folder")
    assert target.read_text() == "keep me"


def test_restore_of_a_backup_without_manifest_is_refused_like_verify(
    repository: Repository,
) -> None:
    manifest = repository.root / "json" / f"{repository.second}.manifest.json"
    manifest.unlink()
    target = repository.cwd / "restored"
    restored = repository.run("restore", "json", repository.second, "--target", str(target))
    assert_failure(restored, f"backup {repository.second} is incomplete on disk: manifest missing")
    assert not target.exists()
    verified = repository.run("verify", repository.second)
    assert_failure(verified, "incomplete on disk: manifest missing")


def test_restore_onto_a_full_disk_is_one_line_and_leaves_nothing(
    repository: Repository,
) -> None:
    """Every file the restore writes goes to /dev/full, where the kernel answers ENOSPC."""
    full_disk = (
        "import os\n"
        "_open = os.open\n"
        "def _full(path, flags, mode=0o777, *, dir_fd=None):\n"
        "    if '.lifeos-restore-' in os.fspath(path) and flags & os.O_WRONLY:\n"
        "        return _open('/dev/full', os.O_WRONLY)\n"
        "    return _open(path, flags, mode, dir_fd=dir_fd)\n"
        "os.open = _full\n"
    )
    target = repository.cwd / "restored"
    answer = repository.run(
        "restore", "json", repository.first, "--target", str(target), prelude=full_disk
    )
    assert_failure(
        answer, f"cannot write the restore into {target}: No space left on device", "hint: free"
    )
    assert not target.exists()  # neither the target it created nor its staging folder


def test_restore_json_of_a_postgres_backup_names_the_right_command(
    repository: Repository, pg_cluster: PostgresCluster, pg_url: str
) -> None:
    settings = _settings(
        repository.root,
        Path(repository.env["LIFEOS_APP_DIR"]),
        database_url=pg_url,
        pg_bin_dir=pg_cluster.bindir,
    )
    catalog = open_catalog(settings.effective_catalog_url)
    dump = create_backup("postgres", settings, catalog).backup_id
    answer = repository.run("restore", "json", dump, "--target", str(repository.cwd / "t"))
    assert_failure(
        answer,
        f"backup {dump} is a PostgreSQL backup, not a JSON one",
        f"restore it with `lifeos-backup restore postgres {dump} --database NAME`",
    )
    assert "archive header" not in answer.stderr


def test_restore_postgres_of_a_json_backup_names_the_right_command(
    repository: Repository,
) -> None:
    answer = repository.run("restore", "postgres", repository.first, "--database", "scratch")
    assert_failure(
        answer,
        "is a JSON backup, not a PostgreSQL one",
        f"`lifeos-backup restore json {repository.first} --target DIR`",
    )


def test_redis_url_that_is_no_url_is_refused_naming_the_setting(
    repository: Repository,
) -> None:
    answer = repository.run("backup", "json", "--wait", LIFEOS_REDIS_URL="notaurl")
    assert_failure(answer, "invalid settings: LIFEOS_REDIS_URL", "redis://")


def test_keygen_into_a_missing_folder_is_refused(fresh: tuple[Path, dict[str, str]]) -> None:
    answer = run_cli(["keygen", "--output", "/nonexistent/dir/key.txt"], *fresh)
    assert_failure(answer, "cannot create /nonexistent/dir/key.txt: No such file or directory")
    assert answer.stdout == ""  # no public key printed for a key that was never saved


def test_postgres_errors_read_as_text_without_the_password(
    repository: Repository,
) -> None:
    url = "postgresql://ops:Hunter2-secret@127.0.0.1:9/app"  # nobody listens on port 9
    answer = repository.run("rollback-to-json", "--dry-run", LIFEOS_DATABASE_URL=url)
    assert_failure(answer, "PostgreSQL")
    assert "Hunter2-secret" not in answer.stdout + answer.stderr
    assert "('" not in answer.stderr  # not a Python tuple of a LifeosError's arguments


# ------------------------------------------------------------------------------------- bugs

_BUG = (
    "import lifeos_backup.cli.common as cli\n"
    "def _broken():\n"
    "    raise RuntimeError('lost postgresql://ops:Hunter2-secret@db/app on the way')\n"
    "cli.catalog = cli.catalog_view = _broken\n"
)


def test_a_bug_is_one_line_and_a_traceback_file(fresh: tuple[Path, dict[str, str]]) -> None:
    cwd, env = fresh
    answer = run_cli(["list"], cwd, env, prelude=_BUG)
    assert answer.code == EXIT_BUG, answer
    assert_no_traceback(answer)
    [line] = answer.stderr_lines
    assert line.startswith("error: unexpected RuntimeError: lost postgresql://ops:***@db/app")
    assert "LIFEOS_DEBUG=1" in line and "Hunter2-secret" not in line
    saved = Path(line.split("the traceback is in ")[1].split(";")[0])
    assert saved.parent == Path(env["TMPDIR"]) and saved.stat().st_mode & 0o777 == 0o600
    text = saved.read_text()
    assert "Traceback" in text and "RuntimeError" in text and "Hunter2-secret" not in text


def test_lifeos_debug_prints_the_traceback_too(fresh: tuple[Path, dict[str, str]]) -> None:
    cwd, env = fresh
    answer = run_cli(["list"], cwd, {**env, "LIFEOS_DEBUG": "1"}, prelude=_BUG)
    assert answer.code == EXIT_BUG, answer
    assert "Traceback (most recent call last)" in answer.stderr
    assert answer.stderr_lines[-1].startswith("error: unexpected RuntimeError")
    assert "Hunter2-secret" not in answer.stderr
