"""Logging in: the password check, the rate limit, and the audit record of every attempt.

The limit counts failed attempts for one account name from one client address within
LIFEOS_DASHBOARD_LOGIN_WINDOW_MINUTES, read from the audit trail itself (every attempt is
recorded there anyway): no second store, it holds across restarts and across dashboard
processes sharing a catalog. Past the limit an attempt is refused without looking at the
password, so guessing goes no further even with the right one; it is recorded as `refused`.
"""

from __future__ import annotations

import json
from datetime import timedelta

from sqlalchemy import select

from lifeos_backup.core.errors import PermanentError
from lifeos_backup.core.settings import Settings
from lifeos_backup.storage.audit import FAILED
from lifeos_backup.storage.catalog import Catalog
from lifeos_backup.storage.catalog.models import Action
from lifeos_backup.storage.catalog.store import utcnow
from lifeos_backup.web import accounts
from lifeos_backup.web.accounts import Account

LOGIN = "dashboard.login"
REFUSED = "refused"


class LoginFailed(PermanentError):
    """Wrong name or password (which of them is not said)."""


class TooManyAttempts(PermanentError):
    """The name and address reached the limit of failed attempts; wait for the window."""


def failures(catalog: Catalog, name: str, address: str, minutes: int) -> int:
    """Failed attempts for `name` from `address` within the last `minutes`."""
    since = utcnow() - timedelta(minutes=minutes)
    query = select(Action.detail).where(
        Action.action == LOGIN, Action.status == FAILED, Action.target == name, Action.at >= since
    )
    with catalog.session() as s:
        details = list(s.scalars(query))
    count = 0
    for text in details:
        try:
            detail = json.loads(text or "{}")
        except ValueError:
            continue
        if isinstance(detail, dict) and detail.get("address") == address:
            count += 1
    return count


def log_in(settings: Settings, catalog: Catalog, name: str, password: str, address: str) -> Account:
    """The account, once name and password match and the limit is not reached; recorded."""
    name = name.strip()[:64]
    detail: dict[str, object] = {"address": address}
    window = settings.dashboard_login_window_minutes
    if failures(catalog, name, address, window) >= settings.dashboard_login_attempts:
        catalog.record_action("dashboard.login", name, name or "-", detail, status=REFUSED)
        raise TooManyAttempts(
            "too many failed logins",
            f"for this account from {address}",
            f"try again in {window} minutes",
        )
    account = accounts.authenticate(catalog, name, password)
    if account is None:
        catalog.record_action("dashboard.login", name, name or "-", detail, status=FAILED)
        raise LoginFailed("wrong account name or password")
    catalog.record_action("dashboard.login", name, account.name, {**detail, "role": account.role})
    return account
