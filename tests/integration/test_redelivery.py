"""Heartbeats keep a held message invisible only while its worker lives; the broker's view of
pending tasks is what the sweeper asks. Real Redis, real kombu messages (no worker needed)."""

from __future__ import annotations

import time

import pytest
import redis
from celery import signature

from lifeos_backup.app.client import make_app
from lifeos_backup.jobs.redelivery import (
    HELD,
    UNACKED,
    UNACKED_INDEX,
    Heartbeat,
    pending_task_ids,
    predecessor_tags,
    restore_predecessor,
)
from lifeos_backup.jobs.routes import CREATE, VERIFY

pytestmark = pytest.mark.integration


def _deliver(app, client: redis.Redis, task_id: str) -> str:
    """Send a task and take it from its queue as a worker would: held in `unacked`."""
    signature(VERIFY, args=("json_backup_20260101_000000",), app=app).set(
        task_id=task_id
    ).apply_async()
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        message = channel.basic_get("maintenance", no_ack=False)
        assert message is not None
        tag = str(message.delivery_tag)
        channel.qos.restore_at_shutdown = False  # closing must not put it back: a killed worker
    assert client.hexists(UNACKED, tag)
    return tag


def test_a_heartbeat_keeps_held_messages_fresh_and_forgets_acked_ones(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    app = make_app(redis_url)
    tag = _deliver(app, client, "task-held")
    client.zadd(UNACKED_INDEX, {tag: 1.0})  # delivered long ago: due for redelivery
    beat = Heartbeat(client, "node@host", interval=3600)
    beat.hold(tag)
    beat.hold("acked-meanwhile")  # no longer in `unacked`
    beat.beat()
    assert client.zscore(UNACKED_INDEX, tag) > time.time() - 60
    assert client.zscore(UNACKED_INDEX, "acked-meanwhile") is None  # never re-added
    assert beat.held() == [tag]
    assert client.smembers(HELD.format(node="node@host")) == {tag.encode()}


def test_a_restarted_node_puts_its_predecessor_s_messages_back(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    app = make_app(redis_url)
    tag = _deliver(app, client, "task-of-dead-worker")
    client.sadd(HELD.format(node="node@host"), tag, "long-acked")
    assert predecessor_tags(client, "node@host", mine=[]) == [tag]
    assert restore_predecessor(app, client, "node@host", mine=[]) == 1
    assert not client.hexists(UNACKED, tag)
    assert client.llen("maintenance") == 1  # back in its queue, first in line
    assert not client.smembers(HELD.format(node="node@host"))


def test_pending_task_ids_sees_queued_and_held_messages(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    app = make_app(redis_url)
    _deliver(app, client, "task-held")
    signature(CREATE, args=("json",), app=app).set(task_id="task-queued").apply_async()
    assert {"task-held", "task-queued"} <= pending_task_ids(client)
    assert "task-lost" not in pending_task_ids(client)
