"""Is Redis (broker, results, locks) answering, and since when has it not been?

One small module so that `lifeos-backup up` (which pings Redis every few seconds while it
supervises), `lifeos-backup status` and the health evaluation judge the broker alike.

The start of an outage is kept in `<state dir>/broker-unreachable`: one line, the ISO time the
first failed ping was seen. A file, not Redis, because Redis is what is missing; and a file in
the state dir, because every process of a deployment (`up`, `status` run by a person or cron,
the metrics endpoint) sees it, so they all report the same "unreachable since T". Whoever sees
the outage first writes it; whoever sees Redis answer again removes it.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from lifeos_backup.core.errors import ConfigError
from lifeos_backup.core.fsutil import atomic_writer, remove_quietly
from lifeos_backup.core.settings import Settings

MARKER_FILE = "broker-unreachable"
PING_TIMEOUT = 2.0  # seconds: a live Redis answers in milliseconds; a dead host must not stall us
REASON_LIMIT = 200  # characters of an error kept in one line


def broker_url(settings: Settings) -> str | None:
    """The Redis to check: LIFEOS_REDIS_URL, else the embedded one of a running `up`, else None.

    None means nothing is configured to be unreachable (no `up` running with its embedded
    Redis, no URL set), which is not an outage.
    """
    try:
        return settings.require_redis_url()
    except ConfigError:
        return None


def redacted(url: str) -> str:
    """The URL with its password replaced, fit for printing (a Redis URL may carry one)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def ping(url: str, timeout: float = PING_TIMEOUT) -> str | None:
    """None when Redis at `url` answers PING within `timeout`; else why not, in one line.

    The reason comes from redis-py's error, which names host and port but never the password.
    A Redis still loading its append-only file answers with an error: it counts as down, since
    nothing can be queued yet.
    """
    try:
        # One attempt: redis-py's default retries would stretch a refused connection to seconds.
        once = Retry(NoBackoff(), 0)
        with redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=once
        ) as client:
            client.ping()
    except (redis.RedisError, OSError, ValueError) as exc:
        return _one_line(exc)
    return None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()).rstrip(".") or type(exc).__name__
    return text if len(text) <= REASON_LIMIT else text[: REASON_LIMIT - 3] + "..."


def marker_path(state_dir: Path) -> Path:
    return state_dir / MARKER_FILE


def read_since(state_dir: Path) -> datetime | None:
    """When the current outage began, from the marker; None without (or with a broken) marker."""
    try:
        text = marker_path(state_dir).read_text().strip()
        since = datetime.fromisoformat(text)
    except (OSError, ValueError):
        return None
    return since if since.tzinfo else since.replace(tzinfo=UTC)


def record(state_dir: Path, now: datetime) -> datetime:
    """Note that Redis is unreachable; keeps an earlier start already noted. Returns the start.

    Written atomically (0600, in the 0700 state dir), so a reader never sees half a time.
    """
    since = read_since(state_dir)
    if since is not None:
        return since
    with atomic_writer(marker_path(state_dir)) as handle:
        handle.write(f"{now.astimezone(UTC).isoformat(timespec='seconds')}\n".encode())
    return now


def clear(state_dir: Path) -> datetime | None:
    """Redis answers again: remove the marker; returns the start it held, if any."""
    since = read_since(state_dir)
    remove_quietly(marker_path(state_dir))
    return since


def note(state_dir: Path, unreachable: bool, now: datetime) -> None:
    """Keep the marker in step with what a caller just saw; a read-only state dir is no error.

    `status` uses it, so a deployment without `up` (Compose) still gets a start time T.
    """
    with contextlib.suppress(OSError):
        if unreachable:
            record(state_dir, now)
        else:
            clear(state_dir)
