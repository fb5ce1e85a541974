"""The point-in-time recovery drill on a real archiving primary.

One primary (archive_timeout 1 s) serves both tests: a drill that recovers the newest base backup
plus WAL to latest in a scratch cluster, judges row counts, measures RPO and RTO and leaves
nothing behind; and a drill killed while its scratch server runs, cleaned up by the sweeper.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from lifeos_backup.core.settings import Settings, get_settings
from lifeos_backup.jobs.backups import create_backup, verify_backup
from lifeos_backup.jobs.leftovers import sweep
from lifeos_backup.kinds.basebackup.drill import SCRATCH_RE, start_ticks
from lifeos_backup.monitoring import records
from lifeos_backup.monitoring.drill import kinds_to_drill, run_drill
from lifeos_backup.monitoring.status import build_status
from lifeos_backup.storage.catalog import Catalog, open_catalog
from tests.support.pitr import ArchivingCluster, start_archiving_cluster

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def archiving() -> Iterator[ArchivingCluster]:
    cluster = start_archiving_cluster(archive_timeout=1)
    yield cluster
    cluster.stop()


@pytest.fixture
def settings(
    archiving: ArchivingCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    for key in [k for k in os.environ if k.startswith("LIFEOS_")]:
        monkeypatch.delenv(key)
    drills = archiving.base / f"drills-{tmp_path.name}"  # the server's OS user can enter it
    values = {
        "LIFEOS_BACKUP_ROOT": str(tmp_path / "backups"),
        "LIFEOS_WAL_ARCHIVE_DIR": str(archiving.archive),
        "LIFEOS_DATABASE_URL": archiving.cluster.url(),
        "LIFEOS_PG_BIN_DIR": str(archiving.cluster.bindir),
        "LIFEOS_DRILL_PITR_DIR": str(drills),
        "LIFEOS_DRILL_PITR_WAL_WAIT": "60",
        "LIFEOS_DRILL_PITR_WAL_COMMAND": archiving.wal_command,
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture
def catalog(settings: Settings) -> Catalog:
    return open_catalog(settings.effective_catalog_url)


def sql(url: str, query: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query)
        return cur.fetchall() if cur.description else []


def wait_for(what: str, check: Callable[[], object], timeout: float = 120) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def base_backup(settings: Settings, catalog: Catalog) -> str:
    manifest = create_backup("basebackup", settings, catalog, reason="test")
    verify_backup(manifest.backup_id, settings, catalog)
    return manifest.backup_id


def postmasters_of(folder: Path) -> list[int]:
    """Live postmasters whose data directory lies under `folder`."""
    found = []
    for pid_file in folder.glob("*/data/postmaster.pid"):
        pid = int(pid_file.read_text().split()[0])
        if start_ticks(pid) is not None:
            found.append(pid)
    return found


def test_pitr_drill_recovers_to_latest_judges_counts_and_leaves_nothing(
    archiving: ArchivingCluster, settings: Settings, catalog: Catalog
) -> None:
    url = archiving.cluster.url()
    sql(url, "CREATE TABLE quiet (id int PRIMARY KEY); CREATE TABLE busy (id int)")
    sql(url, "INSERT INTO quiet SELECT generate_series(1, 7)")
    backup_id = base_backup(settings, catalog)
    sql(url, "INSERT INTO quiet SELECT generate_series(8, 12)")  # only in the WAL after it
    sql(url, "INSERT INTO busy SELECT generate_series(1, 3)")
    assert "basebackup" not in kinds_to_drill(catalog)  # scheduled on its own

    result = run_drill(settings, catalog, "basebackup")

    assert result.passed, result.error
    assert result.backup_id == backup_id
    details = result.details
    assert result.restore_s is not None and result.restore_s > 0
    assert details["counts_judged"] is True
    verdicts = {row["table"]: row for row in details["tables"]}
    assert verdicts["public.quiet"]["recovered"] == 12
    assert verdicts["public.quiet"]["verdict"] == "equal"
    assert verdicts["public.busy"]["recovered"] == 3
    assert isinstance(details["rpo_s"], float) and details["rpo_s"] >= 0
    assert details["rpo_basis"]
    scratch = Path(details["scratch"])
    assert SCRATCH_RE.match(scratch.name) and not scratch.exists()
    assert postmasters_of(scratch.parent) == []
    log = (result.report_dir / "drill.log").read_text()
    assert "recovery point" in log and "stopped and removed the scratch cluster" in log

    status = build_status(settings, catalog)
    row = next(k for k in status["kinds"] if k["kind"] == "basebackup")
    assert row["rto_s"] == result.restore_s
    assert row["drill_rpo_s"] == details["rpo_s"]
    assert row["last_drill"]["status"] == records.PASSED


def switch_and_wait(url: str) -> str:
    """Close the current segment and wait until the archiver has stored it."""
    sql(url, "SELECT pg_logical_emit_message(false, 'lifeos-test', 'switch')")
    ((segment,),) = sql(url, "SELECT pg_walfile_name(pg_switch_wal() - 1)")

    def archived() -> bool:
        ((last,),) = sql(url, "SELECT last_archived_wal FROM pg_stat_archiver")
        return last is not None and str(last) >= str(segment)

    wait_for(f"segment {segment} archived", archived, timeout=60)
    return str(segment)


def test_a_hole_in_the_archive_fails_the_pitr_drill(
    archiving: ArchivingCluster, settings: Settings, catalog: Catalog
) -> None:
    url = archiving.cluster.url()
    sql(url, "CREATE TABLE IF NOT EXISTS later (id int)")
    base_backup(settings, catalog)
    sql(url, "INSERT INTO later SELECT generate_series(1, 4)")
    lost = switch_and_wait(url)
    sql(url, "INSERT INTO later SELECT generate_series(5, 8)")
    switch_and_wait(url)
    (archiving.archive / f"{lost}.zst").unlink()  # replay stops there, before the drill began

    result = run_drill(settings, catalog, "basebackup")

    assert not result.passed
    assert result.error is not None and "a segment is missing or unreadable" in result.error
    assert not Path(result.details["scratch"]).exists()


def test_a_killed_pitr_drill_leaves_nothing_after_the_sweeper(
    archiving: ArchivingCluster, settings: Settings, catalog: Catalog
) -> None:
    base_backup(settings, catalog)
    root = Path(str(settings.drill_pitr_dir))
    # The drill runs in its own process and hangs once its scratch server is up, as a worker
    # killed mid-drill would leave it.
    script = (
        "import time\n"
        "import lifeos_backup.kinds.basebackup.drill as d\n"
        "from lifeos_backup.core.settings import get_settings\n"
        "from lifeos_backup.storage.catalog import open_catalog\n"
        "from lifeos_backup.monitoring.drill import run_drill\n"
        "def hang(*args, **kwargs):\n"
        "    time.sleep(600)\n"
        "d.connect = hang\n"
        "s = get_settings()\n"
        "run_drill(s, open_catalog(s.effective_catalog_url), 'basebackup')\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.DEVNULL)
    try:
        postmaster = wait_for("the scratch server", lambda: postmasters_of(root))
        assert isinstance(postmaster, list)
        scratch = next(p for p in root.iterdir() if SCRATCH_RE.match(p.name))
        assert sweep(settings, catalog, None) == [] and scratch.exists()  # its drill is alive
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)

    sweep(settings, catalog, None)

    assert not scratch.exists()
    wait_for("the scratch server to stop", lambda: postmasters_of(root) == [] and all(
        start_ticks(pid) is None for pid in postmaster), timeout=30)  # fmt: skip
    assert records.fail_stale(catalog, "basebackup")  # the killed drill's row, marked failed


def test_drill_command_runs_the_pitr_drill_and_status_shows_its_rpo(
    archiving: ArchivingCluster, settings: Settings, catalog: Catalog
) -> None:
    base_backup(settings, catalog)
    exe = Path(sys.executable).parent / "lifeos-backup"
    env = {**os.environ, "COLUMNS": "200", "LIFEOS_DRILL_PITR_WAL_WAIT": "1"}
    done = subprocess.run(
        [str(exe), "drill", "--kind", "basebackup", "--json"], env=env, capture_output=True,
        text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert '"kind": "basebackup"' in done.stdout and '"status": "passed"' in done.stdout
    shown = subprocess.run(
        [str(exe), "status"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    row = next(line for line in shown.stdout.splitlines() if "basebackup" in line)
    assert "drill" in row and "(WAL)" in row, shown.stdout
