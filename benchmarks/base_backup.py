"""Benchmark: a base backup's extraction (restore pitr, drills) and verify, beside zstd and tar.

    .venv/bin/python benchmarks/base_backup.py [--scale 40] [--repeat 5]

A throwaway cluster archiving WAL (tests/support/pitr.py) is filled with `pgbench -i -s SCALE`,
and one base backup is made with `create_backup("basebackup")`. Then, `--repeat` times round
robin, each in its own child process, with the page cache warm:

* extract: our `extract_base` (checks the archive's SHA-256 in the same pass) into an empty
  folder, against `zstd -dc ARCHIVE | tar -xf - -C DIR`;
* verify: our `check_base_backup` (archive checksum, the tar read to its end, backup_label),
  against `zstd -dc ARCHIVE | tar -tf - >/dev/null`.

The medians print beside each other with their ratio. Figures only, no verdict: a base backup is
a few large files, so decompression and writing dominate, and the read-ahead thread
(lifeos_backup.formats.streams.ReadAhead) overlaps them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from _common import (  # noqa: E402  (the folder is not a package; sys.path is set above)
    clean_env,
    facts_block,
    git_revision,
    load_average,
    machine_facts,
    markdown_table,
    median,
    run_callable,
    run_measured,
)


def ours_extract(archive: str, manifest: str, target: str) -> float:
    """Child: extract_base into `target` (made empty first); its seconds."""
    from lifeos_backup.core.progress import ignore
    from lifeos_backup.formats.manifest import read_manifest
    from lifeos_backup.kinds.basebackup.restore import extract_base

    shutil.rmtree(target, ignore_errors=True)
    loaded = read_manifest(Path(manifest))
    start = time.perf_counter()
    extract_base(Path(archive), loaded, Path(target), ignore)
    return time.perf_counter() - start


def ours_verify(archive: str, manifest: str) -> float:
    """Child: check_base_backup; its seconds."""
    from lifeos_backup.core.progress import ignore
    from lifeos_backup.formats.manifest import read_manifest
    from lifeos_backup.kinds.basebackup.backup import check_base_backup

    loaded = read_manifest(Path(manifest))
    start = time.perf_counter()
    check_base_backup(Path(archive), loaded, ignore)
    return time.perf_counter() - start


def make_backup(scale: int, root: Path) -> tuple[Path, Path, dict[str, str], object]:
    """The cluster, filled; one verified base backup; the settings' environment."""
    from tests.support.pitr import start_archiving_cluster

    cluster = start_archiving_cluster(archive_timeout=60)
    url = cluster.cluster.url()
    pgbench = str(cluster.cluster.bindir / "pgbench")
    subprocess.run([pgbench, "-i", "-q", "-s", str(scale), url], check=True, capture_output=True)
    env = clean_env(
        drop_prefixes=("LIFEOS_",),
        LIFEOS_BACKUP_ROOT=str(root / "backups"),
        LIFEOS_WAL_ARCHIVE_DIR=str(cluster.archive),
        LIFEOS_DATABASE_URL=url,
        LIFEOS_PG_BIN_DIR=str(cluster.cluster.bindir),
    )
    code = (
        "from lifeos_backup.core.settings import get_settings\n"
        "from lifeos_backup.jobs.backups import create_backup, locate, verify_backup\n"
        "from lifeos_backup.storage.catalog import open_catalog\n"
        "s = get_settings(); c = open_catalog(s.effective_catalog_url)\n"
        "m = create_backup('basebackup', s, c, reason='benchmark')\n"
        "verify_backup(m.backup_id, s, c)\n"
        "_row, archive, manifest = locate(s, c, m.backup_id)\n"
        "print(archive); print(manifest)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    archive, manifest = done.stdout.strip().splitlines()[-2:]
    return Path(archive), Path(manifest), env, cluster


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=40, help="pgbench scale factor")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="lifeos-base-bench-") as tmp:
        root = Path(tmp)
        archive, manifest, env, cluster = make_backup(args.scale, root)
        try:
            target = root / "restored"
            plain_extract = f"mkdir -p {target} && zstd -dc {archive} | tar -xf - -C {target}"
            plain_verify = f"zstd -dc {archive} | tar -tf - >/dev/null"
            runs: dict[str, list[float]] = {k: [] for k in ("ours-x", "tar-x", "ours-v", "tar-v")}
            for _ in range(args.repeat):
                runs["ours-x"].append(
                    run_callable(ours_extract, str(archive), str(manifest), str(target), env=env)
                    .result
                )
                shutil.rmtree(target, ignore_errors=True)
                runs["tar-x"].append(run_measured(["sh", "-c", plain_extract], env=env).seconds)
                shutil.rmtree(target, ignore_errors=True)
                runs["ours-v"].append(
                    run_callable(ours_verify, str(archive), str(manifest), env=env).result
                )
                runs["tar-v"].append(run_measured(["sh", "-c", plain_verify], env=env).seconds)
        finally:
            cluster.stop()  # type: ignore[attr-defined]
        size = archive.stat().st_size if archive.exists() else 0

    facts = machine_facts(
        {
            "revision": git_revision(REPO, ["lifeos_backup"]),
            "load": load_average(),
            "archive": f"{size:,} bytes (pgbench -s {args.scale})",
        }
    )
    print(facts_block(facts))
    rows = []
    for what, ours, plain, tool in (
        ("extract", "ours-x", "tar-x", "`zstd -dc \\| tar -xf`"),
        ("verify", "ours-v", "tar-v", "`zstd -dc \\| tar -tf`"),
    ):
        a, b = median(runs[ours]), median(runs[plain])
        rows.append([what, f"{a:.2f}", f"{b:.2f}", tool, f"{a / b:.2f}x the time"])
    print(f"\n{args.repeat} runs each, round robin, medians (s)\n")
    print(markdown_table(["step", "ours s", "plain s", "plain tool", "ours vs plain"], rows))
    print(json.dumps({k: [round(v, 3) for v in vals] for k, vals in runs.items()}))
    return 0


if __name__ == "__main__":
    os.umask(0o077)
    sys.exit(main())
