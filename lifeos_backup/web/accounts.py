"""Dashboard accounts: names, roles (lifeos_backup.web.roles) and argon2id password hashes in
the catalog.

Accounts are made with `lifeos-backup users add`; there is no default account and no default
password. argon2id (argon2-cffi's defaults, RFC 9106's low-memory profile) is memory-hard, so a
stolen catalog does not give the passwords away cheaply. Each change is in the audit trail.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import Executable, delete, select
from sqlalchemy.orm import Session

from lifeos_backup.core.errors import ConfigError, NotFound
from lifeos_backup.storage.catalog import Catalog
from lifeos_backup.storage.catalog.models import DashboardUser
from lifeos_backup.storage.catalog.store import utcnow
from lifeos_backup.web.roles import ADMIN, OPERATOR, RANK, ROLES, VIEWER

__all__ = ["ADMIN", "OPERATOR", "ROLES", "VIEWER", "Account"]

MIN_PASSWORD = 12  # characters; a passphrase is better
MAX_PASSWORD = 1024  # hashing a megabyte-long "password" is work an attacker should not cause
_NAME = re.compile(r"[a-z][a-z0-9._-]{0,63}")
_HASHER = PasswordHasher()
# Verified against when the name is unknown, so an unknown name costs as long as a wrong
# password and the answer time does not tell which names exist.
_DUMMY = _HASHER.hash("no account has this password")


@dataclass(frozen=True)
class Account:
    """What a page needs to know about the person logged in (never the hash itself)."""

    id: int
    name: str
    role: str
    created_at: datetime
    created_by: str
    tag: str  # changes when the account is removed and made again: old sessions end

    def may(self, role: str) -> bool:
        """True when this account's role is `role` or above it."""
        return RANK[self.role] >= RANK[role]


def _account(row: DashboardUser) -> Account:
    import hashlib

    tag = hashlib.sha256(f"{row.id}:{row.password_hash}".encode()).hexdigest()[:16]
    return Account(row.id, row.name, row.role, row.created_at, row.created_by, tag)


def changed(session: Session, statement: Executable) -> int:
    """Rows an UPDATE or DELETE changed (a compare-and-set's answer: 0 means someone was first)."""
    return int(getattr(session.execute(statement), "rowcount", 0))


def check_name(name: str) -> str:
    """Lower-case letters, digits, `.`, `_`, `-`, starting with a letter, at most 64."""
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"{name!r} is not a usable account name",
            "lower-case letters, digits, '.', '_' and '-', starting with a letter, at most 64",
            "e.g. `lifeos-backup users add alice --role viewer`",
        )
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise ConfigError(f"{role!r} is not a role", hint=f"choose from: {', '.join(ROLES)}")
    return role


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise ConfigError(
            "the password is too short",
            f"{len(password)} characters; at least {MIN_PASSWORD}",
            "use a passphrase of several words",
        )
    if len(password) > MAX_PASSWORD:
        raise ConfigError("the password is too long", f"at most {MAX_PASSWORD} characters")
    return password


def add(catalog: Catalog, name: str, role: str, password: str, by: str) -> Account:
    """Create an account; an existing name is refused (remove it first)."""
    check_name(name)
    check_role(role)
    check_password(password)
    hashed = _HASHER.hash(password)
    with catalog.session() as s:
        if s.scalar(select(DashboardUser).where(DashboardUser.name == name)) is not None:
            raise ConfigError(
                f"an account {name!r} exists already",
                hint=f"`lifeos-backup users remove {name}` first to replace it",
            )
        row = DashboardUser(
            name=name, role=role, password_hash=hashed, created_at=utcnow(), created_by=by
        )
        s.add(row)
        s.flush()
        account = _account(row)
    catalog.record_action("user.add", name, by, {"role": role})
    return account


def remove(catalog: Catalog, name: str, by: str) -> None:
    """Delete an account; its sessions end with it (they carry its tag)."""
    with catalog.session() as s:
        gone = changed(s, delete(DashboardUser).where(DashboardUser.name == name))
    if not gone:
        raise NotFound(f"no account {name!r}", hint="see `lifeos-backup users list`")
    catalog.record_action("user.remove", name, by)


def accounts(catalog: Catalog) -> list[Account]:
    with catalog.session() as s:
        return [_account(r) for r in s.scalars(select(DashboardUser).order_by(DashboardUser.name))]


def by_id(catalog: Catalog, account_id: int) -> Account | None:
    with catalog.session() as s:
        row = s.get(DashboardUser, account_id)
        return _account(row) if row is not None else None


def authenticate(catalog: Catalog, name: str, password: str) -> Account | None:
    """The account when `password` is its password; None otherwise (unknown name included)."""
    with catalog.session() as s:
        row = s.scalar(select(DashboardUser).where(DashboardUser.name == name))
        stored = row.password_hash if row is not None else _DUMMY
        try:
            _HASHER.verify(stored, password[:MAX_PASSWORD])
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if row is None:
            return None
        if _HASHER.check_needs_rehash(row.password_hash):  # parameters raised since
            row.password_hash = _HASHER.hash(password)
        return _account(row)
