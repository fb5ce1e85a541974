"""Sessions in signed cookies: who is logged in, since when, and the form token (CSRF).

The cookie holds the account's id and tag, a random CSRF token and the time it was signed
(itsdangerous, HMAC-SHA1 over a key only the server has); it is HttpOnly (no script reads it),
SameSite=Strict (no other site's page sends it) and Secure whenever the dashboard is reached
over TLS. It expires after LIFEOS_DASHBOARD_SESSION_MINUTES, checked from the signed time, not
the browser's word. A visitor who is not logged in gets a cookie with a token only, so the login
form is protected too; logging in issues a new token (no fixation).

The key is LIFEOS_DASHBOARD_SECRET, or a random one generated once into the state dir (0600),
so sessions survive a restart and nobody has to invent a key.
"""

from __future__ import annotations

import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from lifeos_backup.core.errors import ConfigError
from lifeos_backup.core.fsutil import FILE_MODE, private_dir
from lifeos_backup.core.settings import Settings

COOKIE = "lifeos_session"
SECRET_FILE = "dashboard-secret"  # noqa: S105 - a file name, not a secret
MIN_SECRET = 32
_SALT = "lifeos-dashboard-session"


def secret_key(settings: Settings) -> str:
    """LIFEOS_DASHBOARD_SECRET, else the state dir's generated key (made on first use)."""
    if settings.dashboard_secret is not None:
        value = settings.dashboard_secret.get_secret_value()
        if len(value) < MIN_SECRET:
            raise ConfigError(
                "LIFEOS_DASHBOARD_SECRET is too short",
                f"at least {MIN_SECRET} characters are needed",
                "generate one: python3 -c 'import secrets; print(secrets.token_urlsafe(48))'",
            )
        return value
    path = private_dir(settings.state_dir) / SECRET_FILE
    try:  # exclusive create: two processes starting at once agree on one key
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return _read_secret(path)
    key = secrets.token_urlsafe(48)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return key


def _read_secret(path: Path, wait: float = 5.0) -> str:
    """The key in `path`, waiting a moment for a process that is writing it right now."""
    deadline = time.monotonic() + wait
    while True:
        value = path.read_text().strip()
        if len(value) >= MIN_SECRET:
            return value
        if time.monotonic() >= deadline:
            raise ConfigError(
                f"the dashboard's key file {path} is damaged",
                "it holds too few characters",
                "delete it (every session ends) and start the dashboard again",
            )
        time.sleep(0.05)


@dataclass(frozen=True)
class Session:
    """A verified cookie: the CSRF token, and the account (None before login)."""

    csrf: str
    account_id: int | None = None
    tag: str | None = None
    expired: bool = False  # a login cookie that was valid but is too old now


class Sessions:
    """Signs and checks session cookies with one key and one lifetime."""

    def __init__(self, key: str, minutes: int, secure: bool) -> None:
        self._serializer = URLSafeTimedSerializer(key, salt=_SALT)
        self.max_age = minutes * 60
        self.secure = secure

    def anonymous(self) -> tuple[Session, str]:
        """A new token-only session and its cookie value."""
        session = Session(csrf=secrets.token_urlsafe(32))
        return session, self._serializer.dumps({"c": session.csrf})

    def login(self, account_id: int, tag: str) -> tuple[Session, str]:
        """A fresh session for the account (a new token too) and its cookie value."""
        session = Session(secrets.token_urlsafe(32), account_id, tag)
        return session, self._serializer.dumps({"c": session.csrf, "u": account_id, "t": tag})

    def load(self, value: str | None) -> Session | None:
        """The session a cookie holds; None when it is missing, forged or unreadable. An expired
        login comes back as `expired` (the page says so), without its account."""
        if not value:
            return None
        try:
            data: Any = self._serializer.loads(value, max_age=self.max_age)
        except SignatureExpired as exc:
            payload = exc.payload
            try:
                data = self._serializer.load_payload(payload) if payload is not None else None
            except BadSignature:
                data = None
            if isinstance(data, dict) and "u" in data:
                return Session(csrf="", expired=True)
            return None
        except BadSignature:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("c"), str):
            return None
        account = data.get("u")
        return Session(
            csrf=data["c"],
            account_id=account if isinstance(account, int) else None,
            tag=str(data.get("t")) if account is not None else None,
        )

    def cookie_options(self) -> dict[str, Any]:
        return {
            "max_age": self.max_age,
            "httponly": True,
            "samesite": "strict",
            "secure": self.secure,
            "path": "/",
        }


def same_token(expected: str, given: str | None) -> bool:
    """Constant-time comparison of the form's CSRF token with the one in the signed cookie."""
    return bool(expected) and isinstance(given, str) and hmac.compare_digest(expected, given)
