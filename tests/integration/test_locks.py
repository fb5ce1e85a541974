"""Redis locks know their holder: a dead holder on this host loses the lock at once, a duplicate
delivery of a live task is told apart, and renewal and release ride out a Redis outage.

Real Redis servers: the one all tests share, and for the outages one of the test's own that it
stops and starts again on the same port.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import redis

from lifeos_backup.core.errors import AlreadyRunning
from lifeos_backup.jobs.locks import PREFIX, DuplicateDelivery, Holder, acquire, holder, reap_dead
from tests.support.services import StoppableRedis

pytestmark = pytest.mark.integration


def _plant(client: redis.Redis, name: str, who: Holder, ttl: int = 600) -> None:
    client.set(PREFIX + name, who.token(), ex=ttl)


def _dead_pid() -> int:
    """A pid that was alive a moment ago and is not any more."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_dead_holder_on_this_host_loses_the_lock_at_once(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    dead = replace(Holder.me("task-a"), pid=_dead_pid(), start=None)
    _plant(client, "backup:json", dead)  # TTL 600 s: waiting it out would fail the test
    held = acquire(client, "backup:json", 600, "task-b")
    try:
        assert holder(client, "backup:json").owner == "task-b"
    finally:
        held.release()
    assert client.get(PREFIX + "backup:json") is None


def test_a_reused_pid_is_not_the_holder_and_a_reboot_ends_every_holder(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    me = Holder.me("task-a")
    for stale in (replace(me, start=(me.start or 0) - 1), replace(me, boot="another-boot")):
        _plant(client, "rotate:json", stale)
        acquire(client, "rotate:json", 600, "task-b").release()


def test_a_live_holder_keeps_it_and_the_same_task_is_a_duplicate(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    live = Holder.me("task-a")  # this very process: alive
    _plant(client, "backup:json", live)
    with pytest.raises(AlreadyRunning) as other:
        acquire(client, "backup:json", 600, "task-b")
    assert not isinstance(other.value, DuplicateDelivery)
    assert "task-a" in str(other.value)
    with pytest.raises(DuplicateDelivery) as twin:
        acquire(client, "backup:json", 600, "task-a")
    assert twin.value.provable
    assert json.loads(client.get(PREFIX + "backup:json"))["owner"] == "task-a"


def test_a_holder_on_another_host_is_never_declared_dead(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    remote = replace(Holder.me("task-a"), host="elsewhere", pid=_dead_pid())
    _plant(client, "backup:json", remote)
    with pytest.raises(DuplicateDelivery) as twin:
        acquire(client, "backup:json", 600, "task-a")
    assert not twin.value.provable  # the task retries once the TTL would have run out
    with pytest.raises(AlreadyRunning):
        acquire(client, "backup:json", 600, "task-b")


def test_renewal_rides_out_a_redis_restart_that_lost_the_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis comes back empty within the TTL: the holder puts its key back and keeps the lock.
    The restart waits for a failed renewal (an event, not a fixed sleep), and the TTL leaves
    the restart most of its 15 s, so a slow start on a loaded machine cannot lose the lock."""
    caplog.set_level(logging.WARNING, logger="lifeos_backup.jobs.locks")
    with StoppableRedis(persistent=False) as server:
        client = redis.Redis.from_url(server.url(), socket_timeout=2, socket_connect_timeout=2)
        held = acquire(client, "backup:json", 15, "task-a")  # renewed every 5 s
        try:
            server.kill()
            deadline = time.monotonic() + 30
            while f"cannot renew lock {PREFIX}backup:json yet" not in caplog.text:
                assert time.monotonic() < deadline, "no renewal was tried during the outage"
                time.sleep(0.1)
            server.start()  # no persistence: the key is gone
            deadline = time.monotonic() + 30
            while client.get(PREFIX + "backup:json") is None:
                assert time.monotonic() < deadline, "the lock was not taken back"
                time.sleep(0.2)
            assert not held.lost.is_set()
            assert holder(client, "backup:json").owner == "task-a"
        finally:
            held.release()
        assert client.get(PREFIX + "backup:json") is None


def test_renewal_gives_up_after_the_ttl_and_says_the_lock_is_lost() -> None:
    with StoppableRedis(persistent=False) as server:
        client = redis.Redis.from_url(server.url(), socket_timeout=1, socket_connect_timeout=1)
        held = acquire(client, "backup:json", 3, "task-a")
        server.kill()
        assert held.lost.wait(30), "an outage longer than the TTL must end the holder's claim"
        held.release()  # must not block while Redis is down


def test_a_release_during_an_outage_happens_once_redis_is_back() -> None:
    with StoppableRedis() as server:
        client = redis.Redis.from_url(server.url(), socket_timeout=1, socket_connect_timeout=1)
        held = acquire(client, "backup:json", 60, "task-a")
        server.halt()  # a clean stop: the lock is in its append-only file
        held.release()  # returns at once; the release is retried in the background
        server.start()
        deadline = time.monotonic() + 30
        while client.get(PREFIX + "backup:json") is not None:
            assert time.monotonic() < deadline, "the lock outlived its released holder"
            time.sleep(0.2)


def test_reaping_frees_only_the_locks_of_provably_dead_holders(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    _plant(client, "drill:json", replace(Holder.me("task-a"), pid=_dead_pid(), start=None))
    _plant(client, "drill:postgres", Holder.me("task-b"))  # alive: this process
    _plant(client, "health", replace(Holder.me("task-c"), host="elsewhere", pid=_dead_pid()))
    assert reap_dead(client) == ["drill:json"]
    assert sorted(k.decode() for k in client.scan_iter(PREFIX + "*")) == [
        PREFIX + "drill:postgres",
        PREFIX + "health",
    ]
