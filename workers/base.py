"""The base of every lifeos task: retries, the delivery guard, task-run records and progress.

Tasks stay thin: they wire arguments, locks and chaining; the work is in lifeos_backup functions.
"""

from __future__ import annotations

import logging
import socket
import time
from functools import cached_property
from typing import Any

import redis
from celery import Task
from celery.exceptions import Retry

from lifeos_backup.catalog import Catalog, open_catalog
from lifeos_backup.errors import LifeosError, PermanentError, RetryableError, TooManyDeliveries
from lifeos_backup.locks import HeldLock
from lifeos_backup.progress import Progress, ProgressFn, Throttled
from lifeos_backup.settings import Settings, get_settings

log = logging.getLogger(__name__)
DELIVERY_KEY = "lifeos:deliveries:{task_id}:{retries}"


class LockLost(PermanentError):
    """The job's lock expired under it; stop rather than run beside another copy."""


class LifeosTask(Task):
    """Retries RetryableError with exponential backoff; records every run in the catalog."""

    abstract = True
    autoretry_for = (RetryableError,)
    retry_backoff = True
    retry_jitter = True

    @property
    def settings(self) -> Settings:
        return get_settings()

    @property
    def catalog(self) -> Catalog:
        return open_catalog(self.settings.effective_catalog_url)

    @cached_property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.settings.require_redis_url())

    def _count_delivery(self) -> None:
        """Fail a message that keeps killing its worker instead of redelivering it forever."""
        key = DELIVERY_KEY.format(task_id=self.request.id, retries=self.request.retries)
        count = int(self.redis.incr(key))
        self.redis.expire(
            key, self.settings.visibility_timeout * (self.settings.max_deliveries + 2)
        )
        if count > self.settings.max_deliveries:
            raise TooManyDeliveries(
                f"{self.name} was delivered {count} times and its worker died each time",
                "giving up instead of redelivering it again",
                "look at the worker's log and memory limits, then request the job again",
            )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.request.called_directly:
            return self.run(*args, **kwargs)
        self.max_retries = self.settings.retry_max
        self.retry_backoff_max = self.settings.retry_backoff_max
        run_id = self.catalog.task_started(
            self.request.id,
            self.name,
            self.request.retries + 1,
            self.request.hostname or socket.gethostname(),
        )
        started = time.monotonic()
        try:
            self._count_delivery()
            result = super().__call__(*args, **kwargs)
        except Retry as exc:
            self.catalog.task_finished(run_id, "retrying", error=str(exc.exc or exc)[:4000])
            raise
        except LifeosError as exc:
            log.error("%s failed: %s", self.name, exc)
            self.catalog.task_finished(run_id, "failed", error=str(exc)[:4000])
            self._audit(args, kwargs, started, error=str(exc))
            raise
        except BaseException as exc:
            error = f"{type(exc).__name__}: {exc}"
            self.catalog.task_finished(run_id, "failed", error=error[:4000])
            self._audit(args, kwargs, started, error=error)
            raise
        self.catalog.task_finished(
            run_id, "succeeded", backup_id=result if isinstance(result, str) else None
        )
        self._audit(args, kwargs, started, result=result)
        return result

    def _audit(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        started: float,
        result: Any = None,
        error: str | None = None,
    ) -> None:
        """The run's audit record (lifeos_backup.audit_tasks); a failure here never fails the
        task, whose work is done (or failed for its own reason), but is logged loudly."""
        from lifeos_backup import audit
        from lifeos_backup.audit_tasks import INITIATOR_HEADER, TaskRun, record_task_run

        run = TaskRun(
            name=self.name,
            task_id=str(self.request.id),
            worker=self.request.hostname or socket.gethostname(),
            args=tuple(args),
            kwargs=dict(kwargs),
            status=audit.FAILED if error is not None else audit.SUCCEEDED,
            seconds=time.monotonic() - started,
            result=result,
            error=error,
            header_initiator=getattr(self.request, INITIATOR_HEADER, None),
        )
        try:
            record_task_run(self.settings, self.catalog, run)
        except Exception:
            log.exception("could not write the audit record of %s %s", self.name, run.task_id)

    def reporter(self, held: HeldLock | None = None) -> ProgressFn:
        """Progress sink publishing a PROGRESS state (throttled); stops if the lock was lost."""

        def publish(report: Progress) -> None:
            self.update_state(state="PROGRESS", meta=report.as_meta())

        throttled = Throttled(publish)

        def report(progress: Progress) -> None:
            if held is not None and held.lost.is_set():
                raise LockLost(f"{self.name} lost its lock", hint="check Redis availability")
            throttled(progress)

        return report
