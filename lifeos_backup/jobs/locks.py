"""Cross-host mutual exclusion through Redis: a lock with a TTL that its holder keeps renewing.

The lock's value names its holder: the task (or `cli`), the host, the process id, the process's
start time and the machine's boot id. That makes three things possible that a bare TTL lock
cannot do:

* a holder on this host that is provably dead (its process is gone, or the pid now belongs to a
  younger process, or the machine rebooted since) loses the lock at once, so a job whose worker
  was SIGKILLed is not blocked by its own orphaned lock for the TTL;
* a redelivered message of a task that is still running here (a duplicate delivery) is told so
  (`DuplicateDelivery`) instead of failing the task's result with "already running";
* a holder on another host, whose death cannot be proven from here, keeps the lock until the TTL
  runs out after its last renewal (at most `ttl` seconds after it died).

Renewal rides out Redis outages: a failed renewal is retried every second, and the lock counts as
lost only once `ttl` seconds passed without one (then it has expired in Redis and someone else may
hold it), or when another holder took it. A lock whose key vanished (a Redis restarted without
persistence) is taken back with the same value if nobody else took it meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import redis
from redis.exceptions import LockError, LockNotOwnedError
from redis.lock import Lock

from lifeos_backup.core.errors import AlreadyRunning

log = logging.getLogger(__name__)
PREFIX = "lifeos:lock:"
RETRY_EVERY = 1.0  # seconds between attempts to renew or release while Redis does not answer
# Deletes the key only if it still holds this value: never someone else's lock.
_DELETE_IF = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"  # noqa: E501


class DuplicateDelivery(AlreadyRunning):
    """The same task already holds the lock in a live process: this delivery is a duplicate.

    `provable` is True when the holder runs on this host and is alive; False when it runs on
    another host, where it may have died without this host being able to tell yet.
    """

    def __init__(self, what: str, detail: str = "", hint: str = "", *, provable: bool = False):
        super().__init__(what, detail, hint)
        self.provable = provable


@cache
def boot_id() -> str:
    """This boot of the machine (Linux); empty where unknown."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start(pid: int) -> int | None:
    """The start time of live process `pid` in clock ticks since boot, or None if there is none.

    Together with the pid it names one process: a pid reused later has a later start time. A
    zombie (dead, not yet reaped by its new parent) counts as gone.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    try:
        if fields[0] in ("Z", "X", "x"):  # field 3: the state
            return None
        return int(fields[19])  # field 22 of proc(5)
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True)
class Holder:
    """Who holds a lock (or a lease): enough to tell, on its own host, whether it still lives."""

    owner: str  # task id, or `cli`
    host: str
    pid: int
    start: int | None
    boot: str
    since: str

    @classmethod
    def me(cls, owner: str) -> Holder:
        pid = os.getpid()
        return cls(
            owner, socket.gethostname(), pid, process_start(pid), boot_id(),
            datetime.now(UTC).isoformat(timespec="seconds"),
        )  # fmt: skip

    @classmethod
    def parse(cls, raw: bytes | str | None) -> Holder | None:
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            return cls(
                str(data["owner"]), str(data["host"]), int(data["pid"]),
                None if data.get("start") is None else int(data["start"]),
                str(data.get("boot", "")), str(data.get("since", "?")),
            )  # fmt: skip
        except (ValueError, KeyError, TypeError):
            return None

    def token(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def on_this_host(self) -> bool:
        return self.host == socket.gethostname()

    def provably_dead(self) -> bool:
        """True only when this host can prove the holder's process is gone."""
        if not self.on_this_host():
            return False
        if self.boot and boot_id() and self.boot != boot_id():
            return True  # the machine rebooted since it took the lock
        start = process_start(self.pid)
        return start is None or (self.start is not None and start != self.start)

    def describe(self) -> str:
        return f"{self.owner} (pid {self.pid} on {self.host}, since {self.since})"


class HeldLock:
    """A lock this process holds; `lost` is set once it can no longer be sure it holds it."""

    def __init__(self, lock: Lock, ttl: float) -> None:
        self._lock = lock
        self._ttl = ttl
        self._stop = threading.Event()
        self.lost = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="lock-renewal", daemon=True)

    @property
    def name(self) -> str:
        return str(self._lock.name)

    def _renew_once(self) -> None:
        """Extend the TTL; take the key back if Redis lost it and nobody else took it."""
        try:
            self._lock.reacquire()
        except LockNotOwnedError:
            token = self._lock.local.token
            if not self._lock.redis.set(self._lock.name, token, nx=True, px=int(self._ttl * 1000)):
                raise
            log.warning("lock %s had vanished from Redis; taken back", self.name)

    def _renew(self) -> None:
        last_ok = time.monotonic()
        interval = self._ttl / 3
        while not self._stop.wait(interval):
            try:
                self._renew_once()
            except LockNotOwnedError as exc:
                log.error("lost lock %s: another holder has it (%s)", self.name, exc)
                self.lost.set()
                return
            except (LockError, redis.RedisError) as exc:
                if time.monotonic() - last_ok >= self._ttl:
                    log.error("lost lock %s: not renewed for %.0f s: %s", self.name, self._ttl, exc)
                    self.lost.set()
                    return
                log.warning("cannot renew lock %s yet: %s", self.name, exc)
                interval = RETRY_EVERY
                continue
            last_ok, interval = time.monotonic(), self._ttl / 3

    def start(self) -> None:
        self._thread.start()

    def release(self) -> None:
        """Delete the lock if it is still ours; while Redis does not answer, keep trying in the
        background (until the TTL would have removed it anyway), never blocking the caller."""
        self._stop.set()
        self._thread.join(timeout=self._ttl)
        if not self._release_once():
            threading.Thread(target=self._release_later, name="lock-release", daemon=True).start()

    def _release_once(self) -> bool:
        try:
            self._lock.redis.eval(_DELETE_IF, 1, self._lock.name, self._lock.local.token)
        except redis.RedisError as exc:
            log.warning("cannot release lock %s yet: %s", self.name, exc)
            return False
        return True

    def _release_later(self) -> None:
        deadline = time.monotonic() + self._ttl
        while time.monotonic() < deadline:
            time.sleep(RETRY_EVERY)
            if self._release_once():
                return


def holder(client: redis.Redis, name: str) -> Holder | None:
    """Who holds the lock `name`, or None when it is free (or its value is not ours)."""
    return Holder.parse(client.get(PREFIX + name))


def _take_from_the_dead(client: redis.Redis, name: str) -> Holder | None:
    """Remove the lock if its holder is provably dead; returns the holder that stays, if any."""
    raw = client.get(PREFIX + name)
    found = Holder.parse(raw)
    if raw is not None and found is not None and found.provably_dead():
        if client.eval(_DELETE_IF, 1, PREFIX + name, raw):
            log.warning("lock %s: holder %s is dead; lock released", name, found.describe())
        return None
    return found


def reap_dead(client: redis.Redis) -> list[str]:
    """Remove every lock whose holder is provably dead (this host's); returns their names.

    A killed job's redelivery takes its lock over anyway; this frees locks nobody asks for
    again at once (a drill, a sync), so none outlives its holder by more than a heartbeat.
    """
    reaped = []
    for key in client.scan_iter(match=PREFIX + "*", count=1000):
        raw = client.get(key)
        if raw is None:  # released meanwhile
            continue
        found = Holder.parse(raw)
        if found is not None and found.provably_dead() and client.eval(_DELETE_IF, 1, key, raw):
            name = (key.decode() if isinstance(key, bytes) else str(key))[len(PREFIX) :]
            log.warning("lock %s: holder %s is dead; lock released", name, found.describe())
            reaped.append(name)
    return reaped


def acquire(client: redis.Redis, name: str, ttl: float, owner: str) -> HeldLock:
    """Take lock `name` now, or raise AlreadyRunning (DuplicateDelivery for our own task)."""
    me = Holder.me(owner)
    lock = client.lock(PREFIX + name, timeout=ttl, thread_local=False)
    for _attempt in range(2):  # a second try after removing a dead holder's lock
        if lock.acquire(blocking=False, token=me.token()):
            held = HeldLock(lock, ttl)
            held.start()
            return held
        other = _take_from_the_dead(client, name)
        if other is not None:
            break
    else:
        other = holder(client, name)
    who = other.describe() if other else "someone"
    if other is not None and other.owner == owner:
        raise DuplicateDelivery(
            f"{name} is already running as this very task",
            f"held by {who}; this delivery is a duplicate",
            provable=other.on_this_host(),
        )
    raise AlreadyRunning(
        f"{name} is already running",
        f"held by {who}; this request was skipped",
        "wait for it to finish; a crashed holder's lock is released when its death is seen "
        "on its host, or expires by itself",
    )


@contextlib.contextmanager
def exclusive(client: redis.Redis, name: str, ttl: float, owner: str) -> Iterator[HeldLock]:
    """Hold lock `name` for the block, or raise AlreadyRunning saying who holds it."""
    held = acquire(client, name, ttl, owner)
    try:
        yield held
    finally:
        held.release()
