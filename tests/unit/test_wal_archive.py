"""The WAL archive hot path: push/fetch semantics and exit codes, both implementations, names."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lifeos_backup.pitr.health import wal_archive_status
from lifeos_backup.pitr.retention import prunable, prune_wal
from lifeos_backup.settings import Settings
from lifeos_backup.wal import archive as wal
from lifeos_backup.wal.cli import EXIT_ABORT_RECOVERY, EXIT_MISSING, run_fetch, run_push
from lifeos_backup.wal.names import (
    BadWalName,
    check_name,
    format_lsn,
    parse_lsn,
    segment_of_lsn,
    segment_range,
)

REPO = Path(__file__).resolve().parents[2]
SH_PORT = REPO / "scripts" / "lifeos-wal.sh"
SEG = "000000010000000A000000FF"
MB16 = 16 * 1024 * 1024


def make_segment(folder: Path, name: str = SEG, seed: int = 1, size: int = 1 << 20) -> Path:
    """A fake WAL file: mostly zeros with some varied bytes, like a lightly used segment."""
    folder.mkdir(parents=True, exist_ok=True)
    data = bytearray(size)
    data[: 64 * 1024] = bytes((i * seed) % 251 for i in range(64 * 1024))
    path = folder / name
    path.write_bytes(bytes(data))
    return path


def lifeos_wal(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lifeos_backup.wal", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )


# --------------------------------------------------------------------------- push


@pytest.mark.parametrize("force_cli", [False, True], ids=["zstandard", "zstd-command"])
def test_push_then_fetch_round_trips(tmp_path: Path, force_cli: bool) -> None:
    src = make_segment(tmp_path / "pg_wal")
    archive = tmp_path / "archive"
    pushed = wal.push(src, archive, force_cli=force_cli)
    assert pushed.stored and pushed.size == src.stat().st_size
    stored = archive / f"{SEG}.zst"
    assert stored.stat().st_mode & 0o777 == wal.FILE_MODE  # not world-readable
    assert pushed.compressed < pushed.size / 4
    out = tmp_path / "restored"
    assert wal.fetch(SEG, out, archive, force_cli=force_cli) == src.stat().st_size
    assert out.read_bytes() == src.read_bytes()
    assert not list(archive.glob(".tmp-*")) and not list(tmp_path.glob(".restored*"))


def test_plain_zstd_reads_an_archived_segment(tmp_path: Path) -> None:
    src = make_segment(tmp_path / "pg_wal")
    wal.push(src, tmp_path / "archive")
    done = subprocess.run(
        ["zstd", "-q", "-d", "-c", str(tmp_path / "archive" / f"{SEG}.zst")],
        capture_output=True,
        check=True,
    )
    assert done.stdout == src.read_bytes()


def test_pushing_the_same_segment_twice_succeeds(tmp_path: Path) -> None:
    src = make_segment(tmp_path / "pg_wal")
    archive = tmp_path / "archive"
    assert run_push(str(src), str(archive)) == 0
    before = (archive / f"{SEG}.zst").stat()
    assert run_push(str(src), str(archive)) == 0
    after = (archive / f"{SEG}.zst").stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    status = wal.read_status(archive)
    assert status["last_push"]["name"] == SEG and status["last_push"]["stored"] is False
    assert status.get("failures_total", 0) == 0


def test_pushing_different_content_under_an_archived_name_fails_loudly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "archive"
    first = make_segment(tmp_path / "a", seed=1)
    other = make_segment(tmp_path / "b", seed=2)
    assert run_push(str(first), str(archive)) == 0
    original = (archive / f"{SEG}.zst").read_bytes()
    assert run_push(str(other), str(archive)) == 1
    said = capsys.readouterr().err
    assert "already archived with different content" in said and SEG in said
    assert (archive / f"{SEG}.zst").read_bytes() == original  # never overwritten
    status = wal.read_status(archive)
    assert status["failures_total"] == 1 and status["consecutive_failures"] == 1
    assert "different content" in status["last_failure"]["error"]
    assert run_push(str(first), str(archive)) == 0
    assert wal.read_status(archive)["consecutive_failures"] == 0


def test_a_concurrent_push_that_loses_the_race_compares_instead_of_replacing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = tmp_path / "archive"
    src = make_segment(tmp_path / "pg_wal", seed=1)
    rival = make_segment(tmp_path / "rival", seed=3)
    real_link = os.link

    def rival_wins(tmp: str, dest: str) -> None:
        monkeypatch.setattr(wal.os, "link", real_link)
        wal.push(rival, archive)  # lands first, under the same name
        real_link(tmp, dest)

    monkeypatch.setattr(wal.os, "link", rival_wins)
    with pytest.raises(wal.ArchiveConflict):
        wal.push(src, archive)
    monkeypatch.undo()
    assert wal.header_of(archive / f"{SEG}.zst") == wal._hash_file(rival)
    assert not list(archive.glob(".tmp-*"))


@pytest.mark.parametrize("name", ["../../etc/passwd", "000000010000000A000000FF.zst", "x"])
def test_names_postgres_never_uses_are_refused(name: str) -> None:
    with pytest.raises(BadWalName):
        check_name(name)


def test_the_archive_path_must_be_absolute(tmp_path: Path) -> None:
    src = make_segment(tmp_path / "pg_wal")
    done = lifeos_wal("push", str(src), env={"LIFEOS_WAL_ARCHIVE_DIR": "relative/wal"})
    assert done.returncode == 1 and "must be absolute" in done.stderr
    unset = {"LIFEOS_WAL_ARCHIVE_DIR": "", "LIFEOS_BACKUP_ROOT": ""}
    done = lifeos_wal("push", str(src), env=unset)
    assert done.returncode == 1 and "no WAL archive configured" in done.stderr


# --------------------------------------------------------------------------- fetch


@pytest.mark.parametrize("name", [SEG, "00000002.history", f"{SEG}.partial"])
def test_fetching_a_missing_file_exits_1_without_a_word(tmp_path: Path, name: str) -> None:
    archive = tmp_path / "archive"
    archive.mkdir()
    done = lifeos_wal("fetch", name, str(tmp_path / "RECOVERYXLOG"), "--archive-dir", str(archive))
    assert (done.returncode, done.stdout, done.stderr) == (EXIT_MISSING, "", "")
    assert not (tmp_path / "RECOVERYXLOG").exists()


def test_lifeos_backup_wal_fetch_answers_fast_with_the_same_codes(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    archive.mkdir()
    exe = Path(sys.executable).parent / "lifeos-backup"
    done = subprocess.run(
        [str(exe), "wal-fetch", SEG, str(tmp_path / "x"), "--archive-dir", str(archive)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (EXIT_MISSING, "")


@pytest.mark.parametrize("force_cli", [False, True], ids=["zstandard", "zstd-command"])
def test_a_damaged_archived_segment_aborts_recovery(
    tmp_path: Path,
    force_cli: bool,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    archive = tmp_path / "archive"
    wal.push(make_segment(tmp_path / "pg_wal"), archive)
    stored = archive / f"{SEG}.zst"
    data = bytearray(stored.read_bytes())
    data[wal.HEADER_LEN + 200] ^= 0xFF
    stored.write_bytes(bytes(data))
    if force_cli:
        monkeypatch.setattr(wal, "_zstd", None)
    dest = tmp_path / "RECOVERYXLOG"
    assert run_fetch(SEG, str(dest), str(archive)) == EXIT_ABORT_RECOVERY
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and SEG in said[0]
    assert not dest.exists() and not list(tmp_path.glob(".RECOVERYXLOG*"))


def test_an_unreachable_archive_aborts_recovery(tmp_path: Path) -> None:
    done = lifeos_wal("fetch", SEG, str(tmp_path / "x"), "--archive-dir", str(tmp_path / "gone"))
    assert done.returncode == EXIT_ABORT_RECOVERY and "not reachable" in done.stderr


# --------------------------------------------------------------------------- the sh port


def sh(*args: str, archive: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(SH_PORT), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "LIFEOS_WAL_ARCHIVE_DIR": str(archive)},
        check=False,
    )


def test_sh_port_and_python_read_each_others_archives(tmp_path: Path) -> None:
    src = make_segment(tmp_path / "pg_wal")
    by_sh, by_py = tmp_path / "by-sh", tmp_path / "by-py"
    assert sh("push", str(src), archive=by_sh).returncode == 0
    wal.push(src, by_py)
    assert wal.header_of(by_sh / f"{SEG}.zst") == wal.header_of(by_py / f"{SEG}.zst")
    wal.fetch(SEG, tmp_path / "from-sh", by_sh)
    assert (tmp_path / "from-sh").read_bytes() == src.read_bytes()
    assert sh("fetch", SEG, str(tmp_path / "from-py"), archive=by_py).returncode == 0
    assert (tmp_path / "from-py").read_bytes() == src.read_bytes()


def test_sh_port_keeps_the_same_rules(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    src = make_segment(tmp_path / "a", seed=1)
    wal.push(src, archive)
    assert sh("push", str(src), archive=archive).returncode == 0  # identical: success
    clash = sh("push", str(make_segment(tmp_path / "b", seed=2)), archive=archive)
    assert clash.returncode == 1 and "different content" in clash.stderr
    missing = sh("fetch", "00000002.history", str(tmp_path / "h"), archive=archive)
    assert (missing.returncode, missing.stderr) == (1, "")
    stored = archive / f"{SEG}.zst"
    data = bytearray(stored.read_bytes())
    data[-20] ^= 0xFF
    stored.write_bytes(bytes(data))
    damaged = sh("fetch", SEG, str(tmp_path / "d"), archive=archive)
    assert damaged.returncode == EXIT_ABORT_RECOVERY and not (tmp_path / "d").exists()


# --------------------------------------------------------------------------- names, retention


def test_segment_arithmetic_matches_postgres() -> None:
    assert parse_lsn("0/2000028") == 0x2000028 and format_lsn(0x1_0300_0060) == "1/3000060"
    assert segment_of_lsn(parse_lsn("0/2000028"), 1, MB16).name(MB16) == "000000010000000000000002"
    assert segment_of_lsn(parse_lsn("1/0"), 3, MB16).name(MB16) == "000000030000000100000000"
    # 0/FF000000 .. 1/1000000 crosses a log id: ...00FF is followed by 0000000100000000
    names = segment_range("0000000100000000000000FF", parse_lsn("1/1000000"), MB16)
    assert names == ["0000000100000000000000FF", "000000010000000100000000"]
    # a stop exactly on a boundary needs nothing of the next segment
    assert segment_range("000000010000000000000002", 0x3000000, MB16) == [
        "000000010000000000000002"
    ]


def test_prunable_spares_history_and_everything_from_the_cutoff() -> None:
    names = [
        "000000010000000000000001",
        "000000010000000000000002.00000028.backup",
        "000000010000000000000003",
        "000000010000000000000004",
        "000000020000000000000004.partial",
        "00000002.history",
        "000000020000000000000005",
    ]
    cutoff = "000000020000000000000004"
    assert prunable(names, cutoff) == [
        "000000010000000000000001",
        "000000010000000000000002.00000028.backup",
        "000000010000000000000003",
    ]


def test_prune_wal_removes_files_not_the_folder_or_status(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    for number in range(1, 5):
        wal.push(make_segment(tmp_path / "pg", f"0000000100000000000000{number:02X}"), archive)
    wal.record(archive, failure="x")
    removed = prune_wal(archive, "000000010000000000000003", dry_run=True)
    assert len(list(archive.glob("*.zst"))) == 4  # dry run
    assert prune_wal(archive, "000000010000000000000003") == removed
    assert sorted(p.name for p in archive.glob("*.zst")) == [
        "000000010000000000000003.zst",
        "000000010000000000000004.zst",
    ]
    assert (archive / wal.STATUS_FILE).exists()


# --------------------------------------------------------------------------- health


def test_archive_status_reports_age_and_failures(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    settings = Settings(backup_root=tmp_path, wal_archive_dir=archive)  # type: ignore[call-arg]
    assert wal_archive_status(settings)["exists"] is False
    for number in (1, 2):
        wal.push(make_segment(tmp_path / "pg", f"00000001000000000000000{number}"), archive)
    wal.push(make_segment(tmp_path / "pg", "00000002.history", size=40), archive)
    wal.record(archive, failure="lifeos-wal push x: disk full")
    later = datetime.now(UTC) + timedelta(seconds=90)
    status = wal_archive_status(settings, now=later)
    assert status["segments"] == 2 and status["history_files"] == 1
    assert status["newest_segment"] == "000000010000000000000002"
    assert 85 <= status["age_seconds"] <= 95
    assert status["failures_total"] == 1 and "disk full" in status["last_failure"]["error"]
    json.dumps(status)  # plain data for `status` and the health check


def test_sh_port_is_posix_sh() -> None:
    if shutil.which("dash") is None:
        pytest.skip("dash not installed")
    assert subprocess.run(["dash", "-n", str(SH_PORT)], check=False).returncode == 0


def test_a_valid_zstd_frame_with_other_content_is_caught_by_the_sha256(tmp_path: Path) -> None:
    """The zstd frame checksum alone would pass: this is what the header's SHA-256 is for."""
    one, two = tmp_path / "one", tmp_path / "two"
    wal.push(make_segment(tmp_path / "a", seed=1), one)
    wal.push(make_segment(tmp_path / "b", seed=2), two)
    spliced = (one / f"{SEG}.zst").read_bytes()[: wal.HEADER_LEN]
    spliced += (two / f"{SEG}.zst").read_bytes()[wal.HEADER_LEN :]
    (one / f"{SEG}.zst").write_bytes(spliced)
    assert run_fetch(SEG, str(tmp_path / "out"), str(one)) == EXIT_ABORT_RECOVERY
    assert not (tmp_path / "out").exists()


def test_restore_pitr_wants_a_time_zone() -> None:
    from lifeos_backup.errors import ConfigError
    from lifeos_backup.pitr.restore import RecoveryTarget, parse_target_time

    with pytest.raises(ConfigError, match="time zone"):
        RecoveryTarget(time=parse_target_time("2026-11-28 12:00:00"))
    with pytest.raises(ConfigError, match="one recovery target"):
        RecoveryTarget(time=parse_target_time("2026-11-28 12:00:00+00"), lsn="0/3000060")
    target = RecoveryTarget(time=parse_target_time("2026-11-28 12:00:00+00"))
    assert target.settings_lines() == ["recovery_target_time = '2026-11-28 12:00:00+00:00'"]
    assert RecoveryTarget(name="before it's gone").settings_lines() == [
        "recovery_target_name = 'before it''s gone'"
    ]
