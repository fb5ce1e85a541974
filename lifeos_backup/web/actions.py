"""What operators ask of the workers from the dashboard: the CLI's and Beat's own tasks.

A backup is the client's chain (lifeos_backup.app.client.backup_chain: create -> verify ->
upload -> rotate), a verification the chain's verify task, a drill the weekly drill's task, a
sync the daily off-site sync's; each carries the account's name as its initiator (the
`lifeos_initiator` header Beat uses, or the chain's `initiator` argument), so the workers' audit
records name the person, and the request itself is recorded too (`dashboard.request`).
"""

from __future__ import annotations

from typing import Any

from lifeos_backup.core.errors import ConfigError
from lifeos_backup.core.names import LAYOUTS, check_backup_id
from lifeos_backup.jobs.audit_tasks import INITIATOR_HEADER
from lifeos_backup.jobs.routes import VERIFY
from lifeos_backup.monitoring.checkup import DRILL_TASK
from lifeos_backup.storage.catalog import Catalog
from lifeos_backup.web.accounts import Account

SYNC_TASK = "lifeos.offsite.sync"  # tasks/offsite.py
ACTIONS = ("backup", "verify", "drill", "offsite-sync")


def _kind(kind: str) -> str:
    if kind not in LAYOUTS:
        raise ConfigError(f"{kind!r} is not a backup kind", hint=f"one of {', '.join(LAYOUTS)}")
    return kind


def request(app: Any, catalog: Catalog, account: Account, what: str, value: str) -> str:
    """Enqueue `what` (backup KIND, verify ID, drill KIND, offsite-sync) as `account`; returns
    the first task's id."""
    headers = {INITIATOR_HEADER: account.name}
    if what == "backup":
        from lifeos_backup.app.client import backup_chain

        steps, ref = backup_chain(app, _kind(value), "requested in the dashboard", account.name)
        steps.apply_async()
        task_id = ref.create_task_id
    elif what == "verify":
        task_id = app.send_task(VERIFY, args=[check_backup_id(value)], headers=headers).id
    elif what == "drill":
        task_id = app.send_task(DRILL_TASK, kwargs={"kind": _kind(value)}, headers=headers).id
    elif what == "offsite-sync":
        value = "off-site copies"
        task_id = app.send_task(SYNC_TASK, headers=headers).id
    else:
        raise ConfigError(f"{what!r} is no action", hint=f"one of {', '.join(ACTIONS)}")
    catalog.record_action(
        "dashboard.request", value, account.name, {"what": what, "task_id": task_id}
    )
    return str(task_id)
