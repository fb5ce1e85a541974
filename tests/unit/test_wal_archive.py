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

from lifeos_backup.core.settings import Settings
from lifeos_backup.kinds.basebackup.health import wal_archive_status
from lifeos_backup.kinds.basebackup.retention import prunable, prune_wal
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
    from lifeos_backup.core.errors import ConfigError
    from lifeos_backup.kinds.basebackup.restore import RecoveryTarget, parse_target_time

    with pytest.raises(ConfigError, match="time zone"):
        RecoveryTarget(time=parse_target_time("2026-11-28 12:00:00"))
    with pytest.raises(ConfigError, match="one recovery target"):
        RecoveryTarget(time=parse_target_time("2026-11-28 12:00:00+00"), lsn="0/3000060")
    target = RecoveryTarget(time=parse_target_time("2026-11-28 12:00:00+00"))
    assert target.settings_lines() == ["recovery_target_time = '2026-11-28 12:00:00+00:00'"]
    assert RecoveryTarget(name="before it's gone").settings_lines() == [
        "recovery_target_name = 'before it''s gone'"
    ]


# --------------------------------------------------------------------------- sealed (encrypted)


@pytest.fixture(scope="module")
def wal_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(identity file, recipient) of a fresh age key pair."""
    from lifeos_backup.formats.crypto import generate_identity

    identity, recipient = generate_identity()
    path = tmp_path_factory.mktemp("keys") / "wal.key"
    path.write_text(f"# test\n{identity}\n")
    path.chmod(0o600)
    return path, recipient


@pytest.fixture
def sealed_archive(tmp_path: Path, wal_keys: tuple[Path, str]) -> Path:
    """An archive holding SEG sealed for `wal_keys`; the segment itself is in tmp_path/pg_wal."""
    wal.push(make_segment(tmp_path / "pg_wal"), tmp_path / "archive", recipients=wal_keys[1])
    return tmp_path / "archive"


@pytest.mark.parametrize("force_cli", [False, True], ids=["zstandard", "zstd-command"])
def test_sealed_push_then_fetch_round_trips(
    tmp_path: Path, wal_keys: tuple[Path, str], force_cli: bool
) -> None:
    import pyrage
    import zstandard

    key, recipient = wal_keys
    src = make_segment(tmp_path / "pg_wal")
    archive = tmp_path / "archive"
    pushed = wal.push(src, archive, recipients=recipient, force_cli=force_cli)
    stored = archive / f"{SEG}.zst"
    data = stored.read_bytes()
    header = wal.header_of(stored)
    assert pushed.stored and header.sealed and header == wal._hash_file(src)
    assert data[wal.SEALED_HEADER_LEN :].startswith(b"age-encryption.org/v1\n")
    plain_zstd = subprocess.run(["zstd", "-q", "-d", "-c", str(stored)], capture_output=True)
    assert plain_zstd.returncode != 0  # not a plain archive any more
    # the stock age tools read it: the manual recovery docs/pitr.md describes
    them = pyrage.x25519.Identity.from_str(key.read_text().splitlines()[-1])
    frame = pyrage.decrypt(data[wal.SEALED_HEADER_LEN :], [them])
    assert zstandard.ZstdDecompressor().decompressobj().decompress(frame) == src.read_bytes()

    out = tmp_path / "restored"
    assert wal.fetch(SEG, out, archive, force_cli=force_cli, identity_file=key) == len(
        src.read_bytes()
    )
    assert out.read_bytes() == src.read_bytes()
    assert wal.verify_file(stored) == header  # without the key: framing only
    assert wal.verify_file(stored, key) == header


def test_sealed_fetch_without_or_with_a_wrong_key_aborts_recovery(
    tmp_path: Path, wal_keys: tuple[Path, str], sealed_archive: Path
) -> None:
    from lifeos_backup.formats.crypto import generate_identity

    key, archive = wal_keys[0], sealed_archive
    other = tmp_path / "other.key"
    other.write_text(generate_identity()[0] + "\n")
    dest = tmp_path / "RECOVERYXLOG"
    for identity, said in (("", "needs the private key"), (str(other), "no configured identity")):
        env = {"LIFEOS_ENCRYPTION_IDENTITY_FILE": identity}
        done = lifeos_wal("fetch", SEG, str(dest), "--archive-dir", str(archive), env=env)
        assert done.returncode == EXIT_ABORT_RECOVERY, done  # never 1: "missing" would promote
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and SEG in lines[0] and said in lines[0]
        assert not dest.exists() and not list(tmp_path.glob(".RECOVERYXLOG*"))
    done = lifeos_wal(
        "fetch", SEG, str(dest), "--archive-dir", str(archive),
        env={"LIFEOS_ENCRYPTION_IDENTITY_FILE": str(key)},
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (0, "")
    assert dest.read_bytes() == (tmp_path / "pg_wal" / SEG).read_bytes()


def test_a_damaged_sealed_segment_is_caught_with_and_without_the_key(
    tmp_path: Path, wal_keys: tuple[Path, str], sealed_archive: Path
) -> None:
    key, archive = wal_keys[0], sealed_archive
    stored = archive / f"{SEG}.zst"
    good = stored.read_bytes()
    stored.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # one bit of the last sealed chunk
    assert run_fetch(SEG, str(tmp_path / "out"), str(archive)) == EXIT_ABORT_RECOVERY  # no key
    with pytest.raises(wal.CorruptSegment, match="authentication"):
        wal.verify_file(stored, key)
    stored.write_bytes(good[:-10])  # truncated: the key finds it wherever it was cut
    with pytest.raises(wal.CorruptSegment, match="authentication"):
        wal.verify_file(stored, key)
    stored.write_bytes(good[: wal.SEALED_HEADER_LEN + 40])  # the age header cut: found by anyone
    with pytest.raises(wal.CorruptSegment, match="age header is incomplete"):
        wal.verify_file(stored)


def test_sealing_keeps_the_same_segment_same_content_rules(
    tmp_path: Path, wal_keys: tuple[Path, str]
) -> None:
    _key, recipient = wal_keys
    archive = tmp_path / "archive"
    src = make_segment(tmp_path / "a", seed=1)
    wal.push(src, archive, recipients=recipient)
    assert wal.push(src, archive).stored is False  # identical content, now unsealed: success
    assert sh("push", str(src), archive=archive).returncode == 0  # the sh port agrees
    with pytest.raises(wal.ArchiveConflict):
        wal.push(make_segment(tmp_path / "b", seed=2), archive, recipients=recipient)
    assert wal.header_of(archive / f"{SEG}.zst").sealed  # never replaced


def test_a_recipient_that_does_not_parse_fails_the_push(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LIFEOS_ENCRYPTION_RECIPIENTS", "age1notakey")
    archive = tmp_path / "archive"
    assert run_push(str(make_segment(tmp_path / "pg_wal")), str(archive)) == 1
    assert "invalid encryption recipient" in capsys.readouterr().err
    assert not list(archive.glob("*.zst"))  # never archived in the clear instead


def test_only_sealing_loads_cryptography_and_nothing_loads_the_settings(
    tmp_path: Path, wal_keys: tuple[Path, str]
) -> None:
    _key, recipient = wal_keys
    src = make_segment(tmp_path / "pg_wal")
    probe = (
        "import sys; from lifeos_backup.wal.cli import run_push; "
        f"code = run_push({str(src)!r}, sys.argv[1]); "
        "heavy = ('cryptography', 'pydantic', 'lifeos_backup.core.settings', "
        "'lifeos_backup.formats.crypto'); "
        "print(code, *sorted(m for m in heavy if m in sys.modules))"
    )
    for name, recipients, loaded in (("plain", "", "0"), ("sealed", recipient, "0 cryptography")):
        done = subprocess.run(
            [sys.executable, "-c", probe, str(tmp_path / name)],
            capture_output=True, text=True, check=False,
            env={**os.environ, "LIFEOS_ENCRYPTION_RECIPIENTS": recipients},
        )  # fmt: skip
        assert done.stdout.strip() == loaded, done.stderr


def test_sh_port_refuses_to_seal_or_to_open_sealed_files(
    tmp_path: Path, wal_keys: tuple[Path, str]
) -> None:
    _key, recipient = wal_keys
    archive = tmp_path / "archive"
    src = make_segment(tmp_path / "pg_wal")
    refused = subprocess.run(
        ["sh", str(SH_PORT), "push", str(src)], capture_output=True, text=True, check=False,
        env={**os.environ, "LIFEOS_WAL_ARCHIVE_DIR": str(archive),
             "LIFEOS_ENCRYPTION_RECIPIENTS": recipient},
    )  # fmt: skip
    assert refused.returncode == 1 and "cannot encrypt" in refused.stderr
    assert not list(archive.glob("*.zst"))
    wal.push(src, archive, recipients=recipient)
    fetched = sh("fetch", SEG, str(tmp_path / "out"), archive=archive)
    assert fetched.returncode == EXIT_ABORT_RECOVERY and "sealed" in fetched.stderr
    assert not (tmp_path / "out").exists()
