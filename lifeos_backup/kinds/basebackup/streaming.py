"""The WAL stream seen from the settings and from the primary: its configuration, its slot.

lifeos_backup.wal.stream runs pg_receivewal and seals what it receives; it knows nothing of the
settings. Here the settings become its StreamConfig (the password in PGPASSWORD, never argv), and
the primary is asked how the stream's replication slot is doing: how much WAL it holds back (a
slot whose receiver is gone makes the primary keep WAL until its disk is full, unless
max_slot_wal_keep_size caps it), and whether the receiver is streaming right now.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg

from lifeos_backup.core.errors import CommandFailed, ConfigError, NotFound
from lifeos_backup.core.settings import Settings
from lifeos_backup.kinds.basebackup import wal_archive_dir
from lifeos_backup.kinds.basebackup.pgconn import connect, pg_tool, target
from lifeos_backup.wal.segment import WalError
from lifeos_backup.wal.stream import SealReport, StreamConfig, seal_spool

SPOOL_SUBDIR = ("postgresql", "wal-spool")


def spool_dir(settings: Settings) -> Path:
    """LIFEOS_WAL_SPOOL_DIR, else BACKUP_ROOT/postgresql/wal-spool."""
    if settings.wal_spool_dir is not None:
        return settings.wal_spool_dir
    return settings.backup_root.joinpath(*SPOOL_SUBDIR)


def stream_config(settings: Settings) -> StreamConfig:
    """The stream of LIFEOS_DATABASE_URL into the WAL archive, on LIFEOS_WAL_SLOT.

    application_name is the slot's name, so `synchronous_standby_names = 'lifeos_backup'` names
    this receiver (docs/pitr.md, "Synchronous mode").
    """
    if settings.database_url is None:
        raise ConfigError(
            "the WAL stream needs a database",
            "LIFEOS_WAL_STREAM is on but LIFEOS_DATABASE_URL is not set",
            "set LIFEOS_DATABASE_URL (a role with REPLICATION), or LIFEOS_WAL_STREAM=0",
        )
    source = target(settings).with_params(application_name=settings.wal_slot)
    return StreamConfig(
        receivewal=pg_tool(settings, "pg_receivewal"),
        conninfo=source.conninfo(),
        spool=spool_dir(settings).absolute(),
        archive=wal_archive_dir(settings).absolute(),
        slot=settings.wal_slot,
        synchronous=settings.wal_synchronous,
        level=settings.wal_compression_level,
        recipients=settings.encryption_recipients,
        env=source.env(),
    )


@dataclass(frozen=True)
class SlotStatus:
    """The slot as the primary sees it, and its receiver's replication row when connected."""

    slot: str
    exists: bool
    active: bool = False
    wal_status: str | None = None  # reserved, extended, unreserved, lost (PostgreSQL 13+)
    restart_lsn: str | None = None
    current_lsn: str | None = None
    lag_bytes: int | None = None  # WAL the primary keeps for the slot
    safe_wal_size: int | None = None  # bytes before max_slot_wal_keep_size would drop WAL
    state: str | None = None  # pg_stat_replication.state: streaming, catchup, ...
    sync_state: str | None = None  # async, sync, potential, quorum
    write_lsn: str | None = None
    flush_lsn: str | None = None
    lag_seconds: float | None = None  # write lag (flush lag in synchronous mode); 0 caught up
    max_slot_wal_keep_size: str | None = None

    @property
    def streaming(self) -> bool:
        return self.active and self.state == "streaming"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "streaming": self.streaming}


_SLOT_QUERY = """
SELECT s.active, s.wal_status, s.restart_lsn::text, pg_current_wal_lsn()::text,
       pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint, s.safe_wal_size,
       r.state, r.sync_state, r.write_lsn::text, r.flush_lsn::text,
       EXTRACT(EPOCH FROM CASE WHEN r.sync_state IN ('sync', 'quorum') THEN r.flush_lag
                               ELSE r.write_lag END)::float8,
       current_setting('max_slot_wal_keep_size')
FROM pg_replication_slots s
LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid
WHERE s.slot_name = %s AND s.slot_type = 'physical'
"""


def slot_status(settings: Settings, slot: str | None = None) -> SlotStatus:
    """Ask the primary about the stream's slot (LIFEOS_WAL_SLOT unless `slot`)."""
    name = slot or settings.wal_slot
    with connect(settings) as conn:
        found = conn.execute(_SLOT_QUERY, (name,)).fetchone()
        if found is None:
            keep = conn.execute("SELECT current_setting('max_slot_wal_keep_size')").fetchone()
            return SlotStatus(name, False, max_slot_wal_keep_size=str(keep[0]) if keep else None)
    row: tuple[Any, ...] = tuple(found)
    (active, wal_status, restart, current, lag, safe, state, sync, write, flush, seconds,
     keep_size) = row  # fmt: skip
    caught_up = state == "streaming" and seconds is None  # PostgreSQL: NULL once caught up
    return SlotStatus(
        slot=name,
        exists=True,
        active=bool(active),
        wal_status=wal_status,
        restart_lsn=restart,
        current_lsn=current,
        lag_bytes=int(lag) if lag is not None else None,
        safe_wal_size=int(safe) if safe is not None else None,
        state=state,
        sync_state=sync,
        write_lsn=write,
        flush_lsn=flush,
        lag_seconds=0.0 if caught_up else (float(seconds) if seconds is not None else None),
        max_slot_wal_keep_size=str(keep_size),
    )


def drop_slot(settings: Settings, slot: str | None = None, *, force: bool = False) -> SlotStatus:
    """Drop the stream's slot so the primary stops keeping WAL for it; returns what it was.

    An active slot (its receiver connected) is refused unless `force`, which ends that
    receiver's connection first: a running `up` would re-create the slot, so stop the stream
    (LIFEOS_WAL_STREAM=0) before dropping for good.
    """
    status = slot_status(settings, slot)
    if not status.exists:
        raise NotFound(
            f"no replication slot {status.slot}",
            "pg_replication_slots has no physical slot of that name",
            "see `lifeos-backup wal slot status`",
        )
    with connect(settings) as conn:
        if status.active:
            if not force:
                raise ConfigError(
                    f"replication slot {status.slot} is in use by a connected receiver",
                    f"state {status.state or 'unknown'}",
                    "stop the WAL stream first (LIFEOS_WAL_STREAM=0 and restart `up`), "
                    "or pass --force to disconnect it",
                )
            conn.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                "WHERE slot_name = %s AND active_pid IS NOT NULL",
                (status.slot,),
            )
        try:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (status.slot,))
        except psycopg.errors.ObjectInUse:
            conn.execute("SELECT pg_sleep(0.5)")  # the terminated walsender is still leaving
            conn.execute("SELECT pg_drop_replication_slot(%s)", (status.slot,))
    return status


def seal_received(settings: Settings) -> SealReport | None:
    """Seal what the stream received into the archive now (None: no spool on this host).

    `restore pitr` runs this first, so the last WAL received (the unfinished segment after the
    primary was lost) is in the archive even when the stream's own sealer has not run since.
    """
    spool = spool_dir(settings)
    if not spool.is_dir():
        return None
    try:
        return seal_spool(
            spool,
            wal_archive_dir(settings),
            level=settings.wal_compression_level,
            recipients=settings.encryption_recipients,
        )
    except (WalError, OSError) as exc:
        raise CommandFailed(
            "cannot seal the WAL stream's spool into the archive",
            f"{spool}: {exc}",
            "fix the cause (space, permissions), or move the spool away to recover from the "
            "archive alone (losing what only the spool holds)",
        ) from None
