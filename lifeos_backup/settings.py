"""All settings, read once from the environment (prefix LIFEOS_) and an optional `.env` file.

One object so that every process (worker, Beat, CLI) agrees; README lists every field.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lifeos_backup.errors import ConfigError

EMBEDDED_REDIS_URL_FILE = "embedded-redis.url"


class Settings(BaseSettings):
    """Every knob of lifeos-backup; secrets are SecretStr so they never print."""

    model_config = SettingsConfigDict(
        env_prefix="LIFEOS_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

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
        None, description="Unset: zstd 7, gzip 6 (see docs/decisions.md)."
    )
    json_sources: str = Field("data,presets,configs", description="Folders of APP_DIR to back up.")

    # Locks and task limits (seconds).
    lock_ttl: int = Field(60, description="Lock lifetime; the running task renews it.")
    task_soft_time_limit: int = Field(10_500, description="Task gets a clean-up exception.")
    task_time_limit: int = Field(10_800, description="Task is killed.")
    visibility_timeout: int = Field(14_400, description="Unacked message redelivered after this.")
    max_deliveries: int = Field(3, description="A message that killed its worker this often fails.")
    result_expires: int = Field(7 * 86_400, description="Task results kept this long in Redis.")
    retry_max: int = Field(5, description="Retries of a retryable failure.")
    retry_backoff_max: int = Field(600, description="Longest wait between retries.")

    # Retention.
    retention_json: str = Field("last=30", description="Retention policy of JSON backups.")
    retention_grace_hours: float = Field(
        24, description="Failed or unverified leftovers older than this are removed."
    )

    # Schedule (crontab strings: minute hour day-of-month month day-of-week).
    schedule_timezone: str = Field("UTC", description="Timezone of the schedule.")
    schedule_json_backup: str = Field("0 2 * * *", description="JSON backup.")
    schedule_rotate: str = Field("30 6 * * *", description="Rotation of every kind.")

    # Operator tools.
    flower_address: str = Field("127.0.0.1", description="Flower listens here.")
    flower_port: int = Field(5555, description="Flower port.")
    flower_basic_auth: SecretStr | None = Field(
        None, description="user:password; required when Flower listens beyond localhost."
    )
    log_level: str = Field("INFO", description="Worker and Beat log level.")

    @field_validator("compression")
    @classmethod
    def _known_compression(cls, value: str) -> str:
        if value not in ("zstd", "gzip"):
            raise ValueError("must be 'zstd' or 'gzip'")
        return value

    @property
    def state_dir(self) -> Path:
        """Small runtime files (embedded Redis URL, Beat schedule) live beside the backups."""
        return self.backup_root / ".state"

    @property
    def effective_catalog_url(self) -> str:
        return self.catalog_url or f"sqlite:///{(self.backup_root / 'catalog.sqlite3').resolve()}"

    @property
    def effective_compression_level(self) -> int:
        if self.compression_level is not None:
            return self.compression_level
        return 7 if self.compression == "zstd" else 6

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


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; tests call `get_settings.cache_clear()` after changing env."""
    try:
        return Settings()
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise ConfigError(
            "invalid settings", str(exc).splitlines()[0], "check LIFEOS_* variables"
        ) from exc


def redis_url_for_celery() -> str:
    """Celery reads its broker URL at import time; fall back to a local default there."""
    try:
        return get_settings().require_redis_url()
    except ConfigError:
        return os.environ.get("LIFEOS_REDIS_URL", "redis://127.0.0.1:6379/0")
