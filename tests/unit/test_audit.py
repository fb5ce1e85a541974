"""The audit trail's hash chain on an SQLite catalog: append, verify, tamper, rotate, migrate.

No services: every test gets its own catalog file. Tampering is done with plain SQL, as an
intruder with access to the database file would.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text

from lifeos_backup.storage import audit
from lifeos_backup.storage.catalog import chain, open_catalog
from lifeos_backup.storage.catalog.store import MIGRATIONS, Catalog

CLI = str(Path(sys.executable).with_name("lifeos-backup"))


def fresh(tmp_path: Path) -> Catalog:
    return open_catalog(f"sqlite:///{tmp_path / 'catalog.sqlite3'}")


def fill(catalog: Catalog, count: int = 5) -> list[int]:
    return [
        audit.append(
            catalog,
            action="backup",
            target=f"json_backup_2026112{i}_000000",
            initiator="beat",
            size=1000 + i,
            duration_s=0.5 + i,
            location=f"host-a:/backups/json/{i}.tar.zst",
            detail={"task_id": f"t{i}", "nested": {"ü": [1, 2]}},
        )
        for i in range(count)
    ]


def sql(catalog: Catalog, statement: str, **params: object) -> None:
    with catalog.engine.begin() as conn:
        conn.execute(text(statement), params)


def test_chain_links_each_record_to_the_one_before(tmp_path: Path) -> None:
    catalog = fresh(tmp_path)
    ids = fill(catalog)
    rows = audit.records(catalog)
    assert [r.id for r in rows] == ids
    assert rows[0].prev_hash == audit.GENESIS
    for before, after in itertools.pairwise(rows):
        assert after.prev_hash == before.hash
    for row in rows:
        assert row.hash == audit.record_hash(audit.fields_of(row), str(row.prev_hash))
    result = audit.verify(catalog)
    assert result.ok and result.checked == 5 and result.head_id == ids[-1]


def test_hash_covers_every_field(tmp_path: Path) -> None:
    row = audit.fields_of(audit.records(fill_and_return(tmp_path))[0])
    base = audit.record_hash(row, audit.GENESIS)
    for name in chain.HASHED:
        changed = dict(row, **{name: "something else"})
        assert audit.record_hash(changed, audit.GENESIS) != base, name
    assert audit.record_hash(row, "f" * 64) != base


def fill_and_return(tmp_path: Path) -> Catalog:
    catalog = fresh(tmp_path)
    fill(catalog, 1)
    return catalog


@pytest.mark.parametrize(
    ("column", "value"),
    [("actor", "mallory"), ("status", "succeeded-ish"), ("size", 1), ("detail", "{}")],
)
def test_verify_names_an_edited_record(tmp_path: Path, column: str, value: object) -> None:
    catalog = fresh(tmp_path)
    ids = fill(catalog)
    sql(catalog, f"UPDATE actions SET {column} = :v WHERE id = :id", v=value, id=ids[2])
    result = audit.verify(catalog)
    assert [(p.record_id, p.what.split(":")[0]) for p in result.problems] == [
        (ids[2], "was edited")
    ]


def test_verify_catches_an_edit_with_a_recomputed_hash(tmp_path: Path) -> None:
    catalog = fresh(tmp_path)
    ids = fill(catalog)
    row = audit.records(catalog)[1]
    forged = dict(audit.fields_of(row), actor="mallory")
    sql(
        catalog,
        "UPDATE actions SET actor = 'mallory', hash = :h WHERE id = :id",
        h=audit.record_hash(forged, str(row.prev_hash)),
        id=ids[1],
    )
    problems = audit.verify(catalog).problems
    assert [p.record_id for p in problems] == [ids[2]]
    assert f"record {ids[1]} was replaced" in problems[0].what


def test_verify_names_where_a_record_was_deleted(tmp_path: Path) -> None:
    catalog = fresh(tmp_path)
    ids = fill(catalog)
    sql(catalog, "DELETE FROM actions WHERE id = :id", id=ids[2])
    problems = audit.verify(catalog).problems
    assert [p.record_id for p in problems] == [ids[3]]
    assert f"does not follow record {ids[1]}" in problems[0].what


def test_verify_notices_the_newest_record_deleted(tmp_path: Path) -> None:
    catalog = fresh(tmp_path)
    ids = fill(catalog)
    sql(catalog, "DELETE FROM actions WHERE id = :id", id=ids[-1])
    problems = audit.verify(catalog).problems
    assert len(problems) == 1 and problems[0].record_id == ids[-1]
    assert "newest record" in problems[0].what
    # A later append chains onto the deleted record's hash: the gap stays visible.
    audit.append(catalog, action="flag.set", target="f", initiator="op")
    assert audit.verify(catalog).problems


def test_cli_audit_verify_exit_codes_and_message(tmp_path: Path) -> None:
    catalog = fresh(tmp_path)
    ids = fill(catalog, 3)
    env = {"LIFEOS_BACKUP_ROOT": str(tmp_path), "PATH": "/usr/bin:/bin"}
    ok = subprocess.run([CLI, "audit", "verify"], env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "audit trail intact: 3 records" in ok.stdout
    listed = subprocess.run([CLI, "audit", "--json"], env=env, capture_output=True, text=True)
    rows = json.loads(listed.stdout)
    assert [r["initiator"] for r in rows] == ["beat"] * 3 and rows[0]["size"] == 1000
    sql(catalog, "UPDATE actions SET target = 'x' WHERE id = :id", id=ids[1])
    bad = subprocess.run([CLI, "audit", "verify"], env=env, capture_output=True, text=True)
    assert bad.returncode == 1
    assert f"record {ids[1]}: was edited" in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("error: audit trail tampered")


def test_filters_since_and_action(tmp_path: Path) -> None:
    catalog = fresh(tmp_path)
    fill(catalog, 2)
    audit.append(catalog, action="restore.json", target="b", initiator="alice")
    audit.append(catalog, action="restore.postgres", target="c", initiator="alice")
    assert [r.target for r in audit.records(catalog, action="restore")] == ["b", "c"]
    future = datetime.now(UTC) + timedelta(minutes=1)
    assert audit.records(catalog, since=future) == []
    assert len(audit.records(catalog, since=audit.parse_since("1h"))) == 4


def test_parse_since() -> None:
    now = datetime(2026, 11, 28, 12, tzinfo=UTC)
    assert audit.parse_since("7d", now) == now - timedelta(days=7)
    assert audit.parse_since("30m", now) == now - timedelta(minutes=30)
    assert audit.parse_since("2026-11-01") == datetime(2026, 11, 1, tzinfo=UTC)
    with pytest.raises(audit.ConfigError, match="neither a duration nor a date"):
        audit.parse_since("yesterday")


def _age(catalog: Catalog, record_id: int, days: int) -> None:
    """Backdate a record and re-hash the chain from it on, as if it had been written then."""
    rows = audit.records(catalog)
    prev = audit.GENESIS
    for row in rows:
        fields = audit.fields_of(row)
        if row.id == record_id:
            fields["at"] = row.at - timedelta(days=days)
        digest = audit.record_hash(fields, prev)
        sql(
            catalog,
            "UPDATE actions SET at = :at, prev_hash = :p, hash = :h WHERE id = :id",
            at=fields["at"].replace(tzinfo=None).isoformat(sep=" "),
            p=prev,
            h=digest,
            id=row.id,
        )
        prev = digest
    sql(catalog, "UPDATE audit_anchor SET head_hash = :h", h=prev)


def test_rotation_removes_old_records_and_the_rest_still_verifies(tmp_path: Path) -> None:
    catalog = fresh(tmp_path)
    ids = fill(catalog, 5)
    for record_id in ids[:3]:
        _age(catalog, record_id, 100)
    assert audit.verify(catalog).ok
    assert audit.rotate(catalog, 90, dry_run=True) == 3
    assert len(audit.records(catalog)) == 5
    assert audit.rotate(catalog, 90) == 3
    assert [r.id for r in audit.records(catalog)] == ids[3:]
    result = audit.verify(catalog)
    assert result.ok and result.base_id == ids[2]
    assert audit.rotate(catalog, 90) == 0
    # Deleting the first kept record is still detected after rotation.
    sql(catalog, "DELETE FROM actions WHERE id = :id", id=ids[3])
    assert [p.record_id for p in audit.verify(catalog).problems] == [ids[4]]


def test_rotation_refuses_to_destroy_evidence(tmp_path: Path) -> None:
    catalog = fresh(tmp_path)
    ids = fill(catalog, 3)
    for record_id in ids[:2]:
        _age(catalog, record_id, 100)
    sql(catalog, "UPDATE actions SET actor = 'mallory' WHERE id = :id", id=ids[0])
    with pytest.raises(audit.AuditChainBroken, match=f"audit record {ids[0]} was edited"):
        audit.rotate(catalog, 90)
    assert len(audit.records(catalog)) == 3


def _append_many(url: str, worker: int, count: int) -> None:
    catalog = Catalog(url)
    for i in range(count):
        audit.append(catalog, action="flag.set", target=f"w{worker}-{i}", initiator=f"p{worker}")


def test_concurrent_appends_from_processes_keep_one_chain(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'catalog.sqlite3'}"
    Catalog(url)  # migrate once before the race
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_append_many, args=(url, w, 25)) for w in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    catalog = Catalog(url)
    assert len(audit.records(catalog)) == 100
    result = audit.verify(catalog)
    assert result.ok, result.problems[:3]
    assert len({r.prev_hash for r in audit.records(catalog)}) == 100  # no fork


def test_migration_chains_records_written_before_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    engine = create_engine(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0003_drills")
        for i in range(3):
            conn.execute(
                text(
                    "INSERT INTO actions (at, action, target, actor, backup_id, detail) "
                    "VALUES (:at, 'flag.set', :t, 'alice', NULL, '{}')"
                ),
                {"at": f"2026-11-2{i} 10:00:00.123456", "t": f"flag{i}"},
            )
    engine.dispose()
    catalog = Catalog(url)
    rows = audit.records(catalog)
    assert [r.status for r in rows] == ["succeeded"] * 3
    assert audit.verify(catalog).ok
    audit.append(catalog, action="flag.set", target="new", initiator="bob")
    assert audit.verify(catalog).ok


def test_record_action_goes_through_the_chain(tmp_path: Path) -> None:
    catalog = fresh(tmp_path)
    catalog.record_action("entity.restore", "characters:c-1", "alice", {"written": 1}, "pg_1")
    [row] = catalog.actions("entity.")
    assert row.hash and row.prev_hash == audit.GENESIS and row.status == "succeeded"
    assert audit.verify(catalog).ok


def test_audited_records_failures_with_the_error(tmp_path: Path) -> None:
    catalog = fresh(tmp_path)
    with pytest.raises(RuntimeError), audited_block(catalog):
        raise RuntimeError("disk on fire")
    [row] = audit.records(catalog)
    assert row.status == "failed" and "disk on fire" in row.detail and row.duration_s is not None


def audited_block(catalog: Catalog):  # type: ignore[no-untyped-def]
    return audit.audited(catalog, "restore.json", "json_backup_x", initiator="alice")
