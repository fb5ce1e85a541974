"""`users add|list|remove` and the production guard of `restore json`, run as operators run them:
the installed `lifeos-backup` in a subprocess, a real repository, the password on stdin."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lifeos_backup.core.fsutil import private_dir
from lifeos_backup.core.settings import Settings
from lifeos_backup.jobs.backups import create_backup, verify_backup
from lifeos_backup.storage import audit
from lifeos_backup.storage.catalog import open_catalog
from tests.support.cli import CLI, Answer, assert_failure, assert_usage_error, clean_env
from tests.support.trees import make_tree

PASSWORD = "a long enough passphrase"


@dataclass
class Repo:
    settings: Settings
    env: dict[str, str]
    cwd: Path
    backup_id: str

    def run(self, *args: str, stdin: str = "") -> Answer:
        done = subprocess.run(
            [CLI, *args], cwd=self.cwd, env={**self.env, "USER": "root-op"}, input=stdin,
            capture_output=True, text=True, timeout=90,
        )  # fmt: skip
        return Answer(tuple(args), done.returncode, done.stdout, done.stderr)

    def records(self, action: str) -> list[dict[str, object]]:
        catalog = open_catalog(self.settings.effective_catalog_url)
        return [audit.as_dict(r) for r in audit.records(catalog, action=action)]


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Repo]:
    for key in [k for k in os.environ if k.startswith("LIFEOS_")]:
        monkeypatch.delenv(key)
    root, app_dir = tmp_path / "backups", tmp_path / "app"
    make_tree(app_dir, files=6)
    settings = Settings(_env_file=None, backup_root=root, app_dir=app_dir)  # type: ignore[call-arg]
    catalog = open_catalog(settings.effective_catalog_url)
    backup_id = create_backup("json", settings, catalog).backup_id
    verify_backup(backup_id, settings, catalog)
    env = clean_env(tmp_path, LIFEOS_BACKUP_ROOT=str(root), LIFEOS_APP_DIR=str(app_dir))
    yield Repo(settings, env, private_dir(tmp_path / "cwd"), backup_id)
    catalog.engine.dispose()


def test_accounts_are_made_listed_and_removed_with_the_password_from_stdin(repo: Repo) -> None:
    made = repo.run("users", "add", "alice", "--role", "admin", stdin=PASSWORD + "\n")
    assert made.code == 0, made
    assert "account alice (admin) created" in made.stdout
    listed = repo.run("users", "list")
    assert "alice" in listed.stdout and "admin" in listed.stdout and "root-op" in listed.stdout
    assert PASSWORD not in listed.stdout + made.stdout + made.stderr
    assert "argon2" not in listed.stdout  # never the hash either
    assert_failure(repo.run("users", "add", "alice", "--role", "viewer", stdin=PASSWORD), "exists")
    assert_failure(repo.run("users", "add", "bob", "--role", "viewer", stdin="short"), "too short")
    assert_failure(repo.run("users", "add", "Bad Name", "--role", "viewer", stdin=PASSWORD))
    assert_usage_error(repo.run("users", "add", "bob", "--role", "root"), "is not a role")
    assert_usage_error(repo.run("users", "add", "bob", "--role", "viewer", PASSWORD))  # no argv
    assert repo.run("users", "remove", "alice").code == 0
    assert_failure(repo.run("users", "remove", "alice"), "no account 'alice'")
    added = repo.records("user")
    assert [(r["action"], r["target"], r["initiator"]) for r in added] == [
        ("user.add", "alice", "root-op"),
        ("user.remove", "alice", "root-op"),
    ]


def test_a_restore_over_the_app_folder_needs_the_production_flag(repo: Repo) -> None:
    app_dir = str(repo.settings.app_dir)
    refused = repo.run("restore", "json", repo.backup_id, "--target", app_dir, "--force")
    assert_failure(refused, "refusing to restore over production", "--i-know-this-is-production")
    (ana := repo.settings.app_dir / "data" / "characters" / "item-00000.json").write_text("{}")
    done = repo.run(
        "restore", "json", repo.backup_id, "--target", app_dir, "--force",
        "--i-know-this-is-production",
    )  # fmt: skip
    assert done.code == 0, done
    assert json.loads(ana.read_text())["id"] == "id-00000"  # the backup's version is back
    elsewhere = repo.run("restore", "json", repo.backup_id, "--target", str(repo.cwd / "copy"))
    assert elsewhere.code == 0, elsewhere
    records = repo.records("restore.json")
    assert [(r["status"], r["detail"].get("production")) for r in records] == [  # type: ignore[union-attr]
        ("failed", True),
        ("succeeded", True),
        ("succeeded", None),
    ]
    confirmed = records[1]["detail"]
    assert confirmed["confirmed_by"] == "--i-know-this-is-production"  # type: ignore[index]
    assert confirmed["approved_by"] == "root-op"  # type: ignore[index]
