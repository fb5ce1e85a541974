"""How failures are classified and worded (lifeos_backup.cli.errors, client.failure_text,
settings.invalid_fields, audit.ACTIONS); the subprocess tests are in tests/cli/."""

from __future__ import annotations

import errno
import re
from pathlib import Path

import psycopg
import pytest
from celery.utils.serialization import create_exception_cls

import lifeos_backup
from lifeos_backup.app.client import failure_text
from lifeos_backup.cli import commands as cli
from lifeos_backup.cli import errors as cli_errors
from lifeos_backup.core.errors import ConfigError
from lifeos_backup.core.settings import Settings, get_settings
from lifeos_backup.jobs.audit_tasks import TASK_ACTIONS
from lifeos_backup.storage import audit

PACKAGE = Path(lifeos_backup.__file__).parent


def _no_url() -> str:
    raise AssertionError("not asked for")


def test_usage_errors_are_recognised_in_the_click_typer_really_uses() -> None:
    with pytest.raises(Exception) as caught:
        cli.app(["list", "--kidn", "json"], standalone_mode=False)
    assert cli_errors.is_usage_error(caught.value)
    assert not cli_errors.is_usage_error(ValueError("x"))


def test_a_lifeos_error_from_a_worker_reads_as_text_not_as_a_tuple() -> None:
    """Celery rebuilds an exception whose class this process never imported as a stand-in with
    the same arguments; a LifeosError's arguments are (what, detail, hint)."""
    stand_in = create_exception_cls("AuthenticationFailed", "celery.exceptions")
    error = stand_in("PostgreSQL refused the login", "password authentication failed", "fix it")
    assert str(error).startswith("('")  # what the CLI used to print
    assert failure_text(error) == (
        "PostgreSQL refused the login: password authentication failed (hint: fix it)"
    )
    assert failure_text(ConfigError("bad", "", "")) == "bad"
    assert failure_text(ValueError("plain")) == "plain"


def test_psycopg_errors_about_the_server_are_expected_and_read_as_text() -> None:
    refused = psycopg.OperationalError('connection failed: FATAL:  password\n  for user "ops"')
    error = cli_errors.expected(refused, _no_url)
    assert error is not None and "\n" not in str(error)
    assert str(error).startswith("PostgreSQL refused the request: connection failed: FATAL:")
    denied = psycopg.errors.InsufficientPrivilege("permission denied for table characters")
    assert cli_errors.expected(denied, _no_url) is not None
    assert cli_errors.expected(psycopg.errors.SyntaxError("near SELEC"), _no_url) is None  # bug


def test_os_errors_of_the_machine_are_expected_others_are_bugs() -> None:
    full = OSError(errno.ENOSPC, "No space left on device", "/srv/restore/a.json")
    error = cli_errors.expected(full, _no_url)
    assert str(error) == (
        "No space left on device: /srv/restore/a.json (hint: free some space there, or choose "
        "another place, and try again)"
    )
    assert cli_errors.expected(OSError(errno.EBADF, "Bad file descriptor"), _no_url) is None


def test_passwords_in_urls_are_redacted() -> None:
    text = "postgresql://ops:s3cr%40t@db:5432/app and redis://:pw@r:6379/0 and http://h/x"
    assert cli_errors.redact(text) == (
        "postgresql://ops:***@db:5432/app and redis://:***@r:6379/0 and http://h/x"
    )


def test_invalid_settings_name_each_setting_and_never_its_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LIFEOS_REDIS_URL", "redis://:Secret-pw@host:99999/0")
    monkeypatch.setenv("LIFEOS_COMPRESSION", "bzip9")
    get_settings.cache_clear()
    try:
        with pytest.raises(ConfigError) as caught:
            get_settings()
    finally:
        get_settings.cache_clear()
    text = str(caught.value)
    assert "LIFEOS_REDIS_URL: Port out of range" in text and "LIFEOS_COMPRESSION: must be" in text
    assert "Secret-pw" not in text and "bzip9" not in text


def test_empty_redis_url_means_unset() -> None:
    assert Settings(_env_file=None, redis_url="  ").redis_url is None  # type: ignore[call-arg]


def test_every_recorded_audit_action_can_be_filtered() -> None:
    """`audit --action` refuses names outside audit.ACTIONS; every action the code records
    must be among them."""
    pattern = re.compile(
        r"(?:audited\([^,]+,\s*|record_action\(\s*|record_quietly\([^,]+,\s*|_record\([^,]+,\s*)"
        r"\"([a-z_.]+)\""
    )
    written = set(TASK_ACTIONS.values())
    for path in PACKAGE.rglob("*.py"):
        written |= set(pattern.findall(path.read_text()))
    assert {"restore.json", "flag.set", "entity.restore", "catalog.rebuild"} <= written
    assert written <= set(audit.ACTIONS)
    assert "restore" in audit.action_filters() and "nope" not in audit.action_filters()
