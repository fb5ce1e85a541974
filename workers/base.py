"""The base of every lifeos task: retries, the delivery guard, task-run records and progress.

Tasks stay thin: they wire arguments, locks and chaining; the work is in lifeos_backup functions.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Iterator
from functools import cached_property
from typing import Any

import redis
from celery import Task
from celery.exceptions import Ignore, Retry

from lifeos_backup.core.errors import LifeosError, PermanentError, RetryableError, TooManyDeliveries
from lifeos_backup.core.progress import Background, Progress, ProgressFn, Throttled
from lifeos_backup.core.settings import Settings, get_settings
from lifeos_backup.jobs.leases import LeaseBusy
from lifeos_backup.jobs.locks import DuplicateDelivery, HeldLock, acquire
from lifeos_backup.storage.catalog import Catalog, open_catalog

log = logging.getLogger(__name__)
DELIVERY_KEY = "lifeos:deliveries:{task_id}:{retries}"


class LockLost(PermanentError):
    """The job's lock expired under it; stop rather than run beside another copy."""


BUSY_RETRY = 30  # seconds before a step finds its backup busy (another verify) and tries again


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
            try:
                result = super().__call__(*args, **kwargs)
            finally:
                self._stop_reporting()
        except Retry as exc:
            self.catalog.task_finished(run_id, "retrying", error=str(exc.exc or exc)[:4000])
            raise
        except Ignore:  # a duplicate delivery of a run that goes on elsewhere in this host
            self.catalog.task_finished(run_id, "duplicate")
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
        """The run's audit record (lifeos_backup.jobs.audit_tasks); a failure here never fails the
        task, whose work is done (or failed for its own reason), but is logged loudly."""
        from lifeos_backup.jobs.audit_tasks import INITIATOR_HEADER, TaskRun, record_task_run
        from lifeos_backup.storage import audit

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

    @cached_property
    def _reporting(self) -> list[Background]:
        return []

    def _stop_reporting(self) -> None:
        """No PROGRESS may land after the task's final state (one task per process at a time)."""
        while self._reporting:
            self._reporting.pop().close()

    def next_task_id(self) -> str | None:
        """The id of the chain's next step (Celery keeps the rest of a chain reversed)."""
        chain = self.request.chain or []
        options = chain[-1].get("options", {}) if chain else {}
        task_id = options.get("task_id") if isinstance(options, dict) else None
        return str(task_id) if task_id else None

    def _duplicate(self, exc: DuplicateDelivery | LeaseBusy, provable: bool) -> Exception:
        """A duplicate delivery: dropped when its twin provably runs on this host (the twin
        stores the result), else retried once the twin's lock would have expired."""
        if provable:
            log.warning("%s %s: duplicate delivery dropped: %s", self.name, self.request.id, exc)
            return Ignore()
        return self.retry(exc=exc, countdown=self.settings.lock_ttl, throw=False)

    @contextlib.contextmanager
    def exclusive(self, name: str) -> Iterator[HeldLock]:
        """Hold the Redis lock `name` for the block (owner: this task).

        A lock held by a provably dead process of this host is taken over at once; one held by
        this very task elsewhere makes this delivery a duplicate (`_duplicate`).
        """
        try:
            held = acquire(self.redis, name, self.settings.lock_ttl, self.request.id)
        except DuplicateDelivery as exc:
            raise self._duplicate(exc, exc.provable) from exc
        try:
            yield held
        finally:
            held.release()

    @contextlib.contextmanager
    def busy_means_retry(self) -> Iterator[None]:
        """A backup whose lease another live process holds: try again later (or drop a
        duplicate of this very task)."""
        try:
            yield
        except LeaseBusy as exc:
            mine = exc.holder.get("owner") == self.request.id
            if mine and exc.holder.get("host") == socket.gethostname():
                raise self._duplicate(exc, provable=True) from exc
            raise self.retry(exc=exc, countdown=BUSY_RETRY, throw=False) from exc

    def reporter(self, held: HeldLock | None = None) -> ProgressFn:
        """Progress sink publishing a PROGRESS state (throttled); stops if the lock was lost.

        Progress is best effort: while Redis does not answer, the job goes on unreported.
        """

        task_id = self.request.id

        def publish(meta: dict[str, object]) -> None:
            try:
                self.update_state(task_id=task_id, state="PROGRESS", meta=meta)
            except Exception as exc:  # Redis down: the job goes on unreported
                log.warning("progress of %s not published: %s", task_id, exc)

        background = Background(publish)
        self._reporting.append(background)
        throttled = Throttled(background)

        def report(progress: Progress) -> None:
            if held is not None and held.lost.is_set():
                raise LockLost(f"{self.name} lost its lock", hint="check Redis availability")
            throttled(progress)

        return report
