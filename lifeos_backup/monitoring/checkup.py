"""The hourly health check's work: evaluate, heal what can be healed, tell people what changed.

Self-healing: when the newest good backup of a kind is overdue (Beat was down, a run failed), one
catch-up backup chain is requested per overdue *episode*. The episode is remembered in a Redis
hash (`lifeos:catchup`, kind -> when and which tasks) and forgotten once the kind is no longer
overdue, so a catch-up that fails is not retried every hour (the alert says it); the next episode
gets its own catch-up. The chain ends with another health check, so the "resolved" message
follows the catch-up at once instead of up to an hour later.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import redis

from lifeos_backup.core.settings import Settings
from lifeos_backup.monitoring.alerts import Sender, alert_urls, apprise_send, reconcile
from lifeos_backup.monitoring.health import BACKUP_OVERDUE, Condition, evaluate_health, overall
from lifeos_backup.storage.catalog import Catalog
from lifeos_backup.storage.catalog.store import RUNNING, utcnow

log = logging.getLogger(__name__)

CATCHUP_KEY = "lifeos:catchup"
HEALTH_TASK = "lifeos.health.check"
DRILL_TASK = "lifeos.drill.run"

Enqueue = Callable[[str, str], dict[str, str]]  # (kind, reason) -> task ids


def request_catch_up(app: Any, kind: str, reason: str) -> dict[str, str]:
    """The kind's usual chain (client.backup_chain), then a health check to report the result."""
    from celery import signature

    from lifeos_backup.app.client import backup_chain

    steps, ref = backup_chain(app, kind, reason, initiator="health-check")
    (steps | signature(HEALTH_TASK, app=app, immutable=True)).apply_async()
    return {"create": ref.create_task_id, "verify": ref.verify_task_id}


def _backup_running(settings: Settings, catalog: Catalog, kind: str, now: datetime) -> bool:
    """A backup of the kind is being written right now (it is the catch-up; do not add one)."""
    recent = now - timedelta(seconds=settings.task_time_limit)
    return any(r.created_at > recent for r in catalog.list(kind=kind, statuses=(RUNNING,)))


def self_heal(
    settings: Settings,
    catalog: Catalog,
    client: redis.Redis,
    conditions: list[Condition],
    enqueue: Enqueue,
    now: datetime,
) -> dict[str, dict[str, Any]]:
    """Request one catch-up per overdue kind and episode; returns the catch-ups requested now."""
    overdue = {c.kind: c for c in conditions if c.name == BACKUP_OVERDUE and c.kind}
    for raw in client.hkeys(CATCHUP_KEY):
        kind = raw.decode() if isinstance(raw, bytes) else str(raw)
        if kind not in overdue:  # the episode is over
            client.hdel(CATCHUP_KEY, kind)
    requested: dict[str, dict[str, Any]] = {}
    for kind, condition in sorted(overdue.items()):
        if client.hexists(CATCHUP_KEY, kind):
            continue
        if _backup_running(settings, catalog, kind, now):
            log.info("%s is overdue but a backup of it is running; no catch-up", kind)
            continue
        reason = f"catch-up: {condition.detail}"[:500]
        try:
            tasks = enqueue(kind, reason)
        except Exception as exc:  # e.g. broker down: try again at the next check
            log.error("could not request a catch-up %s backup: %s", kind, exc)
            continue
        entry = {"requested_at": now.isoformat(), "tasks": tasks, "reason": reason}
        client.hset(CATCHUP_KEY, kind, json.dumps(entry, sort_keys=True))
        log.warning("requested a catch-up %s backup (%s)", kind, condition.detail)
        requested[kind] = entry
    return requested


def run_health_check(
    settings: Settings,
    catalog: Catalog,
    client: redis.Redis,
    enqueue: Enqueue,
    *,
    now: datetime | None = None,
    send: Sender | None = None,
) -> dict[str, Any]:
    """Evaluate, heal, alert; returns a summary (the task's result, shown in Flower)."""
    now = now or utcnow()
    conditions = evaluate_health(settings, catalog, now)
    catch_up = self_heal(settings, catalog, client, conditions, enqueue, now)
    notices = reconcile(client, conditions, now, alert_urls(settings), send or apprise_send)
    return {
        "status": overall(conditions),
        "conditions": [c.as_dict() for c in conditions],
        "catch_up": catch_up,
        "alerts": [{"event": n.event, "key": n.key, "delivered": n.delivered} for n in notices],
    }
