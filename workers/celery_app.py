"""The Celery application and its configuration, tuned for long, must-not-be-lost jobs."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import redis
from celery import Celery, states
from celery.result import AsyncResult
from celery.signals import celeryd_after_setup, task_received, worker_process_init, worker_ready

from lifeos_backup.core.procs import set_parent_death_signal
from lifeos_backup.core.settings import Settings, get_settings, redis_url_for_celery
from lifeos_backup.jobs.queues import task_queues, valid_queue_name
from lifeos_backup.jobs.redelivery import (
    HEARTBEAT,
    Heartbeat,
    pending_task_ids,
    restore_predecessor,
)
from lifeos_backup.jobs.routes import MAINTENANCE, REDBEAT_PREFIX, TASK_ROUTES

log = logging.getLogger(__name__)
READY_STATES = states.READY_STATES


def configure(app: Celery) -> None:
    """Apply settings; kept apart from creation so tests can re-run it after changing env."""
    settings = get_settings()
    url = redis_url_for_celery()
    # Messages a worker holds are kept fresh by its heartbeat (lifeos_backup/jobs/redelivery.py), so
    # the timeout covers a gap in heartbeats, not a job's length; the restore sweep runs every 10 s.
    visibility = {
        "visibility_timeout": settings.visibility_timeout,
        "unacked_restore_interval": 10,
        "unacked_restore_throttle": 1,
    }
    app.conf.update(
        broker_url=url,
        result_backend=url,
        # JSON only: task arguments are ids and names, and pickle would run code from the broker.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        timezone=settings.schedule_timezone,
        enable_utc=True,
        # Acknowledge after the job ran, and requeue if its process died, so a crash never
        # silently drops a backup; our locks and leftover clean-up make a rerun safe.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One job at a time per process: a dump must not sit prefetched behind another dump.
        worker_prefetch_multiplier=1,
        # Soft limit first, so the task can remove its temporary files; then the hard kill.
        task_soft_time_limit=settings.task_soft_time_limit,
        task_time_limit=settings.task_time_limit,
        # An unacked message whose holder stopped its heartbeat is redelivered after the
        # visibility timeout (docs/operations.md). Celery reads it in three places.
        broker_transport_options=visibility,
        result_backend_transport_options=visibility,
        visibility_timeout=settings.visibility_timeout,
        # Events and the "sent"/"started" states feed Flower's task history.
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_track_started=True,
        result_extended=True,
        result_expires=settings.result_expires,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    import beat_schedule

    app.conf.beat_schedule = beat_schedule.build_schedule(settings)
    configure_operations(app, settings, url)
    ride_out_outages(app)


# --- Riding out a Redis outage ------------------------------------------------------------------
# Workers, Beat and Flower must outlive a Redis restart or outage of any length (docs/operations.md
# "Supervision"). What each setting changes, from Celery 5.7 / kombu 5.7 / RedBeat 2.4 source:
# - broker_connection_max_retries: the consumer reconnects with kombu's ensure_connection (waits
#   2, 4, ... 30 s); its default of 100 tries gives up after about 50 minutes and the worker
#   exits. None: for ever.
# - result_backend_always_retry: the Redis result backend retries a write only 20 times, 1 s
#   apart (its retry_policy); after that a finished task's state would be lost with an
#   exception. With it, the write is retried (max_retries: inf by default) with sleeps growing
#   from 100 ms, bounded at 5 s, until Redis answers.
# - Socket timeouts, keepalive and health checks: without a socket timeout a command on a
#   connection whose peer vanished (host down, NAT dropped) waits for ever; redis-py's health
#   check PINGs a connection idle this long before using it, so a dead one is replaced at once.
#   The same for the broker (kombu transport options), the result backend (redis_*) and
#   RedBeat's own client (redbeat_redis_options).
# - RedBeat (Beat's scheduler) extends its lock at every tick through a redis-py Lock bound to
#   the plain client, and a ConnectionError there ends Beat (exit 1). Its one option for this,
#   redbeat_redis_options["retry_period"], wraps only direct client calls, not the lock nor the
#   schedule's pipeline, so no option keeps Beat alive through an outage: `lifeos-backup up`
#   (and `restart: unless-stopped` in Compose) restarts it, and it waits for the lock.
REDIS_SOCKET_TIMEOUT = 30.0  # seconds a single command may take; BRPOP waits 1 s server-side
REDIS_CONNECT_TIMEOUT = 5.0
REDIS_HEALTH_CHECK_INTERVAL = 25  # seconds idle before redis-py PINGs a pooled connection
REDIS_SOCKETS: dict[str, Any] = {
    "socket_timeout": REDIS_SOCKET_TIMEOUT,
    "socket_connect_timeout": REDIS_CONNECT_TIMEOUT,
    "socket_keepalive": True,
    "health_check_interval": REDIS_HEALTH_CHECK_INTERVAL,
}


PUBLISH_RETRY = {"max_retries": 120, "interval_start": 0, "interval_step": 1, "interval_max": 5}


def ride_out_outages(app: Celery) -> None:
    """Retry for ever instead of exiting when Redis goes away; notice dead connections."""
    conf = app.conf
    conf.update(
        broker_connection_retry=True,
        broker_connection_max_retries=None,
        result_backend_always_retry=True,
        result_backend_base_sleep_between_retries_ms=100,
        result_backend_max_sleep_between_retries_ms=5000,
        redis_socket_timeout=REDIS_SOCKET_TIMEOUT,
        redis_socket_connect_timeout=REDIS_CONNECT_TIMEOUT,
        redis_socket_keepalive=True,
        redis_retry_on_timeout=True,
        redis_backend_health_check_interval=REDIS_HEALTH_CHECK_INTERVAL,
        # A chain's next step is published by the worker that ran the step before: through an
        # outage it keeps trying (about ten minutes), instead of losing the rest of the chain.
        task_publish_retry=True,
        task_publish_retry_policy=PUBLISH_RETRY,
        # Merged into the options set above (visibility timeout, RedBeat's password).
        broker_transport_options={**conf.broker_transport_options, **REDIS_SOCKETS},
        redbeat_redis_options={**conf.redbeat_redis_options, **REDIS_SOCKETS},
    )


def configure_operations(app: Celery, settings: Settings, url: str) -> None:
    """Queues per role, and Beat through RedBeat (docs/operations.md)."""
    app.conf.update(
        # Routed by task name: dumps, uploads, drills, maintenance each scale with own workers.
        task_routes=TASK_ROUTES,
        task_queues=task_queues(),
        task_default_queue=MAINTENANCE,
        # RedBeat keeps the schedule in Redis and holds a Redis lock while it runs, so a second
        # Beat (started by mistake, or as a standby) enqueues nothing until the first one's lock
        # expires (5 x the loop interval after it died).
        beat_scheduler="redbeat.RedBeatScheduler",
        beat_max_loop_interval=settings.beat_max_interval,
        redbeat_key_prefix=REDBEAT_PREFIX,
        redbeat_lock_timeout=5 * settings.beat_max_interval,
        **redbeat_connection(url),
    )


def redbeat_connection(url: str) -> dict[str, object]:
    """RedBeat's Redis, with the password moved out of the URL into the options.

    Workers answer `inspect conf` (Flower shows it) with their configuration, censored by key
    name: `redbeat_redis_url` is not censored, a `password` key inside options is.
    """
    parts = urlsplit(url)
    if parts.password is None:
        return {"redbeat_redis_url": url, "redbeat_redis_options": {}}
    host = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}@" if parts.username else ""
    bare = urlunsplit(parts._replace(netloc=f"{user}{host}"))
    password = unquote(parts.password)  # as redis-py reads it from a URL
    return {"redbeat_redis_url": bare, "redbeat_redis_options": {"password": password}}


@celeryd_after_setup.connect
def consume_host_queue(sender: str, instance: Any, **_kwargs: Any) -> None:
    """Every worker, whatever its -Q, also takes the later steps of chains created on its host
    (lifeos_backup.jobs.queues): they read the archive from this host's disk."""
    queue = valid_queue_name(get_settings().host_queue)
    instance.app.amqp.queues.select_add(queue)


_HEARTBEATS: dict[str, Heartbeat] = {}


def _heartbeat(consumer: Any) -> Heartbeat:
    node = str(consumer.hostname)
    if node not in _HEARTBEATS:
        settings = get_settings()
        client = redis.Redis.from_url(
            settings.require_redis_url(), socket_timeout=10, socket_connect_timeout=10
        )
        interval = min(HEARTBEAT, settings.visibility_timeout / 10)
        _HEARTBEATS[node] = Heartbeat(client, node, interval)
    return _HEARTBEATS[node]


@task_received.connect
def hold_message(sender: Any, request: Any, **_kwargs: Any) -> None:
    """Keep every message this worker receives fresh until it is acknowledged."""
    tag = getattr(request.message, "delivery_tag", None)
    if tag:
        _heartbeat(sender).hold(str(tag))


@worker_ready.connect
def recover_on_start(sender: Any, **_kwargs: Any) -> None:
    """A worker that starts again puts back its predecessor's messages, then sweeps its host's
    backups whose task is gone (lifeos_backup.jobs.leftovers) and dashboard restores whose
    worker died (lifeos_backup.web.restores)."""
    beat = _heartbeat(sender)
    beat.start()
    try:
        restore_predecessor(sender.app, beat.client, beat.node, beat.held())
    except redis.RedisError as exc:
        log.warning("cannot put back a previous run's messages: %s", exc)
    threading.Thread(target=sweep_now, args=(beat.client,), name="sweeper", daemon=True).start()


def sweep_now(client: redis.Redis) -> list[Any]:
    """The sweeper with the broker's view of which tasks are still pending."""
    from lifeos_backup.jobs.leftovers import sweep
    from lifeos_backup.storage.catalog import open_catalog

    settings = get_settings()
    pending: Callable[[str], bool] | None
    try:
        pending = pending_task_ids(client).__contains__
    except redis.RedisError as exc:
        log.warning("sweeping without the broker's view (%s): created backups are left", exc)
        pending = None
    def ended(task_id: str) -> bool:
        return AsyncResult(task_id, app=app).state in READY_STATES

    try:
        catalog = open_catalog(settings.effective_catalog_url)
        swept = sweep(settings, catalog, pending, ended=ended if pending else None)
    except Exception:
        log.exception("the sweeper failed")
        return []
    try:  # dashboard restores whose worker died: `failed`, not `running` for good
        from lifeos_backup.web.restores import fail_abandoned

        for request_id in fail_abandoned(settings, catalog):
            log.warning("restore request %d was abandoned by its worker: marked failed", request_id)
    except Exception:
        log.exception("the sweeper of abandoned restore requests failed")
    return swept


@worker_process_init.connect
def die_with_the_worker(**_kwargs: Any) -> None:
    """A pool process dies with its worker: a job whose worker was killed stops at once, and
    its lease and locks are freed for the redelivery."""
    set_parent_death_signal()


os.umask(0o077)  # every file a worker writes (archives, catalog, state) is private
app = Celery(
    "lifeos_backup",
    include=[
        "tasks.backup", "tasks.rollback", "tasks.offsite", "tasks.pitr", "tasks.monitor",
        "tasks.audit", "tasks.restore",
    ],
)  # fmt: skip
configure(app)
