"""Paths and globs inside backups (core.names.PathPattern), and the manifest diff's two ways."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from lifeos_backup.core.errors import InvalidName
from lifeos_backup.core.names import PathPattern
from lifeos_backup.formats.manifest import ArchiveInfo, Compression, FileEntry, Manifest, Source
from lifeos_backup.jobs import browse


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("data/characters/*.json", "data/characters/ana.json", True),
        ("data/characters/*.json", "data/characters/old/ana.json", False),
        ("data/characters", "data/characters/old/ana.json", True),
        ("data/characters/", "data/characters/ana.json", True),
        ("data/char", "data/characters/ana.json", False),
        ("**/ana.json", "ana.json", True),
        ("**/ana.json", "data/x/ana.json", True),
        ("data/**", "data/x/y.json", True),
        ("data/?.json", "data/a.json", True),
        ("data/?.json", "data/ab.json", False),
        ("data/[ab].json", "data/b.json", True),
        ("data/[!ab].json", "data/b.json", False),
        ("data/[!ab].json", "data/c.json", True),
        ("data/a+b(1).json", "data/a+b(1).json", True),
        ("public.*", "public.characters", True),
    ],
)
def test_pattern_matches(pattern: str, path: str, matches: bool) -> None:
    assert PathPattern(pattern).matches(path) is matches


@pytest.mark.parametrize(
    "bad", ["", "/", "/etc/passwd", "..", "../x", "data/../../x", "./data", "a//b", "a\\b",
            "a\0b", "data/[ab", "data/[a/b]", "data/[z-a].json"],
)
def test_hostile_or_broken_patterns_are_refused(bad: str) -> None:
    with pytest.raises(InvalidName):
        PathPattern(bad)


def manifest(entries: list[FileEntry], sources: tuple[str, ...] = ("data", "configs")) -> Manifest:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    backup_id = "json_backup_20250101_000000"
    return Manifest(
        backup_id=backup_id, kind="json", created_at=now, finished_at=now, host="h",
        tool_version="t", compression=Compression(algorithm="zstd", level=3),
        archive=ArchiveInfo(name=f"{backup_id}.tar.zst", size=1, sha256="0" * 64),
        sources=[Source(name=n, path=n) for n in sources], files=entries,
    )


def f(path: str, sha: str = "a", size: int = 1) -> FileEntry:
    return FileEntry(path=path, size=size, mode=0o644, sha256=sha * 64)


def d(path: str) -> FileEntry:
    return FileEntry(path=path, type="dir", mode=0o755)


# Archive order: sources in turn, each folder's entries by name, then its subfolders' content
# ("data/a-b.json" before "data/a/x.json": not the order of the paths as text).
OLD = [d("data"), d("data/a"), f("data/a-b.json"), f("data/z.json"), f("data/a/x.json"),
       d("configs"), f("configs/c.json")]
NEW = [d("data"), d("data/a"), f("data/a-b.json", "b"), f("data/a/x.json"), f("data/a/y.json"),
       d("configs")]
EXPECTED = {
    ("changed", "data/a-b.json"),
    ("removed", "data/z.json"),
    ("added", "data/a/y.json"),
    ("removed", "configs/c.json"),
}


def test_diff_merges_entries_in_archive_order() -> None:
    old, new = manifest(OLD), manifest(NEW)
    key = browse.archive_order(old, new)
    assert browse.in_order(old, key) and browse.in_order(new, key)
    assert {(c.change, c.path) for c in browse.diff_files(old, new)} == EXPECTED


def test_diff_of_entries_out_of_order_goes_through_sqlite() -> None:
    old, new = manifest(list(reversed(OLD))), manifest(NEW)
    assert not browse.in_order(old, browse.archive_order(old, new))
    assert {(c.change, c.path) for c in browse.diff_files(old, new)} == EXPECTED
