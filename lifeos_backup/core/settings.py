"""All settings, read once from the environment (prefix LIFEOS_) and an optional `.env` file.

One object so that every process (worker, Beat, CLI) agrees; README lists every field.
"""

from __future__ import annotations

import json
import os
import re
import socket
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from lifeos_backup.core.errors import ConfigError

EMBEDDED_REDIS_URL_FILE = "embedded-redis.url"
RECORDED_SETTINGS_FILE = "settings.json"  # in the state dir: what `up` runs with (no secrets)
# Never recorded: they are, or may hold, secrets, or they locate the record itself.
_NOT_RECORDED = {
    "backup_root", "database_url", "flower_basic_auth", "alert_urls", "dashboard_secret"
}


class RecordedSettings(PydanticBaseSettingsSource):
    """The lowest-priority source: the settings `lifeos-backup up` runs the workers with,
    recorded in the repository it serves (`<backup root>/.state/settings.json`).

    So a command given only the repository (LIFEOS_BACKUP_ROOT or `--repo`) works with the same
    app folder, catalog and schedule as the workers; its own environment and `.env` still win.
    """

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        root = Path(str(self.current_state.get("backup_root") or "./backups"))
        recorded = read_recorded(root)
        return {k: v for k, v in recorded.items() if k in self.settings_cls.model_fields}


def read_recorded(root: Path) -> dict[str, Any]:
    """The recorded settings of the repository at `root` ({} when there are none)."""
    try:
        data = json.loads((root / ".state" / RECORDED_SETTINGS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    settings = data.get("settings") if isinstance(data, dict) else None
    return dict(settings) if isinstance(settings, dict) else {}


class Settings(BaseSettings):
    """Every knob of lifeos-backup; secrets are SecretStr so they never print."""

    model_config = SettingsConfigDict(
        env_prefix="LIFEOS_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, environment, `.env`, then what the repository's workers run with."""
        recorded = RecordedSettings(settings_cls)
        return init_settings, env_settings, dotenv_settings, file_secret_settings, recorded

    # The five names operators' scripts depend on.
    backup_root: Path = Field(Path("./backups"), description="The backup repository.")
    app_dir: Path = Field(Path("."), description="App folder holding data/, presets/, configs/.")
    database_url: SecretStr | None = Field(None, description="PostgreSQL database to back up.")
    redis_url: str | None = Field(
        None, description="Broker, results and locks; unset: the embedded Redis of `up`."
    )
    catalog_url: str | None = Field(
        None, description="SQLAlchemy URL of the catalog; unset: SQLite file in the backup root."
    )

    # Archives.
    compression: str = Field("zstd", description="zstd, or gzip for compatibility.")
    compression_level: int | None = Field(
        None, description="Unset: zstd 3, gzip 6 (see docs/decisions.md)."
    )
    json_sources: str = Field("data,presets,configs", description="Folders of APP_DIR to back up.")

    # PostgreSQL backups (docs/postgres.md).
    pg_bin_dir: Path | None = Field(
        None, description="Folder of pg_dump/pg_restore; unset: found on PATH."
    )
    postgres_compression_level: int = Field(
        1, description="zstd level of PostgreSQL dumps (measured: docs/decisions.md)."
    )
    pg_connect_timeout: int = Field(10, description="Seconds to wait for the database to answer.")
    dump_jobs: int = Field(
        2, ge=1, description="Parts of a PostgreSQL dump (pg_dump, COPY slices) run side by side."
    )
    restore_jobs: int = Field(
        2, ge=1, description="Parts loaded side by side during a restore, and pg_restore --jobs."
    )

    # Locks and task limits (seconds).
    lock_ttl: int = Field(60, description="Lock lifetime; the running task renews it.")
    task_soft_time_limit: int = Field(10_500, description="Task gets a clean-up exception.")
    task_time_limit: int = Field(10_800, description="Task is killed.")
    visibility_timeout: int = Field(
        300, ge=30, description="A held message whose worker stopped its heartbeat (every tenth "
        "of this) is redelivered after this.",
    )
    max_deliveries: int = Field(3, description="A message that killed its worker this often fails.")
    result_expires: int = Field(7 * 86_400, description="Task results kept this long in Redis.")
    retry_max: int = Field(5, description="Retries of a retryable failure.")
    retry_backoff_max: int = Field(600, description="Longest wait between retries.")

    # Retention.
    retention_json: str = Field("last=30", description="Retention policy of JSON backups.")
    retention_postgres: str = Field(
        "within=30d", description="Retention policy of PostgreSQL backups."
    )
    retention_grace_hours: float = Field(
        24, description="Failed or unverified leftovers older than this are removed."
    )
    retention_basebackup: str = Field(
        "last=4", description="Retention of base backups; WAL older than the oldest kept goes."
    )

    # Schedule (crontab strings: minute hour day-of-month month day-of-week).
    schedule_timezone: str = Field("UTC", description="Timezone of the schedule.")
    schedule_json_backup: str = Field("0 2 * * *", description="JSON backup.")
    schedule_postgres_backup: str = Field(
        "0 3 * * *",
        description="PostgreSQL backup; scheduled only when a database is configured.",
    )
    schedule_rotate: str = Field("30 6 * * *", description="Rotation of every kind.")
    schedule_base_backup: str = Field(
        "0 1 * * 0", description="Base backup for point-in-time recovery (default Sunday 01:00)."
    )

    # Point-in-time recovery: WAL archive (docs/pitr.md).
    wal_archive_dir: Path | None = Field(
        None, description="WAL archive folder (absolute); unset: BACKUP_ROOT/postgresql/wal."
    )
    wal_compression_level: int = Field(
        1, description="zstd level of archived WAL segments (see docs/pitr.md)."
    )
    schedule_wal_offsite: str = Field(
        "* * * * *", description="Copy newly archived WAL off-site (when a bucket is set)."
    )
    # The WAL stream (pg_receivewal under `up`, docs/pitr.md "The WAL stream").
    wal_stream: bool = Field(False, description="Run pg_receivewal under `up` (needs a database).")
    wal_slot: str = Field(
        "lifeos_backup",
        pattern=r"^[a-z0-9_]{1,63}$",
        description="Physical replication slot (and application_name) of the WAL stream.",
    )
    wal_synchronous: bool = Field(
        False, description="pg_receivewal --synchronous (for synchronous_standby_names)."
    )
    wal_spool_dir: Path | None = Field(
        None, description="pg_receivewal's folder; unset: BACKUP_ROOT/postgresql/wal-spool."
    )

    # Off-site copies (S3 API) and client-side encryption (README "Off-site copies").
    # Off-site is on exactly when a bucket is set; credentials come from the AWS chain/env only.
    s3_endpoint_url: str | None = Field(
        None, description="S3 endpoint, e.g. http://minio:9000; unset or empty: AWS S3."
    )
    s3_bucket: str | None = Field(
        None, description="Bucket of the off-site target `s3`; unset: no such target."
    )
    s3_prefix: str = Field("lifeos-backup", description="Key prefix inside the bucket.")
    s3_region: str | None = Field(None, description="Region; unset: the AWS chain's default.")
    s3_storage_class: str | None = Field(
        None, description="e.g. STANDARD_IA, GLACIER_IR; unset: the bucket's default."
    )
    s3_server_side_encryption: str | None = Field(
        None, description="AES256 or aws:kms; unset: the bucket's default."
    )
    s3_sse_kms_key_id: str | None = Field(None, description="KMS key for aws:kms.")
    s3_part_size_mb: int = Field(64, ge=5, description="Multipart part size, MiB (S3 minimum 5).")
    s3_concurrency: int = Field(4, ge=1, description="Parts transferred at once.")
    s3_max_attempts: int = Field(
        5, ge=1, description="Attempts per S3 request (botocore retries, with backoff)."
    )
    s3_bandwidth_limit: float | None = Field(
        None, gt=0, description="Upload limit in MB/s; unset: unlimited."
    )
    s3_object_lock_days: int | None = Field(
        None, ge=1, description="Object Lock retention of uploaded objects; unset: none."
    )
    s3_object_lock_mode: str = Field("GOVERNANCE", description="GOVERNANCE or COMPLIANCE.")
    offsite_targets: str | None = Field(
        None,
        description="More off-site targets (S3, GCS, Azure): a JSON array, or the path of a "
        "TOML file of [[target]] tables (lifeos_backup.core.targets).",
    )
    retention_offsite: str = Field(
        "within=90d", description="Retention policy of off-site copies (every kind)."
    )
    offsite_sync_sample: int = Field(
        2, ge=0, description="Remote copies fully re-read (SHA-256) by each sync."
    )
    schedule_offsite_sync: str = Field("0 5 * * *", description="Off-site sync.")
    encryption_recipients: str | None = Field(
        None, description="age public keys (age1...), comma-separated; unset: not encrypted."
    )
    encryption_identity_file: Path | None = Field(
        None, description="age private key file; needed only to restore and for full checks."
    )

    # Restore drills, health checks, alerts and metrics (docs/monitoring.md).
    schedule_drill: str = Field(
        "0 4 * * 0", description="Restore drill of every kind (default Sunday 04:00)."
    )
    schedule_health: str = Field("0 * * * *", description="Health check (default hourly).")
    drill_sanity_queries: list[str] = Field(
        default_factory=list,
        description="JSON array of SQL queries run in a drill's scratch database; each must "
        "return a true first column.",
    )
    drill_migrate_command: str | None = Field(
        None, description="App migration command run against the scratch database after a "
        "drill's restore (e.g. `alembic upgrade head`, run in APP_DIR); unset: none.",
    )
    drill_migrate_url_env: str = Field(
        "DATABASE_URL", description="Variable giving the migration command the scratch URL."
    )
    drill_migrate_timeout: int = Field(900, description="Seconds the migration command may run.")
    schedule_pitr_drill: str = Field(
        "30 4 * * 0",
        description="Point-in-time recovery drill (default Sunday 04:30; only with a database).",
    )
    drill_pitr_dir: Path | None = Field(
        None, description="Scratch folder of PITR drills (the server's OS user must enter it); "
        "unset: BACKUP_ROOT/.drill/pitr.",
    )
    drill_pitr_wal_command: str | None = Field(
        None, description="Program part of a PITR drill's restore_command (run by the server's "
        "OS user); unset: this install's lifeos-wal.",
    )
    drill_pitr_wal_wait: int = Field(
        120, ge=0, description="Seconds a PITR drill waits for the WAL archive to reach the "
        "primary's position at the drill's start.",
    )
    health_kinds: str | None = Field(
        None, description="Kinds watched for missed backups; unset: json, postgres when a "
        "database is configured, and any other kind with verified backups.",
    )
    health_max_age_hours: float = Field(
        25, description="Newest verified backup older than this: overdue (every kind)."
    )
    health_max_age_per_kind: str = Field(
        "basebackup=193", description="Per-kind overrides of the age limit, kind=hours,..."
    )
    health_size_tolerance: float = Field(
        0.5, description="Size anomaly: newest backup off the median of the previous by more."
    )
    health_size_history: int = Field(7, description="Good backups the size median is taken over.")
    health_min_free_disk: str = Field(
        "10%", description="Free space under the backup root below this: alert (10% or 20GiB)."
    )
    health_offsite_max_lag_hours: float = Field(
        26, description="Verified backup not off-site after this long: alert (if off-site is on)."
    )
    health_wal_max_age_seconds: int = Field(
        3600, description="Newest archived WAL segment older than this: alert (if PITR is on)."
    )
    health_wal_slot_max_lag_bytes: str = Field(
        "1GiB", description="WAL the stream's slot holds back on the primary beyond this: alert."
    )
    health_wal_slot_max_lag_seconds: int = Field(
        60, description="The stream's receiver behind by more than this: alert; 0: off."
    )
    alert_urls: SecretStr | None = Field(
        None, description="apprise URLs, comma-separated (slack://, mailto://, json://...)."
    )
    metrics_port: int = Field(9808, description="Prometheus endpoint port; 0 turns it off.")
    metrics_address: str = Field("127.0.0.1", description="Prometheus endpoint address.")

    # Operator tools.
    flower_address: str = Field("127.0.0.1", description="Flower listens here.")
    flower_port: int = Field(5555, description="Flower port.")
    flower_basic_auth: SecretStr | None = Field(
        None, description="user:password; required when Flower listens beyond localhost."
    )
    log_level: str = Field("INFO", description="Worker and Beat log level.")

    # The dashboard (docs/dashboard.md): a web page with a login, served by `up` and `dashboard`.
    dashboard_port: int = Field(8808, description="Dashboard port under `up`; 0 turns it off.")
    dashboard_address: str = Field(
        "127.0.0.1", description="Dashboard address; beyond localhost only with TLS settings or "
        "LIFEOS_DASHBOARD_BEHIND_TLS_PROXY=true.",
    )
    dashboard_secret: SecretStr | None = Field(
        None, description="Key signing session cookies; unset: a generated 0600 file in the "
        "state dir.",
    )
    dashboard_tls_cert: Path | None = Field(None, description="TLS certificate file (PEM).")
    dashboard_tls_key: Path | None = Field(None, description="TLS private key file (PEM).")
    dashboard_behind_tls_proxy: bool = Field(
        False, description="A TLS proxy in front terminates HTTPS: listen beyond localhost "
        "without TLS here, cookies marked Secure.",
    )
    dashboard_session_minutes: int = Field(
        480, ge=1, description="A login lasts this long, then the page asks again."
    )
    dashboard_login_attempts: int = Field(
        5, ge=1, description="Failed logins per user and address within the window before "
        "further attempts are refused.",
    )
    dashboard_login_window_minutes: int = Field(
        15, ge=1, description="The window of LIFEOS_DASHBOARD_LOGIN_ATTEMPTS."
    )
    dashboard_flower_url: str | None = Field(
        None, description="Flower's URL as the dashboard's users reach it; unset: "
        "http://FLOWER_ADDRESS:FLOWER_PORT.",
    )

    # Operations: audit trail, queues across hosts, Beat (docs/operations.md).
    audit_retention_days: int = Field(
        90, ge=1, description="Audit records older than this are removed (chain stays verifiable)."
    )
    schedule_audit_rotate: str = Field("45 6 * * *", description="Rotation of the audit trail.")
    shared_repository: bool = Field(
        False,
        description="Every worker sees the same backup root (one host, or a shared volume): "
        "a chain's later steps may run on any worker; false: they stay on the creating host.",
    )
    worker_host_queue: str | None = Field(
        None, description="This host's queue for the later steps of its chains; unset: "
        "host.<hostname>. Workers sharing one backup root may share one name.",
    )
    beat_max_interval: int = Field(
        30, ge=1, description="Seconds Beat sleeps at most between checks; its Redis lock "
        "expires after 5 times this, when a standby Beat takes over.",
    )

    # Working with the main app (docs/app-integration.md).
    rollback_entities: str = Field(
        "characters:characters:character_id,clothing_items:clothing_items:item_id,"
        "outfits:outfits:outfit_id,compositions:compositions:composition_id,"
        "board_games:board_games:game_id,favorites:favorites:user_id[]",
        description="Rollback to JSON: table:folder:id_column, comma-separated; id_column[] "
        "groups the rows per value into one list file.",
    )
    flags_redis_url: str | None = Field(
        None, description="Redis holding the feature flags; unset: LIFEOS_REDIS_URL."
    )

    @field_validator("compression")
    @classmethod
    def _known_compression(cls, value: str) -> str:
        if value not in ("zstd", "gzip"):
            raise ValueError("must be 'zstd' or 'gzip'")
        return value

    @field_validator(
        "s3_endpoint_url",
        "s3_bucket",
        "s3_region",
        "s3_storage_class",
        "s3_server_side_encryption",
        "s3_sse_kms_key_id",
        "s3_bandwidth_limit",
        "s3_object_lock_days",
        "encryption_recipients",
        "encryption_identity_file",
        "dashboard_tls_cert",
        "dashboard_tls_key",
        "dashboard_flower_url",
        "offsite_targets",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """`LIFEOS_S3_ENDPOINT_URL=` (empty, as in .env files) means unset, i.e. AWS itself."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("redis_url", "flags_redis_url", mode="before")
    @classmethod
    def _redis_url(cls, value: object) -> object:
        """A Redis URL redis-py cannot open (no redis://, rediss:// or unix:// scheme, a bad
        port) stops every process at start with the setting's name, instead of surfacing as a
        bare ValueError at first use; empty means unset. redis-py's messages never repeat the
        URL, so a password in it is not printed."""
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        check_redis_url(str(value))
        return value

    @field_validator("s3_object_lock_mode")
    @classmethod
    def _lock_mode(cls, value: str) -> str:
        if value.upper() not in ("GOVERNANCE", "COMPLIANCE"):
            raise ValueError("must be GOVERNANCE or COMPLIANCE")
        return value.upper()

    @field_validator("encryption_recipients")
    @classmethod
    def _valid_recipients(cls, value: str | None) -> str | None:
        """A mistyped key must stop the worker at start, not the backup at 2 AM."""
        if not value:
            return value
        from lifeos_backup.core.agekeys import parse_recipients  # cryptography: only when set

        try:
            parse_recipients(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("offsite_targets")
    @classmethod
    def _valid_targets(cls, value: str | None) -> str | None:
        """A mistyped target (or a secret pasted where a variable name goes) stops the worker
        at start."""
        if not value:
            return value
        from lifeos_backup.core.targets import parse_targets

        try:
            parse_targets(value)
        except ConfigError as exc:
            raise ValueError(f"{exc.what}: {exc.detail}") from None
        return value

    @property
    def offsite_enabled(self) -> bool:
        """Off-site copies are on exactly when a target is configured (a bucket is set)."""
        return bool(self.s3_bucket or self.offsite_targets)

    @property
    def host_queue(self) -> str:
        """The queue of this host's workers: a chain's later steps wait there for its files."""
        return self.worker_host_queue or f"host.{socket.gethostname()}"

    @property
    def state_dir(self) -> Path:
        """Small runtime files (embedded Redis URL, Beat schedule) live beside the backups."""
        return self.backup_root / ".state"

    @property
    def effective_catalog_url(self) -> str:
        # The folder resolved, the file not: catalog.sqlite3 is a pointer (a symlink) that the
        # catalog follows itself (lifeos_backup.storage.catalog.generations).
        return self.catalog_url or f"sqlite:///{self.backup_root.resolve() / 'catalog.sqlite3'}"

    @property
    def effective_compression_level(self) -> int:
        if self.compression_level is not None:
            return self.compression_level
        return 3 if self.compression == "zstd" else 6

    def require_redis_url(self) -> str:
        """The configured Redis, else the embedded one that `lifeos-backup up` started."""
        if self.redis_url:
            return self.redis_url
        marker = self.state_dir / EMBEDDED_REDIS_URL_FILE
        if marker.exists():
            return marker.read_text().strip()
        raise ConfigError(
            "no Redis to talk to",
            "LIFEOS_REDIS_URL is not set and no embedded Redis is running",
            "set LIFEOS_REDIS_URL, or start the system with `lifeos-backup up`",
        )


def _has_password(url: str | None) -> bool:
    return bool(url) and urlsplit(str(url)).password is not None


def _without_password(conninfo: str) -> str:
    """A database URL or libpq key=value string with its password left out."""
    if "://" in conninfo:
        parts = urlsplit(conninfo)
        if parts.password is None:
            return conninfo
        host = parts.netloc.rpartition("@")[2]
        user = f"{parts.username}@" if parts.username else ""
        return parts._replace(netloc=f"{user}{host}").geturl()
    return re.sub(r"\bpassword\s*=\s*('[^']*'|\S+)\s*", "", conninfo).strip()


def recordable(settings: Settings) -> dict[str, Any]:
    """The settings a command elsewhere may take over: everything but secrets (and URLs that
    carry a password), as JSON values, paths made absolute. `database` (not a setting) names
    the database without its password, to compare with."""
    values = settings.model_dump(mode="json", exclude=_NOT_RECORDED)
    for key in ("redis_url", "catalog_url", "flags_redis_url"):
        if _has_password(values.get(key)):
            del values[key]
    for key in (
        "app_dir", "pg_bin_dir", "wal_archive_dir", "wal_spool_dir", "encryption_identity_file",
        "drill_pitr_dir",
    ):  # fmt: skip
        if values.get(key):
            values[key] = str(Path(values[key]).resolve())
    if settings.database_url is not None:
        values["database"] = _without_password(settings.database_url.get_secret_value())
    return values


def record_settings(settings: Settings, by: str) -> Path:
    """Write the effective non-secret settings into the repository's state dir (0600)."""
    from lifeos_backup.core.fsutil import write_json_atomic

    path = settings.state_dir / RECORDED_SETTINGS_FILE
    write_json_atomic(
        path,
        {
            "written_by": by,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "settings": recordable(settings),
        },
    )
    return path


def disagreements(settings: Settings, fields: list[str]) -> list[str]:
    """One line per setting in `fields` whose value here differs from the recorded one."""
    recorded = read_recorded(settings.backup_root)
    if not recorded:
        return []
    mine = recordable(settings)
    lines = []
    for field in fields:
        if field in recorded and field in mine and mine[field] != recorded[field]:
            lines.append(
                f"LIFEOS_{field.upper()} is {mine[field]!r} here, but the workers of "
                f"{settings.backup_root} run with {recorded[field]!r}: they use theirs"
            )
    return lines


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; tests call `get_settings.cache_clear()` after changing env."""
    try:
        return Settings()
    except ValidationError as exc:
        detail = invalid_fields(exc)
        raise ConfigError("invalid settings", detail, "check LIFEOS_* variables") from exc
    except ValueError as exc:  # pydantic-settings' own errors (a value that is not JSON, ...)
        detail = str(exc).splitlines()[0]
        raise ConfigError("invalid settings", detail, "check LIFEOS_* variables") from exc


def invalid_fields(exc: ValidationError) -> str:
    """`LIFEOS_NAME: what is wrong` for each invalid setting; never the value (it may be a
    secret), and not pydantic's first line, which names only the class."""
    problems = []
    for error in exc.errors():
        name = "LIFEOS_" + "_".join(str(part) for part in error["loc"]).upper()
        problems.append(f"{name}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(problems) or str(exc).splitlines()[0]


def check_redis_url(url: str) -> None:
    """Raise ValueError for a URL redis-py's `from_url` refuses: a scheme other than redis://,
    rediss:// or unix://, or a port that is not a number in range. The same rules as
    `redis.connection.parse_url`, without importing redis (about 0.15 s) into every command that
    reads the settings; the message never repeats the URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(
            "Redis URL must specify one of the following schemes (redis://, rediss://, unix://)"
        )
    if parts.scheme == "unix":
        return
    _ = parts.port  # ValueError for a port that is not a number or out of range


def redis_url_for_celery() -> str:
    """Celery reads its broker URL at import time; fall back to a local default there."""
    try:
        return get_settings().require_redis_url()
    except ConfigError:
        return os.environ.get("LIFEOS_REDIS_URL", "redis://127.0.0.1:6379/0")
