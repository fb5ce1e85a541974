"""Queues across hosts: which queue each task waits in, and where a chain's later steps run.

Tasks are routed by name (lifeos_backup.jobs.routes.TASK_ROUTES) to `dumps`, `uploads`, `drills` or
`maintenance`, so each kind of work scales with its own workers. A chain's later steps (verify,
upload, rotate) read the archive that `create` wrote on its host's local disk. Unless every worker
sees the same backup root (LIFEOS_SHARED_REPOSITORY=true), `create` pins them to its host's queue
(`host.<hostname>`, or LIFEOS_WORKER_HOST_QUEUE), which every worker also consumes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, MutableMapping
from typing import Any

from kombu import Exchange, Queue

from lifeos_backup.jobs.routes import QUEUES, ROTATE, UPLOAD, VERIFY

# The steps that read or delete the files `create` wrote; other chained tasks (the health check a
# catch-up backup ends with) keep their own queues.
LOCAL_FILE_STEPS = frozenset({VERIFY, UPLOAD, ROTATE})
_QUEUE_NAME = re.compile(r"[A-Za-z0-9_.@:-]+")


def declare(name: str) -> Queue:
    """A queue as Celery declares a missing one: direct exchange and routing key of its name."""
    return Queue(name, Exchange(name), routing_key=name)


def task_queues() -> list[Queue]:
    """The role queues; a worker started without -Q consumes all of them (and its host queue)."""
    return [declare(name) for name in QUEUES]


def valid_queue_name(name: str) -> str:
    """A host queue name must survive Redis keys and the command line unchanged."""
    if not _QUEUE_NAME.fullmatch(name):
        from lifeos_backup.core.errors import ConfigError

        raise ConfigError(
            f"queue name {name!r} is not usable",
            "only letters, digits and . _ - @ : are allowed",
            "set LIFEOS_WORKER_HOST_QUEUE to e.g. host.backup-1",
        )
    return name


def pin_to_host(chain: Iterable[MutableMapping[str, Any]] | None, queue: str) -> list[str]:
    """Send the remaining local-file steps of a chain to `queue`; returns the tasks pinned.

    `chain` is the running task's `request.chain`: the signatures still to run (as dicts), which
    Celery sends one after the other with their own `options`; an explicit queue there wins over
    the routing table.
    """
    pinned = []
    for step in chain or ():
        if step.get("task") in LOCAL_FILE_STEPS:
            options = step.get("options")
            if not isinstance(options, MutableMapping):
                options = step["options"] = {}
            options["queue"] = queue
            pinned.append(str(step["task"]))
    return pinned
