"""Cross-host mutual exclusion through Redis: a lock with a TTL that the holder keeps renewing.

If the holder dies (even by SIGKILL) nobody renews it and it expires within `ttl` seconds, so a
killed worker never blocks the next run for long.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import redis
from redis.exceptions import LockError
from redis.lock import Lock

from lifeos_backup.errors import AlreadyRunning

log = logging.getLogger(__name__)
PREFIX = "lifeos:lock:"


class HeldLock:
    """A lock this process holds; `lost` is set if renewal ever failed (someone else may run)."""

    def __init__(self, lock: Lock, ttl: float) -> None:
        self._lock = lock
        self._ttl = ttl
        self._stop = threading.Event()
        self.lost = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="lock-renewal", daemon=True)

    def _renew(self) -> None:
        while not self._stop.wait(self._ttl / 3):
            try:
                self._lock.reacquire()
            except (LockError, redis.RedisError) as exc:
                log.error("lost lock %s: %s", self._lock.name, exc)
                self.lost.set()
                return

    def start(self) -> None:
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self._ttl)
        try:
            self._lock.release()
        except (LockError, redis.RedisError) as exc:
            log.warning("lock %s was already gone at release: %s", self._lock.name, exc)


def holder(client: redis.Redis, name: str) -> dict[str, str] | None:
    """Who holds the lock `name` (task, host, since), or None when it is free."""
    raw = client.get(PREFIX + name)
    if raw is None:
        return None
    try:
        return dict(json.loads(raw))
    except ValueError:
        return {"token": raw.decode(errors="replace")}


@contextmanager
def exclusive(client: redis.Redis, name: str, ttl: float, owner: str) -> Iterator[HeldLock]:
    """Hold lock `name` for the block, or raise AlreadyRunning saying who holds it."""
    token = json.dumps(
        {"owner": owner, "host": socket.gethostname(), "since": datetime.now(UTC).isoformat()}
    )
    lock = client.lock(PREFIX + name, timeout=ttl, thread_local=False)
    if not lock.acquire(blocking=False, token=token):
        info = holder(client, name) or {}
        raise AlreadyRunning(
            f"{name} is already running",
            f"held by {info.get('owner', '?')} on {info.get('host', '?')} since "
            f"{info.get('since', '?')}; this request was skipped",
            "wait for it to finish; a crashed holder's lock expires by itself",
        )
    held = HeldLock(lock, ttl)
    held.start()
    try:
        yield held
    finally:
        held.release()
