"""A JSON backup's memory does not grow with the file count: create, verify and restore of
60,000 small files run in a child process whose peak RSS stays under the bound that holds for
1,000,000 (benchmarks/json_backup.py measures that one). A manifest held in memory took 223 MiB
at 50,000 files; the big folder is sorted in runs on disk here (a small SORT_RUN), as a folder
of more than 65,536 entries is in production."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

FILES = 60_000
BOUND_MIB = 150
IN_ONE_FOLDER = 40_000  # one big folder: its listing is the largest thing held

_CHILD = """
import json, sys
from datetime import UTC, datetime
from pathlib import Path
from lifeos_backup.kinds.json import backup
from lifeos_backup.kinds.json.backup import write_archive
from lifeos_backup.kinds.json.restore import check_archive, restore_archive
from lifeos_backup.formats.manifest import (
    ArchiveInfo, Compression, Manifest, manifest_path, read_manifest, write_manifest,
)

app, repo = Path(sys.argv[1]), Path(sys.argv[2])
backup_id = "json_backup_20250101_000000"
archive = repo / f"{backup_id}.tar.zst"
mpath = manifest_path(archive, backup_id)
peak = {}
backup.SORT_RUN = 4096  # the big folder is merged from runs on disk

def mib():
    # VmHWM, the peak of this process's own memory: ru_maxrss survives execve, so a child
    # spawned from a big pytest process would report the parent's size instead.
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024

result = write_archive(app, ["data", "presets"], archive, "zstd", 3, lambda _r: None)
now = datetime(2025, 1, 1, tzinfo=UTC)
header = Manifest(
    backup_id=backup_id, kind="json", created_at=now, finished_at=now, host="h",
    tool_version="t", sources=result.sources, compression=Compression(algorithm="zstd", level=3),
    archive=ArchiveInfo(name=archive.name, size=result.size, sha256=result.sha256),
)
write_manifest(mpath, header, result.entries)
result.entries.close()
peak["create"] = mib()
check_archive(archive, read_manifest(mpath), lambda _r: None)
peak["verify"] = mib()
restored = restore_archive(archive, read_manifest(mpath), repo / "restored", False, lambda _r: None)
peak["restore"] = mib()
print(json.dumps({"peak_mib": peak, "restored": restored}))
"""


def tiny_tree(root: Path) -> None:
    """FILES tiny files: most in one folder, the rest spread over nested folders."""
    flat = root / "data" / "items"
    flat.mkdir(parents=True)
    for i in range(IN_ONE_FOLDER):
        fd = os.open(flat / f"{i:08d}-item.json", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b'{"i": %d}\n' % i)
        os.close(fd)
    for i in range(FILES - IN_ONE_FOLDER):
        folder = root / "presets" / f"group-{i % 10}" / f"sub-{i % 100:03d}"
        if i < 100:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"p{i}.json").write_bytes(b"[%d]\n" % i)


@pytest.mark.timeout(900)
def test_create_verify_restore_of_60k_files_stays_under_the_bound(tmp_path: Path) -> None:
    app, repo = tmp_path / "app", tmp_path / "repo"
    tiny_tree(app)
    repo.mkdir()
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_CHILD), str(app), str(repo)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["restored"] == FILES
    peak = result["peak_mib"]
    print(f"peak RSS MiB after create/verify/restore: {peak}")
    assert max(peak.values()) < BOUND_MIB, peak
