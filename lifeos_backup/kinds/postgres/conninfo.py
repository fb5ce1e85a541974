"""Where a PostgreSQL database is and how to log in, with the password kept apart from the rest.

The source is LIFEOS_DATABASE_URL (a postgresql:// URL or a key=value conninfo) or, when that is
unset, libpq's own PG* variables and ~/.pgpass. The password is split off the moment the URL is
parsed: psycopg receives it as a keyword, pg_dump and pg_restore receive it as PGPASSWORD in their
environment (procs redacts environment values from error text), and every string that is printed,
logged, passed as a command argument or stored in a manifest is built without it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from pydantic import SecretStr

from lifeos_backup.core.errors import ConfigError
from lifeos_backup.core.settings import Settings

APPLICATION_NAME = "lifeos-backup"
# Keywords whose value is a secret that libpq cannot take from the environment: refused, so that
# no password ever has to travel in a command line.
_REFUSED = ("sslpassword",)
# Variables that name a database for libpq when LIFEOS_DATABASE_URL is unset.
_PG_ENV = ("PGHOST", "PGHOSTADDR", "PGDATABASE", "PGSERVICE")


@dataclass(frozen=True)
class PgTarget:
    """A database to connect to: conninfo keywords without the password, and the password."""

    params: Mapping[str, str] = field(default_factory=dict)
    password: SecretStr | None = None

    @classmethod
    def parse(cls, text: str, *, setting: str = "LIFEOS_DATABASE_URL") -> PgTarget:
        """Split a URL or conninfo string; the parser's own message is withheld (it may quote
        the password)."""
        from psycopg.conninfo import conninfo_to_dict  # psycopg: only when a target is parsed

        try:
            params = {k: str(v) for k, v in conninfo_to_dict(text).items() if v is not None}
        except Exception:  # psycopg raises ProgrammingError; any failure means the same here
            raise ConfigError(
                f"{setting} is not a valid PostgreSQL URL or conninfo string",
                "the parser's message is not shown because it may contain the password",
                "use postgresql://user:password@host:port/dbname",
            ) from None
        for key in _REFUSED:
            if key in params:
                raise ConfigError(
                    f"{setting} sets {key}",
                    "it cannot be passed to pg_dump without putting it in the command line",
                    "use an unencrypted client key, or a password via the URL or ~/.pgpass",
                )
        password = params.pop("password", None)
        return cls(MappingProxyType(params), SecretStr(password) if password else None)

    @classmethod
    def from_settings(cls, settings: Settings) -> PgTarget:
        """The database to back up; with no URL, libpq reads PG* variables and ~/.pgpass."""
        url = settings.database_url.get_secret_value() if settings.database_url else ""
        target = cls.parse(url)
        defaults = {
            "connect_timeout": str(settings.pg_connect_timeout),
            "application_name": APPLICATION_NAME,
        }
        return target.with_params(**{k: v for k, v in defaults.items() if k not in target.params})

    def with_params(self, **params: str) -> PgTarget:
        """The same login with some keywords replaced (e.g. pinned host or another dbname)."""
        return PgTarget(MappingProxyType({**self.params, **params}), self.password)

    def with_database(self, name_or_url: str) -> PgTarget:
        """A database name on this server, or a whole other URL / conninfo string."""
        if "://" in name_or_url or "=" in name_or_url:
            other = PgTarget.parse(name_or_url, setting="--database")
            defaults = {k: v for k, v in self.params.items() if k == "connect_timeout"}
            defaults["application_name"] = APPLICATION_NAME
            return other.with_params(**{k: v for k, v in defaults.items() if k not in other.params})
        return self.with_params(dbname=name_or_url)

    def conninfo(self) -> str:
        """The conninfo string without the password: safe for argv, logs and messages."""
        from psycopg.conninfo import make_conninfo

        return make_conninfo(**self.params)

    def env(self) -> dict[str, str]:
        """Environment for pg_dump / pg_restore: PGPASSWORD when the URL carried a password."""
        return {"PGPASSWORD": self.password.get_secret_value()} if self.password else {}

    def connect_kwargs(self) -> dict[str, Any]:
        return {"password": self.password.get_secret_value()} if self.password else {}

    def redact(self, text: str) -> str:
        """`text` with the password replaced, for messages built from foreign error text."""
        if self.password:
            return text.replace(self.password.get_secret_value(), "***")
        return text

    def describe(self) -> str:
        """user@host:port/dbname as configured (libpq defaults shown as such), for messages."""
        p = self.params
        host = p.get("host") or p.get("hostaddr") or os.environ.get("PGHOST") or "(local socket)"
        port = p.get("port") or os.environ.get("PGPORT") or "5432"
        user = p.get("user") or os.environ.get("PGUSER") or "(default user)"
        dbname = p.get("dbname") or os.environ.get("PGDATABASE") or "(default database)"
        return f"{user}@{host}:{port}/{dbname}"


def restore_target(settings: Settings, database: str, server: str | None = None) -> PgTarget:
    """Where a restore goes: `database` as a URL, or a name on `server`, or on the server of
    LIFEOS_DATABASE_URL (or PGHOST / PGSERVICE). Never whatever listens on the local socket by
    default: a restore overwrites, so its server is always named."""
    if "://" in database or "=" in database:
        return PgTarget.from_settings(settings).with_database(database)
    if server:
        return PgTarget.from_settings(settings).with_database(server).with_params(dbname=database)
    named = settings.database_url is not None or any(
        os.environ.get(name) for name in ("PGHOST", "PGSERVICE")
    )
    if not named:
        raise ConfigError(
            f"no server named to restore database {database!r} into",
            "LIFEOS_DATABASE_URL is unset, and a restore never falls back to the local socket",
            f"pass --server postgresql://user@host:5432, or --database postgresql://user@host/"
            f"{database}, or set LIFEOS_DATABASE_URL",
        )
    return PgTarget.from_settings(settings).with_database(database)


def postgres_configured(settings: Settings, environ: Mapping[str, str] | None = None) -> bool:
    """True when a source database is named: LIFEOS_DATABASE_URL, or libpq's PG* variables.

    Beat schedules the PostgreSQL backup only then, so an installation without a database does
    not fail a backup every night.
    """
    env = os.environ if environ is None else environ
    return settings.database_url is not None or any(env.get(name) for name in _PG_ENV)
