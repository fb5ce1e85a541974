"""JSON archives end to end, without services: write, verify against the manifest, restore safely.

Malicious archives are written with `tarfile` and come with a manifest that matches them exactly
(sizes, hashes, archive checksum), so only the restore's safety checks can stop them.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import tarfile
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
import zstandard

from lifeos_backup.core.errors import TargetNotEmpty, UnsafeArchive, VerificationFailed
from lifeos_backup.core.progress import Progress, ignore
from lifeos_backup.formats.manifest import (
    ArchiveInfo,
    Compression,
    FileEntry,
    Manifest,
    manifest_path,
    read_manifest,
    write_manifest,
)
from lifeos_backup.formats.streams import compressor, decompressor
from lifeos_backup.formats.tarstream import TarReader, TarWriter
from lifeos_backup.kinds.json.backup import SMALL_FILE, ArchiveResult, write_archive
from lifeos_backup.kinds.json.restore import check_archive, restore_archive

NAMES = ["data", "presets", "configs"]
LEVELS = {"zstd": 3, "gzip": 6}
UNICODE_NAME = "Grüße 日本語.json"
T0 = 1_700_000_000

Snapshot = dict[str, tuple[object, ...]]


# -- helpers ------------------------------------------------------------------------------------


def make_app(root: Path) -> Path:
    """A small Life-OS app folder with every kind of entry a JSON backup has to carry."""
    files = {
        "data/tasks.json": b'{"tasks": [1, 2, 3]}\n',
        "data/empty.json": b"",
        f"data/{UNICODE_NAME}": '{"gruß": "ü"}\n'.encode(),
        "data/private.json": b'{"secret": true}\n',
        "data/big.bin": hashlib.sha256(b"big").digest() * (SMALL_FILE // 32 + 40),  # streamed
        "presets/top.json": b"[]\n",
        "presets/nested/deeper/preset.json": b'{"name": "deep"}\n',
        "configs/settings.json": b'{"theme": "dark"}\n',
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.chmod(path, 0o644)
    (root / "configs/empty-dir").mkdir()
    for path in root.rglob("*"):  # modes independent of the umask
        if path.is_dir():
            os.chmod(path, 0o755)
    os.chmod(root / "data/private.json", 0o640)
    os.chmod(root / "presets/nested", 0o750)
    os.symlink("tasks.json", root / "data/tasks-link")
    os.symlink("../presets/nested/deeper/preset.json", root / "data/preset-link")
    for number, path in enumerate(sorted(root.rglob("*"))):
        os.utime(path, (T0 + number, T0 + number), follow_symlinks=False)
    return root


def manifest_for(result: ArchiveResult, archive: Path, algorithm: str, level: int) -> Manifest:
    """The manifest exactly as `backups.create_backup` builds and writes it from a write result,
    read back from disk (its entries streamed from there)."""
    now = datetime(2025, 1, 1, tzinfo=UTC)
    header = Manifest(
        backup_id="json_backup_20250101_000000",
        kind="json",
        created_at=now,
        finished_at=now,
        host="test-host",
        tool_version="test",
        sources=result.sources,
        compression=Compression(algorithm=algorithm, level=level),
        archive=ArchiveInfo(name=archive.name, size=result.size, sha256=result.sha256),
        facts={"skipped": result.skipped} if result.skipped else {},
    )
    mpath = manifest_path(archive, header.backup_id)
    write_manifest(mpath, header, result.entries)
    result.entries.close()
    return read_manifest(mpath)


def snapshot(root: Path) -> Snapshot:
    """Everything a restore must reproduce; mtimes of files only (folders' change as they fill)."""
    out: Snapshot = {".": ("root", stat.S_IMODE(os.lstat(root).st_mode))}
    for path in sorted(root.rglob("*")):
        st = os.lstat(path)
        rel = path.relative_to(root).as_posix()
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("symlink", os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", stat.S_IMODE(st.st_mode))
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            out[rel] = ("file", stat.S_IMODE(st.st_mode), int(st.st_mtime), digest)
    return out


def rewrite(
    archive: Path, manifest: Manifest, out: Path, edit: dict[str, bytes]
) -> tuple[Path, Manifest]:
    """Rebuild the archive with some members' content replaced; the manifest keeps its file list
    and only its archive size/checksum are updated, so the per-member check must catch the edit."""
    raw = io.BytesIO()
    with open(archive, "rb") as handle:
        reader = TarReader(decompressor(handle, manifest.compression.algorithm))
        writer = TarWriter(raw)
        for member in reader:
            data = reader.read_all()
            if member.path in edit:
                data = edit[member.path]
                member = replace(member, size=len(data))
            writer.add(member, data)
        writer.close()
    return recompress(raw.getvalue(), out, manifest)


def recompress(tar_bytes: bytes, out: Path, manifest: Manifest) -> tuple[Path, Manifest]:
    with open(out, "wb") as handle:
        packed = compressor(handle, manifest.compression.algorithm, manifest.compression.level)
        packed.write(tar_bytes)
        packed.close()
    data = out.read_bytes()
    info = ArchiveInfo(name=out.name, size=len(data), sha256=hashlib.sha256(data).hexdigest())
    return out, manifest.model_copy(update={"archive": info})


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_app(tmp_path_factory.mktemp("app"))


@pytest.fixture(scope="module", params=["zstd", "gzip"])
def backup(
    request: pytest.FixtureRequest, app: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Manifest]:
    algorithm: str = request.param
    suffix = {"zstd": ".tar.zst", "gzip": ".tar.gz"}[algorithm]
    archive = tmp_path_factory.mktemp("repo") / f"json_backup_20250101_000000{suffix}"
    reports: list[Progress] = []
    result = write_archive(app, NAMES, archive, algorithm, LEVELS[algorithm], reports.append)
    assert reports[-1].files_done == reports[-1].files_total == 8
    assert archive.stat().st_size == result.size
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == result.sha256
    os.chmod(archive, 0o400)  # tests copy it before damaging it
    return archive, manifest_for(result, archive, algorithm, LEVELS[algorithm])


def copy_of(archive: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / archive.name
    copy.write_bytes(archive.read_bytes())
    return copy


# -- writing and checking -----------------------------------------------------------------------


def test_archive_lists_every_entry_with_hashes(app: Path, backup: tuple[Path, Manifest]) -> None:
    _archive, manifest = backup
    entries = {entry.path: entry for entry in manifest.iter_files()}
    expected_paths = {"data", "presets", "configs"} | {
        path.relative_to(app).as_posix() for path in app.rglob("*")
    }
    assert set(entries) == expected_paths
    assert [e.path for e in manifest.iter_files()][:1] == [
        "data"
    ]  # sorted walk, folder before content
    for rel, entry in entries.items():
        path = app / rel
        st = os.lstat(path)
        assert entry.mode == stat.S_IMODE(st.st_mode), rel
        if entry.type == "file":
            assert entry.size == st.st_size
            assert entry.sha256 == hashlib.sha256(path.read_bytes()).hexdigest(), rel
        elif entry.type == "symlink":
            assert entry.linkname == os.readlink(path)
    assert entries["data/private.json"].mode == 0o640
    assert entries["configs/empty-dir"].type == "dir"
    assert manifest.archive.name.startswith("json_backup_")
    assert [s.name for s in manifest.sources] == NAMES and all(s.present for s in manifest.sources)


def test_check_archive_passes(backup: tuple[Path, Manifest]) -> None:
    archive, manifest = backup
    reports: list[Progress] = []
    check_archive(archive, manifest, reports.append)
    assert reports[-1].files_done == reports[-1].files_total == 8
    assert reports[-1].bytes_done == manifest.archive.size


@pytest.mark.parametrize("where", [0.25, 0.5, 0.75, 1.0])
def test_flipped_archive_byte_fails_verification(
    backup: tuple[Path, Manifest], tmp_path: Path, where: float
) -> None:
    archive, manifest = backup
    damaged = copy_of(archive, tmp_path)
    data = bytearray(damaged.read_bytes())
    data[min(int(len(data) * where), len(data) - 1)] ^= 0x55
    damaged.write_bytes(bytes(data))
    # Which check trips depends on where the byte lands (decompressor, tar header, a member's
    # SHA-256, the archive's); any of them must end in VerificationFailed, nothing else.
    with pytest.raises(VerificationFailed):
        check_archive(damaged, manifest, ignore)


@pytest.mark.parametrize(
    "new_content", [b'{"tasks": [9, 9, 9]}\n', b"{}"], ids=["same-size", "size"]
)
def test_edited_member_fails_verification_naming_it(
    backup: tuple[Path, Manifest], tmp_path: Path, new_content: bytes
) -> None:
    archive, manifest = backup
    edited, new_manifest = rewrite(
        archive, manifest, tmp_path / archive.name, {"data/tasks.json": new_content}
    )
    unchanged, same_manifest = rewrite(archive, manifest, tmp_path / "unchanged", {})
    check_archive(unchanged, same_manifest, ignore)  # the rebuild itself is faithful
    with pytest.raises(VerificationFailed, match=r"^data/tasks\.json (has the wrong SHA|differs)"):
        check_archive(edited, new_manifest, ignore)


def test_manifest_listing_a_missing_file_fails(backup: tuple[Path, Manifest]) -> None:
    archive, manifest = backup
    ghost = FileEntry(path="data/ghost.json", size=2, mode=0o644, sha256="0" * 64)
    bigger = manifest.model_copy(update={"files": [*manifest.iter_files(), ghost]})
    with pytest.raises(VerificationFailed, match="lacks members") as info:
        check_archive(archive, bigger, ignore)
    assert info.value.detail == "1 missing, first: data/ghost.json"


def test_archive_member_missing_from_manifest_fails(backup: tuple[Path, Manifest]) -> None:
    archive, manifest = backup
    fewer = [e for e in manifest.iter_files() if e.path != "presets/top.json"]
    with pytest.raises(VerificationFailed, match="does not list") as info:
        check_archive(archive, manifest.model_copy(update={"files": fewer}), ignore)
    assert info.value.detail.startswith("presets/top.json (where the manifest lists ")


def test_wrong_archive_checksum_fails(backup: tuple[Path, Manifest]) -> None:
    archive, manifest = backup
    info = manifest.archive.model_copy(update={"sha256": "f" * 64})
    with pytest.raises(VerificationFailed, match="does not match its manifest checksum"):
        check_archive(archive, manifest.model_copy(update={"archive": info}), ignore)


# -- restoring ----------------------------------------------------------------------------------


def test_restore_into_empty_dir_reproduces_tree(
    app: Path, backup: tuple[Path, Manifest], tmp_path: Path
) -> None:
    archive, manifest = backup
    target = tmp_path / "restore"
    target.mkdir()
    os.chmod(target, 0o755)
    restored = restore_archive(archive, manifest, target, False, ignore)
    assert restored == 8
    assert sorted(os.listdir(target)) == sorted(NAMES)  # no staging folder left behind
    want, got = snapshot(app), snapshot(target)
    del want["."], got["."]
    assert got == want
    assert got["data/private.json"][1] == 0o640
    assert got["configs/empty-dir"] == ("dir", 0o755)
    assert got["data/preset-link"] == ("symlink", "../presets/nested/deeper/preset.json")
    assert (target / "data/preset-link").read_bytes() == b'{"name": "deep"}\n'
    assert stat.S_IMODE(target.stat().st_mode) == 0o755  # an existing target keeps its mode


def test_restore_creates_missing_target(backup: tuple[Path, Manifest], tmp_path: Path) -> None:
    archive, manifest = backup
    target = tmp_path / "new" / "target"
    assert restore_archive(archive, manifest, target, False, ignore) == 8
    assert stat.S_IMODE(target.stat().st_mode) == 0o700  # one it creates is private
    assert (target / "data" / UNICODE_NAME).read_bytes() == '{"gruß": "ü"}\n'.encode()


def _occupied_target(root: Path) -> Path:
    target = root / "target"
    (target / "data").mkdir(parents=True)
    (target / "data" / "tasks.json").write_bytes(b"old tasks")
    (target / "data" / "stale.json").write_bytes(b"only in the old tree")
    (target / "keep.txt").write_bytes(b"not part of any backup")
    os.chmod(target, 0o700)
    return target


def test_restore_into_occupied_dir_needs_force(
    backup: tuple[Path, Manifest], tmp_path: Path
) -> None:
    archive, manifest = backup
    target = _occupied_target(tmp_path)
    os.chmod(target, 0o755)
    before = snapshot(target)
    with pytest.raises(TargetNotEmpty, match="is not empty"):
        restore_archive(archive, manifest, target, False, ignore)
    assert snapshot(target) == before  # not even the folder's mode changed


def test_restore_with_force_replaces(
    app: Path, backup: tuple[Path, Manifest], tmp_path: Path
) -> None:
    archive, manifest = backup
    target = _occupied_target(tmp_path)
    restore_archive(archive, manifest, target, True, ignore)
    got = snapshot(target)
    # The archived folders are replaced as a whole (stale.json is gone); other entries stay.
    assert got.pop("keep.txt")[0] == "file"
    want = snapshot(app)
    del want["."], got["."]
    assert got == want


@pytest.mark.parametrize("damage", ["flipped-byte", "edited-member", "truncated"])
def test_failed_restore_leaves_target_as_it_was(
    backup: tuple[Path, Manifest], tmp_path: Path, damage: str
) -> None:
    archive, manifest = backup
    bad = copy_of(archive, tmp_path / "bad")
    if damage == "flipped-byte":
        data = bytearray(bad.read_bytes())
        data[len(data) // 2] ^= 0x55
        bad.write_bytes(bytes(data))
    elif damage == "truncated":
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size * 9 // 10])
    else:  # fails on the last file, after everything else was already staged
        bad, manifest = rewrite(archive, manifest, bad, {"presets/top.json": b"{}\n"})
    for force in (False, True):
        target = _occupied_target(tmp_path / f"force-{force}")
        if not force:  # the same, emptied
            shutil.rmtree(target / "data")
            (target / "keep.txt").unlink()
        before = snapshot(target)
        with pytest.raises(VerificationFailed):
            restore_archive(bad, manifest, target, force, ignore)
        assert snapshot(target) == before, f"force={force}"
        assert not [p for p in target.iterdir() if p.name.startswith(".lifeos-restore")]


# -- malicious archives -------------------------------------------------------------------------


def evil_archive(
    folder: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]
) -> tuple[Path, Manifest]:
    """A zstd tar of `members` (TarInfo for links/dirs/devices, (name, data) for files) and a
    manifest that matches it byte for byte."""
    raw = io.BytesIO()
    entries: list[FileEntry] = []
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for item in members:
            if isinstance(item, tarfile.TarInfo):
                tar.addfile(item)
                kind = {tarfile.SYMTYPE: "symlink", tarfile.DIRTYPE: "dir"}.get(item.type)
                if kind:  # devices cannot be listed: the manifest has no such type
                    entry = {"path": item.name, "type": kind, "mode": item.mode}
                    entries.append(
                        FileEntry.model_validate(entry | {"linkname": item.linkname or None})
                    )
                continue
            name, data = item
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
            digest = hashlib.sha256(data).hexdigest()
            entries.append(FileEntry(path=name, size=len(data), mode=0o644, sha256=digest))
    packed = zstandard.ZstdCompressor().compress(raw.getvalue())
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / "json_backup_20250101_000000.tar.zst"
    archive.write_bytes(packed)
    now = datetime(2025, 1, 1, tzinfo=UTC)
    manifest = Manifest(
        backup_id="json_backup_20250101_000000",
        kind="json",
        created_at=now,
        finished_at=now,
        host="evil",
        tool_version="0",
        compression=Compression(algorithm="zstd", level=3),
        archive=ArchiveInfo(
            name=archive.name, size=len(packed), sha256=hashlib.sha256(packed).hexdigest()
        ),
        files=entries,
    )
    if not any(isinstance(m, tarfile.TarInfo) and m.ischr() for m in members):
        check_archive(archive, manifest, ignore)  # it really matches: only safety can stop it
    return archive, manifest


def link(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
    return info


def folder(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    return info


def char_device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    return info


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


MALICIOUS = {
    "dotdot-file": lambda base: [("../evil.json", b"{}")],
    "absolute-file": lambda base: [(f"{base}/abs/evil.json", b"{}")],
    "inner-dotdot": lambda base: [folder("data"), ("data/../../evil", b"{}")],
    "symlink-up": lambda base: [folder("data"), link("data/link", "../../outside")],
    "symlink-absolute": lambda base: [folder("data"), link("data/passwd", "/etc/passwd")],
    "char-device": lambda base: [folder("data"), char_device("data/null")],
    # Each link looks harmless on its own when normalised as text, but x/.. with x -> '.' climbs
    # out of the staging folder: z -> y/.. ends up two levels above it, and z/evil would be
    # created there.
    "symlink-chain": lambda base: [
        link("x", "."),
        link("y", "x/.."),
        link("z", "y/.."),
        link("z/evil", "pwned"),
    ],
    # The same chain without a member below a link: nothing is written outside, but after the
    # restore z would point two folders above the target.
    "symlink-chain-points-out": lambda base: [link("x", "."), link("y", "x/.."), link("z", "y/..")],
    # A link created through another link: data/l -> . makes data/l/up land in data/.
    "link-under-link": lambda base: [
        folder("data"),
        link("data/l", "."),
        link("data/l/up", "../.."),
    ],
}


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_malicious_archive_is_refused(tmp_path: Path, case: str) -> None:
    base = tmp_path / "box"
    target = base / "inner" / "target"
    target.mkdir(parents=True)
    # Something harmless first, so the refusal comes after real files were staged.
    members = [folder("configs"), ("configs/ok.json", b"[]"), *MALICIOUS[case](base)]
    archive, manifest = evil_archive(tmp_path / "repo", members)
    before, parent_before = tree(tmp_path), sorted(os.listdir(tmp_path.parent))
    with pytest.raises(UnsafeArchive, match="refused") as info:
        restore_archive(archive, manifest, target, False, ignore)
    assert info.value.detail
    assert os.listdir(target) == []
    assert tree(tmp_path) == before
    assert sorted(os.listdir(tmp_path.parent)) == parent_before
    assert not [p for p in tmp_path.rglob("*evil*")]
    assert not list(base.glob("**/outside")) and not (base / "abs").exists()


def test_big_folders_sorted_through_runs_on_disk_give_the_same_archive(
    app: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lifeos_backup.kinds.json.backup as json_backup

    def write(name: str) -> tuple[bytes, list[FileEntry]]:
        archive = tmp_path / name / "json_backup_20250101_000000.tar.zst"
        archive.parent.mkdir()
        result = write_archive(app, NAMES, archive, "zstd", 3, ignore)
        entries = list(result.entries)
        result.entries.close()
        assert os.listdir(archive.parent) == [archive.name]  # the runs have no names
        return archive.read_bytes(), entries

    in_memory = write("in-memory")
    monkeypatch.setattr(json_backup, "SORT_RUN", 2)  # every folder of 3+ entries merges runs
    assert write("merged") == in_memory
