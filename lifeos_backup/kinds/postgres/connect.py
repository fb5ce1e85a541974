"""Logging in to PostgreSQL, and telling a passing outage from a mistake that needs a person.

A server that cannot be reached (down, restarting, network) is a RetryableError: the task retries
with backoff. A refused login or a missing database is permanent: retrying only delays the alarm
and may lock the account, so it fails at once with a message that says what to fix.
"""

from __future__ import annotations

import psycopg

from lifeos_backup.core.errors import LifeosError, NotFound, PermanentError, SourceUnavailable
from lifeos_backup.kinds.postgres.conninfo import PgTarget

# Fragments of libpq / server messages that mean "the login itself is wrong".
_AUTH_MARKERS = (
    "password authentication failed",
    "authentication failed",
    "no password supplied",
    "no pg_hba.conf entry",
    "pg_hba.conf rejects",
    "does not support ssl",
    "ssl is not enabled",
)
_AUTH_HINT = (
    "check the user and password in LIFEOS_DATABASE_URL (or PGPASSWORD / ~/.pgpass) and the "
    "server's pg_hba.conf; the backup is not retried"
)


class AuthenticationFailed(PermanentError):
    """PostgreSQL refused the login (wrong password, unknown role, pg_hba.conf)."""


def one_line(text: str) -> str:
    """libpq messages span lines (FATAL:  ..., hints with tabs); errors here are one line."""
    return " ".join(part.strip() for part in text.strip().splitlines() if part.strip())


def classify_connect_error(message: str, target: PgTarget) -> LifeosError:
    """The error to raise for a failed connection attempt, from libpq's message."""
    said = target.redact(one_line(message))
    lowered = said.lower()
    where = target.describe()
    if any(marker in lowered for marker in _AUTH_MARKERS) or (
        'role "' in lowered and "does not exist" in lowered
    ):
        return AuthenticationFailed(f"PostgreSQL refused the login {where}", said, _AUTH_HINT)
    if 'database "' in lowered and "does not exist" in lowered:
        return NotFound(
            f"PostgreSQL database {where} does not exist",
            said,
            "check the database name in LIFEOS_DATABASE_URL (or PGDATABASE)",
        )
    return SourceUnavailable(
        f"PostgreSQL is unreachable at {where}",
        said,
        "is the server running and reachable from this host? the backup is retried with backoff",
    )


def connect(target: PgTarget, *, autocommit: bool = False) -> psycopg.Connection[tuple]:
    """A psycopg connection, or the classified LifeosError (never psycopg's own exception)."""
    try:
        return psycopg.connect(
            target.conninfo(), autocommit=autocommit, **target.connect_kwargs()
        )
    except psycopg.OperationalError as exc:
        raise classify_connect_error(str(exc), target) from None
