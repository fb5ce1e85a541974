"""The Alembic hook turns every failure of the pre-migration backup into MigrationRefused,
Redis that does not answer included (the client's BackupFailed)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.support.services import free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from alembic_env_hook import MigrationRefused, require_verified_backup


def _context() -> SimpleNamespace:
    """An online Alembic context with one upgrade to apply."""
    migration = SimpleNamespace(opts={"destination_rev": "b"}, get_current_heads=lambda: ("a",))
    return SimpleNamespace(
        is_offline_mode=lambda: False,
        get_context=lambda: migration,
        get_revision_argument=lambda: "b",
    )


def test_an_unreachable_broker_refuses_the_migration() -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(MigrationRefused, match="Redis does not answer"):
        require_verified_backup(_context(), timeout=600, redis_url=closed)


def test_no_broker_at_all_refuses_the_migration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LIFEOS_REDIS_URL", raising=False)
    monkeypatch.setenv("LIFEOS_BACKUP_ROOT", str(tmp_path))
    with pytest.raises(MigrationRefused, match="no Redis"):
        require_verified_backup(_context(), timeout=600)
