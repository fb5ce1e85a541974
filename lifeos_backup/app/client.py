"""The tiny client the main app uses: request a backup and, if asked, wait until it is verified.

Importable with only `celery` (and `redis`) installed: tasks are sent by name, and nothing else
of lifeos-backup is imported but the task names and routes (lifeos_backup.jobs.routes). The CLI
and Beat build their chains here too, so there is one pipeline.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import celery.exceptions
import kombu.exceptions
import redis
from celery import Celery, chain, signature
from celery.result import AsyncResult

from lifeos_backup.jobs.routes import (
    CREATE,
    MAINTENANCE,
    ROTATE,
    TASK_ROUTES,
    UPLOAD,
    VERIFY,
)


class BackupFailed(Exception):
    """The requested backup did not end verified; the message says which step failed and why."""


class BackupTimeout(BackupFailed):
    """The wait ran out; the backup may still finish (look it up with `lifeos-backup list`)."""


class BrokerUnavailable(BackupFailed):
    """Redis (the workers' broker) cannot be found or reached: nothing was requested, or the
    request's fate is unknown."""


class NoWorker(BackupFailed):
    """No worker consumes the queue the backup waits in: it would never start."""


# Every way the broker can fail a client: redis-py, kombu, Celery's own wrapping of them, and
# the URL itself (a malformed LIFEOS_REDIS_URL raises ValueError).
_BROKER_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    RuntimeError,
    redis.RedisError,
    kombu.exceptions.KombuError,
    celery.exceptions.CeleryError,
)
EMBEDDED_REDIS_URL_FILE = Path(".state") / "embedded-redis.url"  # settings.EMBEDDED_REDIS_URL_FILE
NO_WORKER_AFTER = 10.0  # seconds a backup may wait queued before the client asks who consumes it
STEPS = ("create", "verify", "upload", "rotate")


@dataclass
class BackupRef:
    """Handles of one requested backup chain; `backup_id` is known once `create` finished.

    The later steps' task ids derive from the create task's id, so the create id alone is
    enough to follow a chain (`follow`, `lifeos-backup follow ID`).
    """

    kind: str
    create_task_id: str
    verify_task_id: str
    rotate_task_id: str
    backup_id: str | None = None
    upload_task_id: str = ""  # off-site copy; a quiet no-op when no bucket is configured

    @classmethod
    def of(cls, kind: str, create_task_id: str) -> BackupRef:
        ids = {step: step_task_id(create_task_id, step) for step in STEPS}
        return cls(kind, ids["create"], ids["verify"], ids["rotate"], None, ids["upload"])


def step_task_id(create_task_id: str, step: str) -> str:
    """The task id of a chain's `step`, derived from its create task's id."""
    if step == "create":
        return create_task_id
    return str(uuid.uuid5(uuid.UUID(create_task_id), step))


def broker_url(redis_url: str | None = None) -> str:
    """The workers' Redis: `redis_url`, else LIFEOS_REDIS_URL, else the embedded Redis that
    `lifeos-backup up` runs for the repository at LIFEOS_BACKUP_ROOT (default ./backups)."""
    url = redis_url or os.environ.get("LIFEOS_REDIS_URL")
    if url:
        return url
    root = Path(os.environ.get("LIFEOS_BACKUP_ROOT") or "backups")
    try:
        url = (root / EMBEDDED_REDIS_URL_FILE).read_text().strip()
    except OSError:
        url = ""
    if not url:
        raise BrokerUnavailable(
            "no Redis to send the backup request to: LIFEOS_REDIS_URL is not set and no "
            f"`lifeos-backup up` runs for the repository {root} (LIFEOS_BACKUP_ROOT)"
        )
    return url


def make_app(redis_url: str | None = None) -> Celery:
    """A Celery app that only sends tasks and reads results, with the workers' serializer.

    It gives up on an unreachable Redis after a few seconds (the caller gets BrokerUnavailable)
    instead of retrying for ever as a worker does.
    """
    url = broker_url(redis_url)
    app = Celery("lifeos-client", broker=url, backend=url, set_as_current=False)
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])
    app.conf.update(task_routes=TASK_ROUTES, task_default_queue=MAINTENANCE)
    app.conf.update(
        broker_connection_timeout=5,
        broker_connection_retry_on_startup=False,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0.5, "interval_step": 1},
        broker_transport_options={"socket_connect_timeout": 5, "socket_timeout": 10},
        # The result backend's subscriber reconnects 20 times, 1 s apart, by default: 19 s
        # before a request learns that Redis is gone. Three tries, about 2 s.
        result_backend_transport_options={
            "retry_policy": {"max_retries": 3, "interval_start": 0, "interval_step": 1}
        },
        redis_socket_connect_timeout=5,
        redis_socket_timeout=10,
        result_backend_always_retry=False,
    )
    return app


def backup_chain(
    app: Celery, kind: str, reason: str = "", initiator: str = "app"
) -> tuple[Any, BackupRef]:
    """create -> verify -> upload -> rotate, with task ids fixed up front so callers can follow
    each step. Waiting callers return at verify: the off-site copy follows on its own."""
    ref = BackupRef.of(kind, str(uuid.uuid4()))
    steps = chain(
        signature(
            CREATE, args=(kind,), kwargs={"reason": reason, "initiator": initiator}, app=app
        ).set(task_id=ref.create_task_id),
        signature(VERIFY, app=app).set(task_id=ref.verify_task_id),
        signature(UPLOAD, app=app).set(task_id=ref.upload_task_id),
        signature(ROTATE, app=app).set(task_id=ref.rotate_task_id),
    )
    return steps, ref


def request_backup(
    kind: str,
    reason: str = "",
    *,
    wait: bool = False,
    timeout: float = 3600,
    app: Celery | None = None,
    initiator: str = "app",
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> BackupRef:
    """Enqueue a backup; with wait=True return only once it is verified.

    Every failure raises BackupFailed (or a subclass): the backup failed, the wait ran out
    (BackupTimeout), Redis cannot be reached (BrokerUnavailable), no worker takes the job
    (NoWorker).
    """
    try:
        app = app or make_app()
        steps, ref = backup_chain(app, kind, reason, initiator)
        steps.apply_async()
    except BackupFailed:
        raise
    except _BROKER_ERRORS as exc:
        raise BrokerUnavailable(f"cannot request the {kind} backup: {_broker_text(exc)}") from exc
    if wait:
        ref.backup_id = wait_verified(app, ref, timeout, on_progress)
    return ref


def failure_text(exc: object) -> str:
    """A failed task's exception as one readable line.

    Celery rebuilds a task's exception from its class name and arguments; when this process has
    not imported that class (the app and the CLI never import lifeos_backup.kinds.postgres.connect,
    say), it makes a stand-in Exception with the same arguments. A LifeosError's arguments are
    (what, detail, hint), which the stand-in would print as a Python tuple; they are put back
    together here the way LifeosError prints them (lifeos_backup.core.errors).
    """
    args: tuple[Any, ...] = getattr(exc, "args", ())
    plain = type(exc).__str__ is BaseException.__str__  # LifeosError has its own __str__
    if plain and len(args) == 3 and all(isinstance(a, str) for a in args):
        what, detail, hint = args[0], args[1], args[2]
        return what + (f": {detail}" if detail else "") + (f" (hint: {hint})" if hint else "")
    return str(exc)


def follow(
    app: Celery,
    create_task_id: str,
    timeout: float = 3600,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> str:
    """Wait for the chain whose create task is `create_task_id`; returns the verified id."""
    ref = BackupRef.of("backup", create_task_id)
    return wait_verified(app, ref, timeout, on_progress)


def _broker_text(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return f"Redis does not answer ({text})"


def _step_result(app: Celery, task_id: str, step: str, on_progress: Any) -> Any | None:
    result = AsyncResult(task_id, app=app)
    state = result.state
    if state == "FAILURE":
        raise BackupFailed(f"backup {step} failed: {failure_text(result.result)}")
    if state == "REVOKED":
        raise BackupFailed(f"backup {step} was revoked")
    if on_progress:
        # Every read of `info` asks the backend again for an unfinished task: read it once, so
        # the state seen and the meta passed on cannot come from two different moments.
        info = result.info if state in ("PROGRESS", "RETRY") else None
        if state == "PROGRESS" and isinstance(info, dict):
            on_progress(info)
        elif state == "RETRY":
            on_progress({"phase": f"{step} retrying after: {info}"[:200]})
        elif state == "STARTED":
            on_progress({"phase": f"{step} started"})
    return result.result if state == "SUCCESS" else None


def consumers(app: Celery, queue: str, timeout: float = 2.0) -> list[str]:
    """Names of the workers that consume `queue` now (Celery's remote control)."""
    return queue_consumers(app, (queue,), timeout)[queue]


def queue_consumers(
    app: Celery, queues: Iterable[str], timeout: float = 2.0
) -> dict[str, list[str]]:
    """For each of `queues`, the names of the workers consuming it now (one remote-control call)."""
    replies = app.control.inspect(timeout=timeout).active_queues() or {}
    return {
        queue: sorted(
            worker for worker, qs in replies.items() if any(q.get("name") == queue for q in qs)
        )
        for queue in queues
    }


class _Notices:
    """Wakes a waiting client as soon as the result backend stores a state of the tasks watched.

    Celery's Redis result backend publishes every state it stores (STARTED, PROGRESS, the result)
    on a channel named like the state's key, so a subscriber learns of a finished step within a
    millisecond instead of at its next poll. Best effort: without that backend or its channel
    the wait is a plain sleep, and the caller looks at the states after every wake-up anyway.
    """

    def __init__(self, app: Celery, task_ids: list[str]) -> None:
        self._pubsub: Any = None
        try:
            backend = app.backend
            client = getattr(backend, "client", None)
            if isinstance(client, redis.Redis):
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(*(backend.get_key_for_task(task_id) for task_id in task_ids))
                self._pubsub = pubsub
        except _BROKER_ERRORS:
            self._pubsub = None

    def wait(self, seconds: float) -> None:
        """Sleep up to `seconds`, less when a watched task's state changes meanwhile."""
        if self._pubsub is None:
            time.sleep(seconds)
            return
        try:
            if self._pubsub.get_message(timeout=seconds) is not None:
                while self._pubsub.get_message(timeout=0) is not None:  # one look for a burst
                    pass
        except _BROKER_ERRORS:
            self.close()
            time.sleep(seconds)

    def close(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(*_BROKER_ERRORS):
                pubsub.close()


def wait_verified(
    app: Celery,
    ref: BackupRef,
    timeout: float = 3600,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    poll: float = 0.25,
) -> str:
    """Block until the chain's verify step succeeded; returns the backup id.

    The states are looked at whenever the result backend announces a change of the create or
    verify step (`_Notices`), and at least every `poll` seconds. Never silent: while the backup
    is still queued, the client asks every so often (first after NO_WORKER_AFTER seconds) which
    workers consume its queue; none means NoWorker at once (it would never start).
    """
    try:
        return _wait(app, ref, timeout, on_progress, poll)
    except BackupFailed:
        raise
    except _BROKER_ERRORS as exc:
        raise BrokerUnavailable(
            f"lost track of backup {ref.backup_id or ref.create_task_id}: {_broker_text(exc)}; "
            "it may still finish (see `lifeos-backup list`)"
        ) from exc


def _wait(
    app: Celery,
    ref: BackupRef,
    timeout: float,
    on_progress: Callable[[dict[str, Any]], None] | None,
    poll: float,
) -> str:
    started = time.monotonic()
    deadline = started + timeout
    backup_id: str | None = None
    next_ask = started + NO_WORKER_AFTER
    if on_progress:
        on_progress({"phase": "queued"})
    notices = _Notices(app, [ref.create_task_id, ref.verify_task_id])  # before the first look
    try:
        while time.monotonic() < deadline:
            if backup_id is None:
                backup_id = _step_result(app, ref.create_task_id, "create", on_progress)
                ref.backup_id = backup_id
                pending = AsyncResult(ref.create_task_id, app=app).state == "PENDING"
                if pending and time.monotonic() > next_ask:
                    next_ask = time.monotonic() + 3 * NO_WORKER_AFTER
                    queue = TASK_ROUTES[CREATE]["queue"]
                    if not consumers(app, queue):
                        raise NoWorker(
                            f"no worker is consuming queue {queue}: the backup would never "
                            "start (start `lifeos-backup up`, or a worker with `-Q dumps`; the "
                            "request stays queued until one does)"
                        )
                    if on_progress:
                        on_progress({"phase": "queued behind other work"})
            verified = backup_id is not None and _step_result(
                app, ref.verify_task_id, "verify", on_progress
            )
            if verified:
                return str(backup_id)
            notices.wait(min(poll, max(0.0, deadline - time.monotonic())))
    finally:
        notices.close()
    raise BackupTimeout(
        f"backup {backup_id or '(not started)'} was not verified within {timeout:.0f}s",
    )
