"""The Celery application and its configuration, tuned for long, must-not-be-lost jobs."""

from __future__ import annotations

import os

from celery import Celery

from lifeos_backup.settings import get_settings, redis_url_for_celery


def configure(app: Celery) -> None:
    """Apply settings; kept apart from creation so tests can re-run it after changing env."""
    settings = get_settings()
    url = redis_url_for_celery()
    visibility = {"visibility_timeout": settings.visibility_timeout}
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
        # An unacked message is redelivered after the visibility timeout: it must exceed the hard
        # limit or a job still running would be started twice. Celery reads it in three places.
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
    if settings.task_time_limit >= settings.visibility_timeout:
        from lifeos_backup.errors import ConfigError

        raise ConfigError(
            "LIFEOS_TASK_TIME_LIMIT must be below LIFEOS_VISIBILITY_TIMEOUT",
            f"{settings.task_time_limit}s >= {settings.visibility_timeout}s",
            "otherwise a running job would be delivered to a second worker",
        )
    import beat_schedule

    app.conf.beat_schedule = beat_schedule.build_schedule(settings)


os.umask(0o077)  # every file a worker writes (archives, catalog, state) is private
app = Celery("lifeos_backup", include=["tasks.backup"])
configure(app)
