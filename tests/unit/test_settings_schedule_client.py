"""Settings, the Beat schedule and the app client: pure checks, no services."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from celery.schedules import crontab

from beat_schedule import build_schedule, parse_crontab
from lifeos_backup.core.errors import ConfigError
from lifeos_backup.core.settings import Settings, get_settings

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `(LIFEOS_[A-Z0-9_]+)` \|", readme, re.M))
    fields = {f"LIFEOS_{name.upper()}" for name in Settings.model_fields}
    assert fields - documented == set(), "add these to README's settings table"
    assert documented - fields == set(), "README documents settings that do not exist"


def test_invalid_setting_is_a_clear_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIFEOS_COMPRESSION", "lzma")
    get_settings.cache_clear()
    try:
        with pytest.raises(ConfigError, match="invalid settings"):
            get_settings()
    finally:
        get_settings.cache_clear()


def test_secrets_do_not_print(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(database_url="postgresql://u:hunter22@db/x", flower_basic_auth="a:b1234")
    assert "hunter22" not in repr(settings) and "b1234" not in str(settings)


def test_schedule_defaults_match_the_old_guide() -> None:
    schedule = build_schedule(Settings())
    json_job = schedule["json-backup"]
    assert json_job["task"] == "lifeos.backup.start" and json_job["args"] == ("json",)
    assert json_job["schedule"] == crontab(minute="0", hour="2")


def test_schedule_comes_from_settings() -> None:
    schedule = build_schedule(Settings(schedule_json_backup="15 4 * * 0"))
    assert schedule["json-backup"]["schedule"] == crontab(minute="15", hour="4", day_of_week="0")


@pytest.mark.parametrize("text", ["0 2 * *", "61 2 * * *", "every day"])
def test_bad_crontab_names_the_setting(text: str) -> None:
    with pytest.raises(ConfigError, match="LIFEOS_SCHEDULE_JSON_BACKUP"):
        parse_crontab(text, "LIFEOS_SCHEDULE_JSON_BACKUP")


def test_client_imports_only_celery() -> None:
    """The main app vendors nothing of ours but this module (and the task names it sends): it must
    not pull our stack in."""
    code = (
        "import sys, lifeos_backup.app.client\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('pydantic', 'sqlalchemy', 'zstandard', 'typer', 'rich', 'alembic', 'boto3')"
        " or m.startswith('lifeos_backup.') and m not in ("
        "'lifeos_backup.app', 'lifeos_backup.app.client', 'lifeos_backup.jobs',"
        " 'lifeos_backup.jobs.routes')]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_progress_passes_on_the_meta_it_checked_even_when_the_task_moves_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each read of an unfinished task's `info` asks the backend again: between the check and the
    use the task may finish and `info` become its result (the backup id, a string). The client
    reads it once, so the progress callback only ever gets the dict it checked."""
    from lifeos_backup.app import client

    class Moving:
        reads = 0

        def __init__(self, *_args: object, **_kwargs: object) -> None:
            pass

        state = "PROGRESS"

        @property
        def info(self) -> object:
            Moving.reads += 1
            return {"phase": "archiving"} if Moving.reads == 1 else "json_backup_20261207_120000"

    seen: list[object] = []
    monkeypatch.setattr(client, "AsyncResult", Moving)
    assert client._step_result(object(), "task", "create", seen.append) is None  # type: ignore[arg-type]
    assert seen == [{"phase": "archiving"}]
