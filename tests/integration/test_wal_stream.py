"""The WAL stream end to end: a real pg_receivewal on a real primary, sealed into the archive.

A primary archiving through `lifeos-wal push` (archive_timeout 60: within a test only the stream
delivers the last segment) streams to lifeos_backup.wal.stream.run in a thread. The primary is
SIGKILLed (postmaster and every backend at once) while clients commit, then restored to "latest"
from a base backup plus the archive the stream filled: in synchronous mode every commit a client
saw acknowledged is there; in asynchronous mode only commits of the last moment may be missing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from lifeos_backup.core.settings import Settings, get_settings
from lifeos_backup.jobs.backups import create_backup, verify_backup
from lifeos_backup.kinds.basebackup.restore import RecoveryTarget, restore_pitr
from lifeos_backup.kinds.basebackup.streaming import slot_status, stream_config
from lifeos_backup.monitoring.health import WAL_SLOT_LAG, WAL_STREAM_DOWN, check_stream
from lifeos_backup.storage.catalog import Catalog, open_catalog
from lifeos_backup.storage.catalog.store import VERIFIED
from lifeos_backup.wal import stream as wal_stream
from lifeos_backup.wal.archive import SUFFIX
from tests.support.pitr import ArchivingCluster, start_archiving_cluster, stop_restored
from tests.support.services import free_port

pytestmark = pytest.mark.integration

SLOT = "lifeos_test_stream"
ASYNC_MARGIN = 3.0  # seconds: asynchronous mode may lose only commits acknowledged this late
LOAD_SECONDS = 1.5
CLIENTS = 3


def sql(url: str, query: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params or None)
        return cur.fetchall() if cur.description else []


def wait_for(what: str, check: Callable[[], object], timeout: float = 60) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(psycopg.Error):
            result = check()
            if result:
                return result
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


@dataclass
class Stream:
    """lifeos_backup.wal.stream.run in a thread, with what it said."""

    settings: Settings
    lines: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> None:
        cfg = stream_config(self.settings)
        self.thread = threading.Thread(
            target=wal_stream.run,
            args=(cfg, self.stop.is_set, self.lines.append, self.notices.append),
            kwargs={"poll": 0.2},
            daemon=True,
        )
        self.thread.start()

    def finish(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(60)
            assert not self.thread.is_alive(), "the stream did not stop"

    def status(self) -> dict[str, object]:
        return wal_stream.read_status(Path(self.settings.wal_archive_dir or ""))

    def receiver_pid(self) -> int | None:
        receiver = self.status().get("receiver") or {}
        assert isinstance(receiver, dict)
        pid = receiver.get("pid") if receiver.get("state") == "running" else None
        return int(pid) if pid else None


def configure(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, archiving: ArchivingCluster, **extra: str
) -> Settings:
    for key in [k for k in os.environ if k.startswith("LIFEOS_")]:
        monkeypatch.delenv(key)
    values = {
        "LIFEOS_BACKUP_ROOT": str(tmp_path / "backups"),
        "LIFEOS_WAL_ARCHIVE_DIR": str(archiving.archive),
        "LIFEOS_DATABASE_URL": archiving.cluster.url(),
        "LIFEOS_PG_BIN_DIR": str(archiving.cluster.bindir),
        "LIFEOS_WAL_STREAM": "1",
        "LIFEOS_WAL_SLOT": SLOT,
        "LIFEOS_WAL_SPOOL_DIR": str(tmp_path / "spool"),
        **extra,
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    return get_settings()


def start_primary(archive_timeout: int = 60) -> ArchivingCluster:
    """An archiving primary whose archive folder hands its group to new files (setgid), so the
    server's OS user can read what the stream (another user) seals into it."""
    archiving = start_archiving_cluster(archive_timeout=archive_timeout)
    archiving.archive.chmod(0o2770)
    return archiving


@pytest.fixture
def archiving() -> Iterator[ArchivingCluster]:
    cluster = start_primary()
    yield cluster
    cluster.stop()
    get_settings.cache_clear()


def streaming(url: str) -> bool:
    rows = sql(url, "SELECT state FROM pg_stat_replication WHERE application_name = %s", SLOT)
    return bool(rows) and rows[0][0] == "streaming"


def take_base_backup(settings: Settings, catalog: Catalog) -> str:
    manifest = create_backup("basebackup", settings, catalog, reason="test")
    verify_backup(manifest.backup_id, settings, catalog)
    assert catalog.get(manifest.backup_id).status == VERIFIED
    return manifest.backup_id


def kill_primary(archiving: ArchivingCluster) -> None:
    """SIGKILL the postmaster and every process it started, at once: the machine is gone."""
    pid = int((archiving.cluster.datadir / "postmaster.pid").read_text().split()[0])
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    children.append(int(entry.name))
    for victim in (pid, *children):
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)


@dataclass
class Load:
    """Clients inserting one row per transaction; `acked` holds (id, when) of every commit the
    server acknowledged to them."""

    url: str
    synchronous: bool
    acked: list[tuple[int, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    next_id: int = 0

    def _take(self) -> int:
        with self.lock:
            self.next_id += 1
            return self.next_id

    def client(self) -> None:
        with contextlib.suppress(psycopg.Error), psycopg.connect(self.url, autocommit=True) as c:
            # The test cluster runs with synchronous_commit=off; the application's sessions
            # choose: on waits for the synchronous standby (the stream) to flush.
            c.execute(f"SET synchronous_commit = {'on' if self.synchronous else 'local'}")
            while True:
                row = self._take()
                c.execute("INSERT INTO events (id) VALUES (%s)", (row,))
                with self.lock:
                    self.acked.append((row, time.monotonic()))


def lose_primary_under_load(
    archiving: ArchivingCluster, synchronous: bool
) -> tuple[Load, float]:
    """Clients commit for LOAD_SECONDS, then the primary is SIGKILLed; returns the load and the
    moment of the kill."""
    load = Load(archiving.cluster.url(), synchronous)
    clients = [threading.Thread(target=load.client, daemon=True) for _ in range(CLIENTS)]
    for client in clients:
        client.start()
    wait_for("the first commits", lambda: len(load.acked) > 50)
    time.sleep(LOAD_SECONDS)  # the load runs for a while: the kill lands mid-stream
    killed_at = time.monotonic()
    kill_primary(archiving)
    for client in clients:
        client.join(30)
    return load, killed_at


def recover_latest(
    archiving: ArchivingCluster, settings: Settings, catalog: Catalog, name: str
) -> set[int]:
    datadir = archiving.base / "restores" / name
    port = free_port()
    try:
        result = restore_pitr(
            settings, catalog, RecoveryTarget(), datadir, port=port, start=True,
            wal_command=archiving.wal_command, socket_dir=archiving.cluster.socketdir,
            timeout=120,
        )  # fmt: skip
        assert result.started
        url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        return {int(str(r[0])) for r in sql(url, "SELECT id FROM events")}
    finally:
        stop_restored(archiving.cluster, datadir)


@pytest.mark.parametrize("synchronous", [True, False], ids=["synchronous", "asynchronous"])
def test_recovery_to_latest_after_the_primary_is_killed_under_load(
    archiving: ArchivingCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    synchronous: bool,
    capsys: pytest.CaptureFixture[str],
) -> None:
    mode = {"LIFEOS_WAL_SYNCHRONOUS": "1"} if synchronous else {}
    settings = configure(monkeypatch, tmp_path, archiving, **mode)
    catalog = open_catalog(settings.effective_catalog_url)
    url = archiving.cluster.url()
    sql(url, "CREATE TABLE events (id int PRIMARY KEY)")
    take_base_backup(settings, catalog)
    stream = Stream(settings)
    stream.start()
    try:
        wait_for("the stream", lambda: streaming(url))
        if synchronous:
            sql(url, f"ALTER SYSTEM SET synchronous_standby_names = '{SLOT}'")
            sql(url, "SELECT pg_reload_conf()")
            wait_for("a synchronous standby", lambda: slot_status(settings).sync_state == "sync")
        load, killed_at = lose_primary_under_load(archiving, synchronous)
        wait_for("pg_receivewal to notice", lambda: stream.receiver_pid() is None)
    finally:
        stream.finish()  # stops the receiver and seals the spool a last time

    # The last WAL exists only as the stream's unfinished segment: archive_command never saw it.
    partials = [p.name for p in archiving.archive.glob(f"*.partial{SUFFIX}")]
    assert partials and not (archiving.archive / partials[-1].replace(".partial", "")).exists()

    present = recover_latest(archiving, settings, catalog, "latest")

    lost = [(row, when) for row, when in load.acked if row not in present]
    window = max((killed_at - when for _, when in lost), default=0.0)
    with capsys.disabled():
        print(
            f"\n{'synchronous' if synchronous else 'asynchronous'}: {len(load.acked)} commits "
            f"acknowledged in {LOAD_SECONDS:g}+ s by {CLIENTS} clients, {len(present)} rows "
            f"recovered, {len(lost)} acknowledged commits lost (oldest {window:.3f} s before "
            "the kill)"
        )
    assert len(load.acked) > 100
    if synchronous:
        assert lost == [], f"{len(lost)} acknowledged commits lost: {lost[:5]}"
    else:
        assert window <= ASYNC_MARGIN, f"lost commits from {window:.2f} s before the kill"
    assert present <= set(range(1, load.next_id + 1))  # nothing that was never sent
    assert not wal_stream.read_status(archiving.archive).get("conflicts")


def test_the_stream_survives_a_killed_receiver_and_a_database_restart(
    archiving: ArchivingCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = configure(monkeypatch, tmp_path, archiving)
    monkeypatch.setattr(wal_stream, "SETTLED", 0.5)  # "running" told after 0.5 s, not 5
    url = archiving.cluster.url()
    sql(url, "CREATE TABLE t (x int)")
    stream = Stream(settings)
    stream.start()
    try:
        wait_for("the stream", lambda: streaming(url))
        assert check_stream(settings, _now()) == []

        first = stream.receiver_pid()
        assert first is not None
        os.kill(first, signal.SIGKILL)
        wait_for("a new pg_receivewal", lambda: stream.receiver_pid() not in (None, first))
        wait_for("the stream again", lambda: streaming(url))
        assert any("killed by SIGKILL" in line for line in stream.lines), stream.lines
        assert "down" in stream.notices and "running" in wait_for(
            "the all-clear", lambda: stream.notices[-1] == "running" and stream.notices
        )

        archiving.cluster.restart()  # every connection ends: pg_receivewal exits, is restarted
        wait_for("the stream after the restart", lambda: streaming(url), timeout=90)

        # Both archive_command and the stream deliver these segments: the same content, no alarm.
        names = []
        for _ in range(3):
            sql(url, "INSERT INTO t VALUES (1)")
            (name,) = sql(url, "SELECT pg_walfile_name(pg_switch_wal())")[0]
            names.append(str(name))
        for name in names:
            wait_for(f"{name} sealed by the stream", lambda n=name: _streamed(stream, n))
        assert not stream.status().get("conflicts")
        assert all((archiving.archive / f"{n}{SUFFIX}").exists() for n in names)
        partial = stream.status().get("partial")
        assert isinstance(partial, dict) and str(partial["name"]).endswith(".partial")
    finally:
        stream.finish()

    stopped = check_stream(settings, _now())
    assert [c.name for c in stopped if c.name != WAL_SLOT_LAG] == [WAL_STREAM_DOWN]
    assert slot_status(settings).exists and not slot_status(settings).streaming

    # What `up` runs as its child (and the compose service): stops cleanly on SIGTERM.
    env = {**os.environ, "NO_COLOR": "1"}
    child = subprocess.Popen(
        [sys.executable, "-m", "lifeos_backup.cli", "wal", "stream"], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_for("`wal stream` streaming", lambda: streaming(url))
    finally:
        child.send_signal(signal.SIGTERM)
        said, _ = child.communicate(timeout=60)
    assert child.returncode == 0, said
    assert "WAL stream (asynchronous) on slot" in said and said.rstrip().endswith("stopped")

    exe = Path(sys.executable).parent / "lifeos-backup"
    shown = subprocess.run([str(exe), "wal", "slot", "status"], env=env, capture_output=True,
                           text=True, timeout=60, check=False)  # fmt: skip
    assert shown.returncode == 0 and f"slot {SLOT}: NOT streaming" in shown.stdout, shown
    dropped = subprocess.run([str(exe), "wal", "slot", "drop"], env=env, capture_output=True,
                             text=True, timeout=60, check=False)  # fmt: skip
    assert dropped.returncode == 0, dropped.stderr
    again = subprocess.run([str(exe), "wal", "slot", "drop"], env=env, capture_output=True,
                           text=True, timeout=60, check=False)  # fmt: skip
    assert again.returncode == 1 and again.stderr.startswith("error: no replication slot")
    assert "Traceback" not in again.stderr


def _streamed(stream: Stream, name: str) -> bool:
    sealed = stream.status().get("last_sealed")
    return isinstance(sealed, dict) and str(sealed.get("name", "")) >= name


def _now():  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    return datetime.now(UTC)
