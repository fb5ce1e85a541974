"""Tests of durable private writes: hidden temporary name, 0600 files, 0700 folders."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from lifeos_backup.core.fsutil import (
    DIR_MODE,
    FILE_MODE,
    atomic_writer,
    partial_name,
    private_dir,
    write_json_atomic,
)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 0, so any mode seen comes from the code, not from the process umask."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_partial_name_is_hidden_beside_the_final_name(tmp_path: Path) -> None:
    final = tmp_path / "json-20250101T000000Z.tar.zst"
    tmp = partial_name(final)
    assert tmp.parent == final.parent
    assert tmp.name == ".json-20250101T000000Z.tar.zst.partial"


def test_atomic_writer_success(tmp_path: Path, open_umask: None) -> None:
    final = tmp_path / "new" / "sub" / "backup.bin"
    with atomic_writer(final) as handle:
        handle.write(b"part one ")
        # While writing: only the hidden partial file exists, never the final name.
        assert not final.exists()
        assert os.listdir(final.parent) == [".backup.bin.partial"]
        assert mode(final.parent / ".backup.bin.partial") == FILE_MODE == 0o600
        handle.write(b"part two")
    assert final.read_bytes() == b"part one part two"
    assert os.listdir(final.parent) == ["backup.bin"]  # partial renamed away, nothing else
    assert mode(final) == 0o600
    assert mode(final.parent) == DIR_MODE == 0o700


def test_atomic_writer_tightens_existing_parent_and_replaces_file(
    tmp_path: Path, open_umask: None
) -> None:
    folder = tmp_path / "repo"
    folder.mkdir(mode=0o777)
    final = folder / "report.json"
    final.write_bytes(b"old")
    os.chmod(final, 0o644)
    with atomic_writer(final) as handle:
        handle.write(b"new")
    assert final.read_bytes() == b"new"
    assert mode(final) == 0o600
    assert mode(folder) == 0o700


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_atomic_writer_failure_leaves_nothing(
    tmp_path: Path, error: type[BaseException], open_umask: None
) -> None:
    final = tmp_path / "backup.bin"
    with pytest.raises(error, match="disk on fire"), atomic_writer(final) as handle:
        handle.write(b"half a backup")
        assert partial_name(final).exists()
        raise error("disk on fire")
    assert not final.exists()
    assert not partial_name(final).exists()
    assert os.listdir(tmp_path) == []


def test_atomic_writer_failure_keeps_previous_file(tmp_path: Path) -> None:
    final = tmp_path / "manifest.json"
    final.write_bytes(b"previous good content")
    with pytest.raises(ValueError, match="boom"), atomic_writer(final) as handle:
        handle.write(b"garbage")
        raise ValueError("boom")
    assert final.read_bytes() == b"previous good content"
    assert os.listdir(tmp_path) == ["manifest.json"]


def test_private_dir_creates_and_tightens(tmp_path: Path, open_umask: None) -> None:
    made = private_dir(tmp_path / "a" / "b")
    assert made == tmp_path / "a" / "b"
    assert mode(made) == 0o700
    os.chmod(made, 0o755)
    private_dir(made)
    assert mode(made) == 0o700


def test_write_json_atomic_round_trip(tmp_path: Path, open_umask: None) -> None:
    document = {
        "backup_id": "json-20250101T000000Z",
        "files": [{"path": "data/Grüße 日本.json", "size": 0, "sha256": None}],
        "nested": {"b": 1.5, "a": [True, False]},
    }
    final = tmp_path / "out" / "m.json"
    write_json_atomic(final, document)
    raw = final.read_bytes()
    assert json.loads(raw) == document
    assert raw.endswith(b"}\n")
    assert raw.index(b'"a"') < raw.index(b'"b"')  # keys sorted: stable, diffable output
    assert mode(final) == 0o600
    assert os.listdir(final.parent) == ["m.json"]


def test_write_json_atomic_unserialisable_leaves_nothing(tmp_path: Path) -> None:
    final = tmp_path / "m.json"
    with pytest.raises(TypeError):
        write_json_atomic(final, {"when": object()})
    assert os.listdir(tmp_path) == []
