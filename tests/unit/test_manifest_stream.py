"""The manifest's line layout: streamed out, streamed back, still one JSON document, and never
visible half-written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lifeos_backup.core.errors import VerificationFailed
from lifeos_backup.formats.manifest import (
    ArchiveInfo,
    Compression,
    EntrySpool,
    FileEntry,
    Manifest,
    manifest_path,
    parse_manifest,
    read_manifest,
    write_manifest,
)

BACKUP_ID = "json_backup_20250101_000000"
ENTRIES = [
    FileEntry(path="data", type="dir", mode=0o755),
    FileEntry(path='data/quote"back\\slash.json', size=3, mode=0o644, sha256="a" * 64),
    FileEntry(path="data/Grüße 日本語.json", size=0, mode=0o600, sha256="b" * 64),
    FileEntry(path="data/link", type="symlink", mode=0o777, linkname="Grüße 日本語.json"),
    FileEntry(path="data/sub", type="dir", mode=0o500),
]


def header(folder: Path) -> tuple[Manifest, Path]:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    manifest = Manifest(
        backup_id=BACKUP_ID,
        kind="json",
        created_at=now,
        finished_at=now,
        host="test-host",
        tool_version="test",
        compression=Compression(algorithm="zstd", level=3),
        archive=ArchiveInfo(name=f"{BACKUP_ID}.tar.zst", size=10, sha256="c" * 64),
        facts={"skipped": ["x"]},
    )
    return manifest, manifest_path(folder / manifest.archive.name, BACKUP_ID)


def spooled(folder: Path, entries: list[FileEntry]) -> EntrySpool:
    spool = EntrySpool(folder)
    for e in entries:
        if e.type == "dir":
            spool.add_dir(e.path, e.mode)
        elif e.type == "symlink":
            spool.add_symlink(e.path, e.mode, e.linkname or "")
        else:
            spool.add_file(e.path, e.mode, e.size, e.sha256 or "")
    return spool


@pytest.mark.parametrize("count", [0, 1, 5, 10_000])
def test_round_trip_streams_entries_and_stays_one_json_document(tmp_path: Path, count: int) -> None:
    entries = (ENTRIES * (count // len(ENTRIES) + 1))[:count]
    manifest, mpath = header(tmp_path)
    spool = spooled(tmp_path, entries)
    assert list(spool) == entries
    write_manifest(mpath, manifest, spool)
    spool.close()
    assert os.listdir(tmp_path) == [mpath.name]  # the spool has no name; no .partial is left

    back = read_manifest(mpath)
    assert back.files == []  # not held: streamed on demand
    assert list(back.iter_files()) == entries
    assert back.model_dump(exclude={"files"}) == manifest.model_dump(exclude={"files"})
    # Any JSON reader (an older tool version, jq) reads it whole, with the same content.
    whole = parse_manifest(mpath.read_bytes(), mpath.name)
    assert whole.files == entries
    assert json.loads(mpath.read_bytes())["files"] == [
        e.model_dump(exclude_none=True) for e in entries
    ]
    lines = mpath.read_bytes().splitlines()
    assert len(lines) == count + 2  # header, one line per entry, tail


def test_rewrite_from_itself_keeps_entries(tmp_path: Path) -> None:
    """verify_backup reads the manifest, sets verified_at and writes it over itself."""
    manifest, mpath = header(tmp_path)
    spool = spooled(tmp_path, ENTRIES)
    write_manifest(mpath, manifest, spool)
    spool.close()
    read = read_manifest(mpath)
    read.verified_at = datetime(2025, 1, 2, tzinfo=UTC)
    read.verified_scope = "content"
    write_manifest(mpath, read)
    again = read_manifest(mpath)
    assert again.verified_scope == "content" and again.verified_at == read.verified_at
    assert list(again.iter_files()) == ENTRIES


def test_compact_manifest_of_older_versions_is_read_and_rewritten(tmp_path: Path) -> None:
    manifest, mpath = header(tmp_path)
    old = manifest.model_copy(update={"files": ENTRIES})
    mpath.write_bytes(old.model_dump_json(exclude_none=True).encode() + b"\n")
    read = read_manifest(mpath)
    assert read.files == ENTRIES and list(read.iter_files()) == ENTRIES
    write_manifest(mpath, read)  # now in the line layout
    assert mpath.read_bytes().count(b"\n") == len(ENTRIES) + 2
    assert list(read_manifest(mpath).iter_files()) == ENTRIES


@pytest.mark.parametrize("damage", ["truncated", "bad-entry", "text-after"])
def test_damaged_manifest_is_unreadable(tmp_path: Path, damage: str) -> None:
    manifest, mpath = header(tmp_path)
    spool = spooled(tmp_path, ENTRIES)
    write_manifest(mpath, manifest, spool)
    spool.close()
    data = mpath.read_bytes()
    if damage == "truncated":
        mpath.write_bytes(data[: len(data) - 10])
        with pytest.raises(VerificationFailed, match="unreadable"):
            read_manifest(mpath)
        return
    if damage == "bad-entry":
        mpath.write_bytes(data.replace(b'"mode":420', b'"mode":"rw"'))
    else:
        mpath.write_bytes(data + b'{"path":"x"}\n]}\n')
    read = read_manifest(mpath)  # the header is fine; the entries fail as they are streamed
    with pytest.raises(VerificationFailed, match="unreadable"):
        list(read.iter_files())


_KILLED_WRITER = """
import sys, time
from pathlib import Path
from lifeos_backup.formats import manifest as m
sys.path.insert(0, {tests!r})
from test_manifest_stream import header, spooled, ENTRIES

folder = Path(sys.argv[1])
real_copy = m.EntrySpool.copy_to

def copy_then_hang(self, out):
    real_copy(self, out)
    out.flush()
    print("writing", flush=True)
    time.sleep(60)  # killed here, after the entries and before the end

m.EntrySpool.copy_to = copy_then_hang
manifest, mpath = header(folder)
m.write_manifest(mpath, manifest, spooled(folder, ENTRIES * 20_000))
"""


def test_killed_writer_leaves_no_visible_manifest(tmp_path: Path) -> None:
    code = textwrap.dedent(_KILLED_WRITER).format(tests=str(Path(__file__).parent))
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "writing\n"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    _manifest, mpath = header(tmp_path)
    assert not mpath.exists()
    leftovers = os.listdir(tmp_path)
    assert leftovers == [f".{mpath.name}.partial"]  # hidden, and big: it was mid-write
    assert (tmp_path / leftovers[0]).stat().st_size > 100_000
