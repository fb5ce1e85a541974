"""Alerts through apprise: one message when a condition starts, one when it clears, none between.

People stop reading a channel that repeats itself every hour, so the state of every condition
lives in a Redis hash (`lifeos:alerts`, condition key -> JSON) that survives worker restarts:

- a condition not in the hash: send "started" to every URL, store it with the URLs told;
- a condition in the hash: nothing is sent, except "started" again to a URL that failed before;
- a stored condition that no longer holds: send "resolved" to the URLs that were told, then drop
  it (a URL that fails to take "resolved" keeps the entry and is retried on the next check).

A notifier that fails (bad URL, service down) is logged and never breaks the health check. URLs
are secrets (webhook tokens) and are never logged or stored; only `url_id` (scheme + hash) is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis

from lifeos_backup.core.settings import Settings
from lifeos_backup.monitoring.health import CRITICAL, Condition

log = logging.getLogger(__name__)

ALERTS_KEY = "lifeos:alerts"
STARTED, RESOLVED = "started", "resolved"
TITLE_PREFIX = "[lifeos-backup]"


@dataclass
class Notice:
    """One message and the URLs it went to (by id: URLs are secrets)."""

    event: str  # started / resolved
    key: str
    title: str
    body: str
    severity: str
    delivered: list[str]
    failed: list[str]


Sender = Callable[[str, str, str, str], bool]  # (url, title, body, notify type) -> delivered


def alert_urls(settings: Settings) -> list[str]:
    raw = settings.alert_urls.get_secret_value() if settings.alert_urls else ""
    return [url.strip() for url in raw.split(",") if url.strip()]


def url_id(url: str) -> str:
    """A stable, non-secret name for a URL: its scheme and a short hash."""
    scheme = url.partition("://")[0] or "?"
    return f"{scheme}:{hashlib.sha256(url.encode()).hexdigest()[:10]}"


def apprise_send(url: str, title: str, body: str, notify_type: str) -> bool:
    """Send through one apprise URL; False (logged) on any failure, never an exception."""
    try:
        import apprise

        sink = apprise.Apprise()
        if not sink.add(url):
            log.error("alert URL %s is not a valid apprise URL", url_id(url))
            return False
        delivered = bool(sink.notify(title=title, body=body, notify_type=notify_type))
    except Exception as exc:  # a notifier must never break the health check
        log.error("alert via %s failed: %s: %s", url_id(url), type(exc).__name__, exc)
        return False
    if not delivered:
        log.error("alert via %s was not delivered (see apprise's log above)", url_id(url))
    return delivered


def _format_started(condition: Condition, since: str) -> tuple[str, str]:
    title = f"{TITLE_PREFIX} {condition.severity.upper()}: {condition.summary}"
    lines = [condition.summary]
    if condition.detail:
        lines.append(condition.detail)
    if condition.hint:
        lines.append(f"hint: {condition.hint}")
    lines.append(f"condition {condition.key} since {since} (host {socket.gethostname()})")
    return title, "\n".join(lines)


def _format_resolved(key: str, state: dict[str, Any], now: datetime) -> tuple[str, str]:
    summary = state.get("summary", key)
    title = f"{TITLE_PREFIX} RESOLVED: {summary}"
    body = (
        f"{summary}: cleared at {now.isoformat()} (since {state.get('since', '?')}).\n"
        f"was: {state.get('detail', '')}\ncondition {key} (host {socket.gethostname()})"
    )
    return title, body


def _load(client: redis.Redis) -> dict[str, dict[str, Any]]:
    stored: dict[str, dict[str, Any]] = {}
    for raw_key, raw_value in client.hgetall(ALERTS_KEY).items():
        key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
        try:
            stored[key] = dict(json.loads(raw_value))
        except ValueError:
            stored[key] = {"summary": key, "notified": True}
    return stored


def active_alerts(client: redis.Redis) -> dict[str, dict[str, Any]]:
    """The alert state as stored: condition key -> since, severity, summary, notified."""
    return _load(client)


def _send_all(
    urls: list[str], ids: list[str], title: str, body: str, notify_type: str, send: Sender
) -> tuple[list[str], list[str]]:
    delivered: list[str] = []
    failed: list[str] = []
    for url, ident in zip(urls, ids, strict=True):
        (delivered if send(url, title, body, notify_type) else failed).append(ident)
    return delivered, failed


def reconcile(
    client: redis.Redis,
    conditions: list[Condition],
    now: datetime,
    urls: list[str],
    send: Sender = apprise_send,
) -> list[Notice]:
    """Compare the conditions with the stored state; send what changed; store the new state.

    Delivery is tracked per URL (`told`): a URL that failed gets "started" again on the next
    check, one that got it never does; "resolved" goes to exactly the URLs that were told.
    """
    from apprise import NotifyType

    ids = [url_id(url) for url in urls]
    by_id = dict(zip(ids, urls, strict=True))
    stored = _load(client)
    current = {c.key: c for c in conditions}
    notices: list[Notice] = []
    for key, condition in current.items():
        state = stored.get(key) or {"since": now.isoformat(), "told": []}
        state.update(
            severity=condition.severity,
            summary=condition.summary,
            detail=condition.detail,
            kind=condition.kind,
            cleared=False,
        )
        told = [i for i in state.get("told", []) if i in by_id]
        untold = [i for i in ids if i not in told]
        if untold:
            title, body = _format_started(condition, state["since"])
            kind = NotifyType.FAILURE if condition.severity == CRITICAL else NotifyType.WARNING
            urls_now = [by_id[i] for i in untold]
            delivered, failed = _send_all(urls_now, untold, title, body, kind, send)
            told += delivered
            notices.append(Notice(STARTED, key, title, body, condition.severity, delivered, failed))
        state["told"] = told
        client.hset(ALERTS_KEY, key, json.dumps(state, sort_keys=True))
    for key, state in stored.items():
        if key in current:
            continue
        told = [i for i in state.get("told", []) if i in by_id]
        if told:
            title, body = _format_resolved(key, state, now)
            urls_now = [by_id[i] for i in told]
            delivered, failed = _send_all(urls_now, told, title, body, NotifyType.SUCCESS, send)
            notices.append(
                Notice(
                    RESOLVED, key, title, body, str(state.get("severity", "")), delivered, failed
                )
            )
            told = failed  # retried on the next check
        if told:
            state.update(told=told, cleared=True)
            client.hset(ALERTS_KEY, key, json.dumps(state, sort_keys=True))
        else:
            client.hdel(ALERTS_KEY, key)
    for notice in notices:
        log.warning(
            "alert %s %s: %s (delivered to %s%s)",
            notice.event,
            notice.key,
            notice.title,
            ", ".join(notice.delivered) or "none",
            f"; FAILED for {', '.join(notice.failed)}" if notice.failed else "",
        )
    return notices
