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


# `pg_restore --list` lines; an extension has no owner (the line ends in a space).
_TOC = "".join(
    line + "\n"
    for line in [
        ";",
        "; Archive created at 2026-12-07 15:00:00 UTC",
        ";",
        "215; 1259 16390 TABLE public characters postgres",
        "3500; 0 16390 TABLE DATA public characters postgres",
        "214; 1259 16389 SEQUENCE public characters_id_seq postgres",
        "3381; 0 0 SEQUENCE SET public characters_id_seq postgres",
        "3370; 2604 16393 DEFAULT public characters id postgres",
        "3380; 2606 16397 CONSTRAINT public characters characters_pkey postgres",
        "3382; 2606 16398 FK CONSTRAINT public notes notes_character_fkey postgres",
        "3378; 1259 16400 INDEX public characters_name_idx postgres",
        "220; 1255 16401 FUNCTION public touch() postgres",
        "221; 1255 16402 FUNCTION public touch(integer) postgres",
        "3390; 2620 16403 TRIGGER public characters characters_touch postgres",
        "216; 1259 16404 VIEW public named postgres",
        "5; 3079 16384 EXTENSION - citext ",
        "3400; 0 0 COMMENT - EXTENSION citext ",
        "9; 2615 2200 SCHEMA - public postgres",
        "3401; 0 0 ACL - SCHEMA public postgres",
        "612; 1247 16410 TYPE public mood postgres",
        "613; 1247 16411 DOMAIN public positive postgres",
    ]
)


def test_schema_objects_by_type_and_name_from_a_table_of_contents() -> None:
    from lifeos_backup.kinds.postgres.objects import schema_objects
    from lifeos_backup.kinds.postgres.toc import parse_toc

    found = sorted(str(o) for o in schema_objects(parse_toc(_TOC)))
    assert found == [
        "constraint characters_pkey on public.characters",
        "default id on public.characters",
        "domain public.positive",
        "extension citext",
        "fk constraint notes_character_fkey on public.notes",
        "function public.touch()",
        "function public.touch(integer)",
        "index public.characters_name_idx",
        "trigger characters_touch on public.characters",
        "type public.mood",
        "view public.named",
    ]  # tables, schemas, sequences are the manifest's; data, comments, ACLs are no objects


def test_schema_objects_compared_by_name() -> None:
    from lifeos_backup.kinds.postgres.objects import compare, schema_objects
    from lifeos_backup.kinds.postgres.toc import parse_toc

    old = schema_objects(parse_toc(_TOC))
    new_toc = _TOC.replace("216; 1259 16404 VIEW public named postgres\n", "") + (
        "3379; 1259 16405 INDEX public characters_mood_idx postgres\n"
        "222; 1255 16406 FUNCTION public stamp() postgres\n"
    )
    added, removed = compare(old, schema_objects(parse_toc(new_toc)))
    assert [str(o) for o in added] == [
        "function public.stamp()",
        "index public.characters_mood_idx",
    ]
    assert [o.as_dict() for o in removed] == [{"type": "view", "name": "public.named"}]
