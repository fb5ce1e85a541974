"""A lost job comes back in minutes, not hours: heartbeats for the messages a worker holds.

kombu's Redis transport keeps each delivered, not yet acknowledged message in the `unacked` hash,
with its delivery time in the `unacked_index` sorted set; every worker puts back in its queue any
message whose time is older than the visibility timeout. Our tasks acknowledge late (a crash must
not drop a backup), so a job that runs for two hours would need a visibility timeout of more than
two hours, and a job whose worker died would stay invisible that long.

Instead, each worker refreshes the time of every message it holds (running, prefetched, or held
for a retry countdown) every few seconds (HEARTBEAT) from a thread of its main process.
The timeout then only has to outlast a gap in those heartbeats (LIFEOS_VISIBILITY_TIMEOUT, 300 s
by default), whatever a job's length, and a worker that died (no more heartbeats) has its messages
redelivered within that time. A worker that starts again under the same node name (`up` and
compose restart it) puts its predecessor's messages back at once: a node name runs once, so the
predecessor is provably gone.

Each worker keeps the delivery tags it holds in `lifeos:held:<node name>`, for that restart. The
same heartbeat removes locks whose holder on this host is provably dead (lifeos_backup.jobs.locks).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

import redis

from lifeos_backup.jobs.locks import reap_dead

log = logging.getLogger(__name__)

UNACKED = "unacked"  # kombu's defaults (transport options unacked_key, unacked_index_key)
UNACKED_INDEX = "unacked_index"
HELD = "lifeos:held:{node}"
HEARTBEAT = 5.0  # seconds between heartbeats (at most; a tenth of the visibility timeout)


class Heartbeat:
    """The messages one worker holds, kept fresh in `unacked_index` while the worker lives."""

    def __init__(self, client: redis.Redis, node: str, interval: float) -> None:
        self.client = client
        self.node = node
        self.interval = interval
        self.key = HELD.format(node=node)
        self._tags: set[str] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
                self._thread.start()

    def hold(self, tag: str) -> None:
        """A message was delivered to this worker (task_received)."""
        with self._lock:
            self._tags.add(tag)
        self.start()
        try:
            self.client.sadd(self.key, tag)
        except redis.RedisError as exc:  # the next beat records it
            log.warning("cannot record held message %s yet: %s", tag, exc)

    def held(self) -> list[str]:
        with self._lock:
            return sorted(self._tags)

    def beat(self) -> None:
        """Refresh the delivery time of every held message; forget those acknowledged since."""
        with self._lock:
            tags = sorted(self._tags)
        if not tags:
            return
        now = time.time()
        pipe = self.client.pipeline(transaction=False)
        for tag in tags:
            pipe.zadd(UNACKED_INDEX, {tag: now}, xx=True)  # never re-adds an acknowledged one
            pipe.hexists(UNACKED, tag)
        replies = pipe.execute()
        gone = [tag for tag, held in zip(tags, replies[1::2], strict=True) if not held]
        if gone:
            self.client.srem(self.key, *gone)
            with self._lock:
                self._tags.difference_update(gone)

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            try:
                self.beat()
                reap_dead(self.client)
            except redis.RedisError as exc:
                log.warning("heartbeat of held messages failed (retrying): %s", exc)


def predecessor_tags(client: redis.Redis, node: str, mine: Iterable[str]) -> list[str]:
    """Messages a dead worker of the same node name still holds (in `unacked`, not ours)."""
    key = HELD.format(node=node)
    held = {raw.decode() if isinstance(raw, bytes) else str(raw) for raw in client.smembers(key)}
    left = sorted(held - set(mine))
    if not left:
        return []
    pipe = client.pipeline(transaction=False)
    for tag in left:
        pipe.hexists(UNACKED, tag)
    alive = [tag for tag, present in zip(left, pipe.execute(), strict=True) if present]
    gone = set(left) - set(alive)
    if gone:
        client.srem(key, *gone)
    return alive


def restore_predecessor(app: Any, client: redis.Redis, node: str, mine: Iterable[str]) -> int:
    """Put the dead predecessor's messages back at the head of their queues; returns how many."""
    tags = predecessor_tags(client, node, mine)
    if not tags:
        return 0
    with app.connection_for_write() as conn:
        qos = conn.default_channel.qos
        for tag in tags:
            qos.restore_by_tag(tag, leftmost=True)
    client.srem(HELD.format(node=node), *tags)
    log.warning("put back %d message(s) a previous run of %s held: %s", len(tags), node, tags)
    return len(tags)


def _task_id(raw: bytes | str) -> str | None:
    try:
        message = json.loads(raw)
    except ValueError:
        return None
    if isinstance(message, list) and message:  # unacked: [message, exchange, routing_key]
        message = message[0]
    headers = message.get("headers") if isinstance(message, dict) else None
    task_id = headers.get("id") if isinstance(headers, dict) else None
    return str(task_id) if task_id else None


def pending_task_ids(client: redis.Redis) -> set[str]:
    """Ids of every task with a message queued or held by a worker (running, prefetched, waiting
    for a retry countdown): what the sweeper asks before it calls a chain lost."""
    found: set[str] = set()
    for raw in client.hvals(UNACKED):
        task_id = _task_id(raw)
        if task_id:
            found.add(task_id)
    for key in client.scan_iter(_type="list", count=1000):
        for raw in client.lrange(key, 0, -1):
            task_id = _task_id(raw)
            if task_id:
                found.add(task_id)
    return found
