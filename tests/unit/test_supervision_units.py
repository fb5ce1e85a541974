"""Pieces of `up`'s supervision and the broker check, without processes.

The behaviour with real processes (outages, kills) is in tests/integration/test_up_supervision.py.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lifeos_backup.core.settings import Settings, get_settings
from lifeos_backup.monitoring import broker
from lifeos_backup.monitoring.health import BROKER_UNREACHABLE, CRITICAL, check_broker
from lifeos_backup.service import up
from tests.support.services import free_port

# What Beat's log holds after RedBeat failed to extend its lock (shortened): the traceback once
# whole, then again in fragments, one write per line, as Celery redirects stderr.
BEAT_CRASH = """\
[2026-12-07 04:40:11,891: CRITICAL/MainProcess] beat raised exception <class 'redis.exceptions.ConnectionError'>: network:ConnectionError
Traceback (most recent call last):
  File "/venv/site-packages/redbeat/schedulers.py", line 568, in tick
    self.lock.extend(int(self.lock_timeout))
    ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
ConnectionRefusedError: [Errno 111] Connection refused

The above exception was the direct cause of the following exception:

redis.exceptions.ConnectionError: Error 111 connecting to 127.0.0.1:39457. Connection refused.
[2026-12-07 04:40:11,900: WARNING/MainProcess] Traceback (most recent call last):
[2026-12-07 04:40:11,900: WARNING/MainProcess] self.lock.extend(int(self.lock_timeout))
[2026-12-07 04:40:11,900: WARNING/MainProcess] ^
[2026-12-07 04:40:11,900: WARNING/MainProcess] ^
[2026-12-07 04:40:11,900: WARNING/MainProcess] ^
[2026-12-07 04:40:11,909: WARNING/MainProcess] redis.exceptions
[2026-12-07 04:40:11,909: WARNING/MainProcess] .
[2026-12-07 04:40:11,909: WARNING/MainProcess] ConnectionError
[2026-12-07 04:40:11,909: WARNING/MainProcess] :
[2026-12-07 04:40:11,909: WARNING/MainProcess] Error 111 connecting to 127.0.0.1:39457. Connection refused.
"""  # noqa: E501


def test_last_words_finds_the_reason_among_traceback_noise() -> None:
    assert up.last_words(BEAT_CRASH) == (
        "redis.exceptions.ConnectionError: Error 111 connecting to 127.0.0.1:39457. "
        "Connection refused."
    )
    worker = (
        "[2026-12-07 04:40:07,452: ERROR/MainProcess] consumer: Cannot connect to redis\n"
        "Trying again in 2.00 seconds... (1/None)\n"
        "[2026-12-07 04:41:19,000: INFO/MainProcess] Task lifeos.backup.create received\n"
    )
    assert up.last_words(worker) == "consumer: Cannot connect to redis"
    # Killed by a signal: what it was doing last, not an error from long before.
    assert up.last_words(worker, crashed=False) == "Task lifeos.backup.create received"
    assert up.last_words("--- lifeos-backup up: beat starting\n^^^^\n\n") == ""
    assert len(up.last_words("x" * 1000)) == up.LAST_WORDS_CHARS


def test_restart_delay_doubles_to_a_minute_and_starts_over_after_a_stable_run() -> None:
    role = up.Role("beat", ["celery"], None)
    delays = [role.failed(started=t, now=t + 1) for t in range(0, 800, 100)]
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60]
    assert role.restart_at == 701 + 60
    assert role.failed(started=1000, now=1000 + up.STABLE_RUN) == 1  # it ran a good while


def test_redaction_hides_redis_password() -> None:
    assert up._redacted("redis://:pw-secret@h:1/0") == "redis://:***@h:1/0"
    assert up._redacted("redis://user:pw-secret@h:1/0") == "redis://user:***@h:1/0"
    assert up._redacted("redis://h:1/0") == "redis://h:1/0"


def test_port_busy_names_a_taken_port(tmp_path: Path) -> None:
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        why = up._port_busy("127.0.0.1", port)
    assert why is not None and f"127.0.0.1:{port}" in why and "in use" in why
    assert up._port_busy("127.0.0.1", free_port()) is None


def test_marker_records_once_reads_back_and_clears(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = datetime(2026, 12, 7, 4, 40, 10, tzinfo=UTC)
    assert broker.read_since(state) is None
    assert broker.record(state, first) == first
    assert broker.record(state, datetime(2026, 12, 7, 5, 0, tzinfo=UTC)) == first  # kept
    path = broker.marker_path(state)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert path.read_text() == "2026-12-07T04:40:10+00:00\n"
    assert broker.read_since(state) == first
    assert broker.clear(state) == first
    assert not path.exists() and broker.clear(state) is None


def test_ping_reason_is_one_line_without_password() -> None:
    reason = broker.ping(f"redis://:pw-9secret@127.0.0.1:{free_port()}/0") or ""
    assert "Connection refused" in reason
    assert "pw-9secret" not in reason and "\n" not in reason


@pytest.fixture
def settings_with_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    for key in ("LIFEOS_REDIS_URL", "LIFEOS_BACKUP_ROOT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("LIFEOS_BACKUP_ROOT", str(tmp_path / "root"))
    monkeypatch.setenv("LIFEOS_REDIS_URL", f"redis://:pw-9secret@127.0.0.1:{free_port()}/0")
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def test_unreachable_broker_is_critical_since_the_noted_time(settings_with_redis: Settings) -> None:
    now = datetime(2026, 12, 7, 5, 0, tzinfo=UTC)
    found = check_broker(settings_with_redis, now)
    assert found is not None and found.name == BROKER_UNREACHABLE and found.severity == CRITICAL
    assert found.summary == "broker unreachable since 2026-12-07T05:00:00+00:00"
    assert "pw-9secret" not in found.detail and ":***@" in found.detail
    broker.record(settings_with_redis.state_dir, datetime(2026, 12, 7, 4, 40, tzinfo=UTC))
    found = check_broker(settings_with_redis, now)
    assert found is not None and found.summary.endswith("since 2026-12-07T04:40:00+00:00")


def test_no_redis_configured_is_no_outage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIFEOS_REDIS_URL", raising=False)
    monkeypatch.setenv("LIFEOS_BACKUP_ROOT", str(tmp_path / "root"))
    get_settings.cache_clear()
    try:
        assert check_broker(get_settings(), datetime.now(UTC)) is None
    finally:
        get_settings.cache_clear()


def test_celery_retries_for_ever_and_times_out_dead_sockets() -> None:
    from workers.celery_app import app

    conf = app.conf
    assert conf.broker_connection_max_retries is None
    assert conf.result_backend_always_retry is True
    assert conf.result_backend_max_sleep_between_retries_ms <= 10_000
    for options in (conf.broker_transport_options, conf.redbeat_redis_options):
        assert options["socket_timeout"] and options["socket_connect_timeout"]
        assert options["health_check_interval"] > 0
    assert "visibility_timeout" in conf.broker_transport_options  # merged, not replaced
    assert conf.redis_socket_timeout and conf.redis_backend_health_check_interval


def test_up_runs_the_wal_stream_only_when_asked_and_configured(tmp_path: Path) -> None:
    from lifeos_backup.core.errors import ConfigError

    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "pg_receivewal").write_text("#!/bin/sh\n")
    (bindir / "pg_receivewal").chmod(0o755)
    ready = Settings(
        backup_root=tmp_path, wal_stream=True, pg_bin_dir=bindir,
        database_url="postgresql://u:pw@db/app",
    )  # type: ignore[call-arg]  # fmt: skip
    args = up._stream_command(ready)
    assert args[1:] == ["-m", "lifeos_backup.cli", "wal", "stream"] and "pw" not in args
    no_db = Settings(
        backup_root=tmp_path, wal_stream=True, pg_bin_dir=bindir, database_url=None
    )  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="the WAL stream needs a database"):
        up._stream_command(no_db)
