"""Catalog tables: an index of backups and task runs (the manifests on disk stay the truth)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from lifeos_backup.storage.catalog.schema import utcnow  # noqa: F401  (importers find it here)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, also on SQLite (which forgets the offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class Backup(Base):
    __tablename__ = "backups"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)  # see store.STATUSES
    path: Mapped[str] = mapped_column(Text)  # archive path relative to the backup root
    size: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text, default="")
    initiator: Mapped[str] = mapped_column(String(64), default="")
    host: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    duration_s: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    # The task now responsible: the create task while `running`, then the chain's verify task
    # (lifeos_backup.jobs.leftovers resolves a backup whose task is gone).
    task_id: Mapped[str | None] = mapped_column(String(64))
    # Off-site copy (lifeos_backup.storage.offsite.state): status, where, when, what S3 should
    # report.
    offsite_status: Mapped[str | None] = mapped_column(String(16), index=True)
    offsite_key: Mapped[str | None] = mapped_column(Text)
    offsite_checksum: Mapped[str | None] = mapped_column(String(96))
    offsite_uploaded_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    offsite_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    offsite_error: Mapped[str | None] = mapped_column(Text)
    offsite_attempts: Mapped[int | None] = mapped_column(Integer)
    offsite_upload_id: Mapped[str | None] = mapped_column(Text)  # multipart upload in progress


class TaskRun(Base):
    __tablename__ = "task_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(String(64), index=True)
    task_name: Mapped[str] = mapped_column(String(128))
    backup_id: Mapped[str | None] = mapped_column(String(128), index=True)
    state: Mapped[str] = mapped_column(String(16))  # started/succeeded/failed/retrying
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    worker: Mapped[str] = mapped_column(String(255), default="")
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(Text)


class Action(Base):
    """One audit record (lifeos_backup.storage.audit): who did what, when, to what, how it ended,
    where.

    Every backup, verify, upload, restore, drill, rotation, rollback, entity restore and flag
    change; appended only through `audit.append`, which chains each record to the one before by
    `prev_hash` and `hash` (SHA-256), so an edited or deleted record shows (`audit verify`).
    """

    __tablename__ = "actions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    action: Mapped[str] = mapped_column(String(64), index=True)  # e.g. entity.restore, flag.set
    target: Mapped[str] = mapped_column(Text)  # e.g. characters:c-1, use_postgresql_backend
    actor: Mapped[str] = mapped_column(String(128))  # the initiator: beat, app, a user name
    backup_id: Mapped[str | None] = mapped_column(String(128), index=True)
    detail: Mapped[str] = mapped_column(Text, default="{}")  # JSON object
    status: Mapped[str | None] = mapped_column(String(16))  # succeeded / failed
    size: Mapped[int | None] = mapped_column(BigInteger)  # bytes, when the action has a size
    duration_s: Mapped[float | None] = mapped_column(Float)
    location: Mapped[str | None] = mapped_column(Text)  # host:/path, s3://bucket/key, database
    prev_hash: Mapped[str | None] = mapped_column(String(64))
    hash: Mapped[str | None] = mapped_column(String(64))


class AuditAnchor(Base):
    """The audit chain's two ends (one row, id 1): where verification starts after rotation
    removed old records, and the newest record, so a deleted newest record shows too."""

    __tablename__ = "audit_anchor"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    base_hash: Mapped[str] = mapped_column(String(64))  # hash of the last removed record
    base_id: Mapped[int] = mapped_column(Integer)  # id of the last removed record (0: none)
    removed: Mapped[int] = mapped_column(Integer)  # records removed by rotation, in total
    head_hash: Mapped[str] = mapped_column(String(64))
    head_id: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class OffsiteCopy(Base):
    """A backup's copy on one off-site target (lifeos_backup.storage.offsite.state): the truth
    per target. The backups.offsite_* columns summarise these rows (off-site at all, and where
    first) for the readers that need no per-target detail."""

    __tablename__ = "offsite_copies"
    __table_args__ = (UniqueConstraint("backup_id", "target", name="uq_offsite_copies_target"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    backup_id: Mapped[str] = mapped_column(String(128), index=True)
    target: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str | None] = mapped_column(String(16))
    key: Mapped[str | None] = mapped_column(Text)
    checksum: Mapped[str | None] = mapped_column(String(96))
    uploaded_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int | None] = mapped_column(Integer)
    upload_id: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class OffsitePart(Base):
    """A finished part of a multipart upload, so a crashed upload resumes instead of restarting."""

    __tablename__ = "offsite_parts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    backup_id: Mapped[str] = mapped_column(String(128), index=True)
    target: Mapped[str | None] = mapped_column(String(64))  # NULL: the target `s3`
    upload_id: Mapped[str] = mapped_column(Text)
    part_number: Mapped[int] = mapped_column(Integer)
    size: Mapped[int] = mapped_column(BigInteger)
    etag: Mapped[str] = mapped_column(String(128))
    checksum: Mapped[str] = mapped_column(String(64))  # base64 SHA-256 of the part
    uploaded_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Drill(Base):
    """One restore drill of one backup (lifeos_backup.monitoring.drill): proof it restores, and
    how long that took; `restore_s` of the newest drill is the current recovery-time estimate."""

    __tablename__ = "drills"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    backup_id: Mapped[str] = mapped_column(String(128), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)  # running/passed/failed
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    duration_s: Mapped[float | None] = mapped_column(Float)
    restore_s: Mapped[float | None] = mapped_column(Float)
    report_path: Mapped[str | None] = mapped_column(Text)  # relative to the backup root
    details: Mapped[str] = mapped_column(Text, default="{}")  # JSON object
    error: Mapped[str | None] = mapped_column(Text)


class DashboardUser(Base):
    """A person who may log into the dashboard (lifeos_backup.web.accounts), and their role.

    Accounts are made with `lifeos-backup users add`; there is no default account. Only the
    argon2id hash of the password is kept (it names its own parameters and salt).
    """

    __tablename__ = "dashboard_users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # viewer / operator / admin
    password_hash: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(128), default="")


class RestoreRequest(Base):
    """A restore asked for in the dashboard (lifeos_backup.web.restores): what, into where, who
    asked, who approved, and how it ended.

    A restore over production waits `pending` until a second admin approves it; every other
    restore is `approved` by its requester. Only an approved request is enqueued; the task moves
    it to `running` (once: a redelivered message finds it taken) and then `succeeded` or
    `failed`.
    """

    __tablename__ = "restore_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    backup_id: Mapped[str] = mapped_column(String(128), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(Text)  # a folder, or a database name
    production: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), index=True)
    requested_by: Mapped[str] = mapped_column(String(64))
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime)
    approved_by: Mapped[str | None] = mapped_column(String(64))
    approved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    task_id: Mapped[str | None] = mapped_column(String(64))
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(Text)
