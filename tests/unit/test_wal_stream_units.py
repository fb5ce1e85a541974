"""The WAL stream's sealer without a server: the spool as pg_receivewal leaves it, sealed into the
archive by the same rules as `lifeos-wal push`; fetch's use of the unfinished segment."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lifeos_backup.core.settings import Settings
from lifeos_backup.monitoring import health
from lifeos_backup.wal import archive as wal
from lifeos_backup.wal import stream
from lifeos_backup.wal.segment import WalError
from lifeos_backup.wal.stream import StreamConfig, receivewal_args, seal_spool, torn_partials

REPO = Path(__file__).resolve().parents[2]
SH_PORT = REPO / "scripts" / "lifeos-wal.sh"
SEG = 1 << 20  # a 1 MiB wal_segment_size keeps the files small
FIRST, SECOND = "000000010000000000000003", "000000010000000000000004"


def wal_file(folder: Path, name: str, seed: int = 1, used: int = 4096, size: int = SEG) -> Path:
    """A segment-sized file: `used` bytes of WAL-like data, zeros after (as pg_receivewal pads)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = bytearray(size)
    data[:used] = bytes((i * seed + 7) % 251 for i in range(used))
    path = folder / name
    path.write_bytes(bytes(data))
    return path


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return tmp_path / "archive"


def test_finished_segments_are_archived_as_pushed_and_leave_the_spool(
    spool: Path, archive: Path, tmp_path: Path
) -> None:
    wal_file(spool, FIRST)
    wal_file(spool, "00000002.history", used=40, size=40)
    by_push = tmp_path / "by-push"
    wal.push(wal_file(tmp_path / "pg_wal", FIRST), by_push)

    report = seal_spool(spool, archive)

    assert sorted(report.sealed) == [FIRST, "00000002.history"]
    assert not (spool / FIRST).exists()
    assert wal.header_of(archive / f"{FIRST}.zst") == wal.header_of(by_push / f"{FIRST}.zst")
    wal.fetch(FIRST, tmp_path / "out", archive)
    assert (tmp_path / "out").read_bytes() == (tmp_path / "pg_wal" / FIRST).read_bytes()
    assert stream.read_status(archive)["last_sealed"]["name"] == FIRST


def test_a_segment_archive_command_delivered_first_is_a_no_op(spool: Path, archive: Path) -> None:
    wal.push(wal_file(spool.parent / "pg_wal", FIRST), archive)
    before = (archive / f"{FIRST}.zst").stat()
    wal_file(spool, FIRST)

    report = seal_spool(spool, archive)

    assert report.same == [FIRST] and report.conflicts == []
    after = (archive / f"{FIRST}.zst").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert not stream.read_status(archive)["conflicts"]


def test_a_segment_arriving_with_different_content_is_an_alarm_never_an_overwrite(
    spool: Path, archive: Path
) -> None:
    wal.push(wal_file(spool.parent / "pg_wal", FIRST, seed=1), archive)
    archived = (archive / f"{FIRST}.zst").read_bytes()
    wal_file(spool, FIRST, seed=2)
    said: list[str] = []

    report = seal_spool(spool, archive, say=said.append)

    assert report.conflicts == [FIRST]
    assert (archive / f"{FIRST}.zst").read_bytes() == archived  # never replaced
    kept = list((spool / stream.REJECTED).glob(f"{FIRST}.*[0-9]"))
    assert len(kept) == 1 and not (spool / FIRST).exists()  # the streamed copy is kept aside
    assert said and said[0].startswith("ALARM WAL stream:") and "different content" in said[0]
    (conflict,) = stream.read_status(archive)["conflicts"]
    assert conflict["name"] == FIRST and conflict["kept"] == str(kept[0])

    seal_spool(spool, archive)  # a later pass keeps the alarm while the kept copy is there
    assert len(stream.read_status(archive)["conflicts"]) == 1
    kept[0].unlink()  # the operator looked and removed it
    seal_spool(spool, archive)
    assert stream.read_status(archive)["conflicts"] == []


def test_a_half_written_segment_in_the_spool_is_never_archived(spool: Path, archive: Path) -> None:
    wal_file(spool, FIRST, size=SEG // 2 + 100)  # no segment has this size

    report = seal_spool(spool, archive)

    assert report.rejected == [FIRST] and not (archive / f"{FIRST}.zst").exists()
    assert stream.read_status(archive)["conflicts"][0]["name"] == FIRST
    assert list((spool / stream.REJECTED).glob(f"{FIRST}.*.why"))


def test_hidden_and_foreign_files_in_the_spool_are_left_alone(spool: Path, archive: Path) -> None:
    wal_file(spool, ".tmp-something")
    wal_file(spool, "notes.txt")
    assert seal_spool(spool, archive).sealed == []
    assert (spool / ".tmp-something").exists() and (spool / "notes.txt").exists()


def test_the_unfinished_segment_is_kept_newest_first_and_served_under_its_full_name(
    spool: Path, archive: Path, tmp_path: Path
) -> None:
    partial = wal_file(spool, f"{SECOND}.partial", used=1000)
    memo: stream.Memo = {}
    assert seal_spool(spool, archive, memo=memo).partial == f"{SECOND}.partial"
    assert seal_spool(spool, archive, memo=memo).partial is None  # unchanged: not rewritten

    wal_file(spool, f"{SECOND}.partial", used=3000)  # pg_receivewal wrote more
    os.utime(partial, ns=(time_ns := partial.stat().st_mtime_ns + 10**6, time_ns))
    assert seal_spool(spool, archive, memo=memo).partial == f"{SECOND}.partial"
    assert not [p for p in archive.iterdir() if p.name.startswith(wal.TEMP_PREFIX)]

    wal.fetch(SECOND, tmp_path / "restored", archive)  # PostgreSQL asks for the full name
    assert (tmp_path / "restored").read_bytes() == partial.read_bytes()
    (tmp_path / "by-sh").unlink(missing_ok=True)
    done = subprocess.run(
        ["sh", str(SH_PORT), "fetch", SECOND, str(tmp_path / "by-sh")],
        env={**os.environ, "LIFEOS_WAL_ARCHIVE_DIR": str(archive)}, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and (tmp_path / "by-sh").read_bytes() == partial.read_bytes()

    # The segment completes: the finished copy supersedes the unfinished one.
    os.rename(partial, spool / SECOND)
    seal_spool(spool, archive, memo=memo)
    assert (archive / f"{SECOND}.zst").exists()
    assert not wal.partial_path(archive, SECOND).exists()
    with pytest.raises(wal.SegmentMissing):
        wal.fetch("000000010000000000000005", tmp_path / "next", archive)


def test_a_finished_segment_wins_over_an_unfinished_copy(archive: Path, tmp_path: Path) -> None:
    short = wal_file(tmp_path / "s", f"{FIRST}.partial", used=100)
    wal.store_partial(short, archive)
    full = wal.push(wal_file(tmp_path / "f", FIRST, used=5000), archive)
    wal.fetch(FIRST, tmp_path / "out", archive)
    assert full.stored and (tmp_path / "out").read_bytes() == (tmp_path / "f" / FIRST).read_bytes()


def test_a_partial_torn_while_zero_filled_is_moved_aside(spool: Path) -> None:
    wal_file(spool, f"{FIRST}.partial", used=0, size=8192)  # pg_receivewal refuses this
    wal_file(spool, f"{SECOND}.partial")
    assert torn_partials(spool) == [f"{FIRST}.partial"]
    said: list[str] = []
    cfg = StreamConfig("/nonexistent/pg_receivewal", "host=x", spool, spool / "a", "slot_1")
    with pytest.raises(OSError):
        stream.start_receiver(cfg, stream.Receiver(), said.append)
    assert not (spool / f"{FIRST}.partial").exists() and (spool / f"{SECOND}.partial").exists()
    assert "torn" in said[0] and list((spool / stream.REJECTED).glob(f"{FIRST}.partial.*"))


def test_receivewal_arguments_hold_no_password_and_name_the_slot(tmp_path: Path) -> None:
    cfg = StreamConfig(
        "/usr/bin/pg_receivewal", "host=db user=u application_name=s1", tmp_path, tmp_path,
        "s1", synchronous=True, env={"PGPASSWORD": "sekrit-pw"},
    )  # fmt: skip
    args = receivewal_args(cfg)
    assert "sekrit-pw" not in " ".join(args + stream.create_slot_args(cfg))
    assert args[3:5] == ["--slot", "s1"] and "--synchronous" in args and "--no-loop" in args
    assert "--synchronous" not in receivewal_args(StreamConfig("p", "c", tmp_path, tmp_path, "s1"))
    with pytest.raises(WalError, match="not a replication slot name"):
        StreamConfig("p", "c", tmp_path, tmp_path, "Bad-Name")


def test_a_receiver_that_keeps_dying_is_restarted_later_each_time() -> None:
    receiver = stream.Receiver()
    delays = [receiver.failed(100.0) for _ in range(7)]
    assert delays == [1, 2, 4, 8, 16, 30, 30]


def _settings(tmp_path: Path, **extra: object) -> Settings:
    values: dict[str, object] = {"wal_stream": True, **extra}
    return Settings(
        backup_root=tmp_path / "b", wal_archive_dir=tmp_path / "archive",
        database_url="postgresql://u@127.0.0.1:1/db", **values,
    )  # type: ignore[arg-type]  # fmt: skip


def test_health_reports_a_stream_that_is_down_behind_or_in_conflict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lifeos_backup.kinds.basebackup import streaming

    now = datetime.now(UTC)
    archive = tmp_path / "archive"
    stream.update_status(
        archive,
        receiver={"state": "down", "since": (now - timedelta(seconds=90)).isoformat()},
        conflicts=[{"name": FIRST, "at": "t", "kept": "/k", "detail": "different content"}],
    )
    down = streaming.SlotStatus("lifeos_backup", True, active=False, lag_bytes=2 << 30,
                                wal_status="extended")  # fmt: skip
    monkeypatch.setattr(streaming, "slot_status", lambda _s: down)
    found = {c.name: c for c in health.check_stream(_settings(tmp_path), now)}
    assert set(found) == {
        health.WAL_STREAM_CONFLICT, health.WAL_STREAM_DOWN, health.WAL_SLOT_LAG
    }
    assert found[health.WAL_STREAM_DOWN].severity == health.CRITICAL
    assert "down for 90 s" in found[health.WAL_STREAM_DOWN].detail

    fine = streaming.SlotStatus("lifeos_backup", True, active=True, state="streaming",
                                lag_bytes=1000, lag_seconds=0.2, wal_status="reserved")  # fmt: skip
    monkeypatch.setattr(streaming, "slot_status", lambda _s: fine)
    stream.update_status(archive, conflicts=[], receiver={"state": "running", "since": "x"})
    assert health.check_stream(_settings(tmp_path), now) == []
    lost = streaming.SlotStatus("lifeos_backup", True, active=True, state="streaming",
                                lag_bytes=10, lag_seconds=0, wal_status="lost")  # fmt: skip
    monkeypatch.setattr(streaming, "slot_status", lambda _s: lost)
    assert [c.name for c in health.check_stream(_settings(tmp_path), now)] == [
        health.WAL_SLOT_LOST
    ]
    assert health.check_stream(_settings(tmp_path, wal_stream=False), now) == []


def test_health_alerts_when_the_primary_cannot_be_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lifeos_backup.kinds.basebackup import streaming

    def refuse(_settings: Settings) -> None:
        raise OSError("connection refused")

    monkeypatch.setattr(streaming, "slot_status", refuse)
    (found,) = health.check_stream(_settings(tmp_path), datetime.now(UTC))
    assert found.name == health.WAL_STREAM_DOWN and "connection refused" in found.detail


def test_a_lag_limit_that_is_not_a_size_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="LIFEOS_HEALTH_WAL_SLOT_MAX_LAG_BYTES is not a size"):
        health.parse_bytes("ten", "LIFEOS_HEALTH_WAL_SLOT_MAX_LAG_BYTES")
    assert health.parse_bytes("1GiB", "X") == 1 << 30
