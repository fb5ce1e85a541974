"""Feature flags against a real Redis: rollout shares, monotonic growth, overrides, the audit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from lifeos_backup.app import flags
from tests.support.worker import LifeosEnv

pytestmark = pytest.mark.integration
CLI = str(Path(sys.executable).with_name("lifeos-backup"))
FLAG = "use_postgresql_backend"
USERS = [f"user-{n}" for n in range(10_000)]


def cli(env: LifeosEnv, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args],
        env=env.subprocess_env(USER="alice"),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def client(lifeos_env: LifeosEnv) -> redis.Redis:
    return redis.Redis.from_url(lifeos_env.vars["LIFEOS_REDIS_URL"], decode_responses=True)


def enabled(client: redis.Redis) -> set[str]:
    return {u for u in USERS if flags.is_enabled(FLAG, u, client=client)}


def test_percentage_rollout_share_and_monotonic_growth(client: redis.Redis) -> None:
    flags.set_flag(client, FLAG, "10%", actor="test")
    at_10 = enabled(client)
    assert abs(len(at_10) / len(USERS) - 0.10) <= 0.015, len(at_10)
    flags.set_flag(client, FLAG, "50%", actor="test")
    at_50 = enabled(client)
    assert abs(len(at_50) / len(USERS) - 0.50) <= 0.015, len(at_50)
    assert at_10 <= at_50, f"{len(at_10 - at_50)} users lost the feature going 10% -> 50%"
    flags.set_flag(client, FLAG, "0%", actor="test")
    assert enabled(client) == set()
    flags.set_flag(client, FLAG, "100%", actor="test")
    assert len(enabled(client)) == len(USERS)


def test_overrides_win_both_ways_and_unset_restores_the_rollout(client: redis.Redis) -> None:
    flags.set_flag(client, FLAG, "50%", actor="test")
    on = next(u for u in USERS if flags.is_enabled(FLAG, u, client=client))
    off = next(u for u in USERS if not flags.is_enabled(FLAG, u, client=client))
    flags.set_user(client, FLAG, on, "false", actor="test")
    flags.set_user(client, FLAG, off, "true", actor="test")
    assert not flags.is_enabled(FLAG, on, client=client)
    assert flags.is_enabled(FLAG, off, client=client)
    flags.set_flag(client, FLAG, "false", actor="test")
    assert flags.is_enabled(FLAG, off, client=client)  # an override beats even `false`
    flags.set_flag(client, FLAG, "true", actor="test")
    assert not flags.is_enabled(FLAG, on, client=client)
    flags.unset_user(client, FLAG, on, actor="test")
    assert flags.is_enabled(FLAG, on, client=client)
    assert not flags.is_enabled("never_set", "u", client=client)


def test_every_change_is_recorded_in_redis_newest_first(client: redis.Redis) -> None:
    flags.set_flag(client, FLAG, "10%", actor="ann")
    flags.set_flag(client, FLAG, "10%", actor="ann")  # no change: not recorded
    flags.set_flag(client, FLAG, "50%", actor="bob")
    flags.set_user(client, FLAG, "u1", "true", actor="cy")
    changes = flags.history(client, FLAG)
    assert [(c.actor, c.user, c.old, c.new) for c in changes] == [
        ("cy", "u1", None, "true"),
        ("bob", None, "10%", "50%"),
        ("ann", None, None, "10%"),
    ]
    assert all(c.at.endswith("+00:00") for c in changes)


def test_app_side_reads_redis_from_the_environment(
    lifeos_env: LifeosEnv, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    flags.set_flag(client, FLAG, "true", actor="test")
    assert flags.is_enabled(FLAG, "anyone")  # LIFEOS_REDIS_URL from the test's env
    monkeypatch.setenv("LIFEOS_FLAGS_REDIS_URL", "redis://127.0.0.1:1/0")  # takes precedence
    with pytest.raises(redis.ConnectionError):
        flags.is_enabled(FLAG, "anyone")


def test_cli_set_get_list_and_audit(lifeos_env: LifeosEnv, client: redis.Redis) -> None:
    assert cli(lifeos_env, "flags", "set", FLAG, "10%").returncode == 0
    result = cli(lifeos_env, "flags", "set", FLAG, "50%", "--actor", "deploy-bot")
    assert result.returncode == 0 and "10% -> 50%" in result.stdout, result.stderr
    assert cli(lifeos_env, "flags", "set-user", FLAG, "u7", "true").returncode == 0
    assert cli(lifeos_env, "flags", "unset-user", FLAG, "u7").returncode == 0
    assert cli(lifeos_env, "flags", "set-user", FLAG, "u8", "false").returncode == 0

    got = json.loads(cli(lifeos_env, "flags", "get", FLAG, "--json").stdout)
    assert got["value"] == "50%" and got["overrides"] == {"u8": "false"}
    assert [(h["actor"], h["old"], h["new"]) for h in got["history"][-2:]] == [
        ("deploy-bot", "10%", "50%"),
        ("alice", None, "10%"),
    ]
    listed = json.loads(cli(lifeos_env, "flags", "list", "--json").stdout)
    assert listed == [{"name": FLAG, "value": "50%", "overrides": {"u8": "false"}}]

    audit = lifeos_env.catalog().actions("flag.")
    assert [
        (a.action, a.actor, json.loads(a.detail)["old"], json.loads(a.detail)["new"]) for a in audit
    ] == [
        ("flag.set", "alice", None, "10%"),
        ("flag.set", "deploy-bot", "10%", "50%"),
        ("flag.set_user", "alice", None, "true"),
        ("flag.unset_user", "alice", "true", None),
        ("flag.set_user", "alice", None, "false"),
    ]
    assert all(a.target == FLAG and a.at is not None for a in audit)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("set", FLAG, "maybe"), "invalid flag value 'maybe'"),
        (("set", FLAG, "150%"), "invalid flag value '150%'"),
        (("set-user", FLAG, "u1", "10%"), "per-user override is true or false"),
        (("set", "bad name", "true"), "invalid flag name"),
    ],
)
def test_cli_refuses_invalid_values_and_changes_nothing(
    lifeos_env: LifeosEnv, client: redis.Redis, args: tuple[str, ...], message: str
) -> None:
    flags.set_flag(client, FLAG, "10%", actor="test")
    result = cli(lifeos_env, "flags", *args)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert flags.get_flag(client, FLAG).value == "10%"
    assert flags.get_flag(client, FLAG).overrides == {}
    assert len(flags.history(client, FLAG)) == 1
