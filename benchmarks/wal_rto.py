"""Benchmark: recovery time (RTO) to latest, and what synchronous mode costs the primary.

    .venv/bin/python benchmarks/wal_rto.py [--wal-mb 1024] [--pgbench-seconds 60]
        [--scale 10] [--clients 4] [--only rto,overhead]

1. RTO: a throwaway cluster archiving through `lifeos-wal push` (tests/support/pitr.py), a
   base backup (`create_backup("basebackup")`), then about `--wal-mb` MB of WAL (batches of
   ~1 kB rows of random hex inserted, then truncated: the data folder stays small while replay
   does the inserts), archived and uploaded with the backup to a local moto S3 server. Timed:
   `restore_pitr` to latest with `start` (lay out the base backup, run recovery, wait for it to
   end) from the local repository; then on a fresh repository that has only the bucket
   (`catalog rebuild --from offsite`, timed apart) with `source="offsite"` (download of the
   base backup and the WAL included). A row written after the WAL load must be there.
2. Overhead of synchronous mode: `pgbench` (TPC-B like, `--scale`, `--clients`, `-j 2`) for
   `--pgbench-seconds` against the same kind of cluster, with synchronous_commit = on: archive
   only; the WAL stream asynchronous; the stream synchronous (named in
   synchronous_standby_names). Streams start as in benchmarks/wal_rpo.py (`streaming`).

The test clusters run with fsync=off and full_page_writes=off (tests/support/services.py): a
local commit costs no disk flush, while pg_receivewal --synchronous fsyncs before it replies,
so the synchronous row shows the whole added wait.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from _common import (  # noqa: E402  (the folder is not a package; sys.path is set above)
    facts_block,
    git_revision,
    load_average,
    machine_facts,
    markdown_table,
    tool_version,
)
from wal_rpo import query, streaming  # noqa: E402

from tests.support.pitr import start_archiving_cluster, stop_restored  # noqa: E402
from tests.support.s3 import MotoServer, new_bucket  # noqa: E402
from tests.support.services import free_port  # noqa: E402

PARTS = ("rto", "overhead")
MODES = ("archive", "stream", "sync")
TITLES = {
    "archive": "archive_command only",
    "stream": "WAL stream, asynchronous",
    "sync": "WAL stream, synchronous",
}
MB = 1_000_000
BATCH_ROWS = 10_000  # ~10 MB of WAL per transaction


def du_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / MB


def archived_through(url: str, timeout: float = 600) -> None:
    """Switch to a new segment and wait until the one just finished is archived."""
    ((segment,),) = query(url, "SELECT pg_walfile_name(pg_switch_wal())")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ((last,),) = query(url, "SELECT last_archived_wal FROM pg_stat_archiver")
        if last is not None and str(last) >= str(segment):
            return
        time.sleep(0.2)
    raise RuntimeError(f"segment {segment} not archived in {timeout:g} s")


def write_wal(url: str, megabytes: int) -> int:
    """Insert-then-truncate batches until `megabytes` MB of WAL; returns the bytes written."""
    query(url, "CREATE TABLE filler (id int, pad text)")
    ((start,),) = query(url, "SELECT pg_current_wal_lsn()")
    written = 0
    while written < megabytes * MB:
        query(
            url,
            "INSERT INTO filler SELECT g, (SELECT string_agg(md5(random()::text), '')"
            " FROM generate_series(1, 30) WHERE g > 0) FROM generate_series(1, %s) g",
            BATCH_ROWS,
        )
        query(url, "TRUNCATE filler")
        ((diff,),) = query(url, "SELECT pg_current_wal_lsn() - %s::pg_lsn", start)
        written = int(diff)  # type: ignore[call-overload]
    return written


def set_env(**values: str) -> Any:
    from lifeos_backup.core.settings import get_settings

    for key in [k for k in os.environ if k.startswith("LIFEOS_")]:
        del os.environ[key]
    os.environ.update(values)
    get_settings.cache_clear()
    return get_settings()


def timed_restore(archiving: Any, settings: Any, catalog: Any, datadir: Path, source: str) -> float:
    from lifeos_backup.kinds.basebackup.restore import RecoveryTarget, restore_pitr

    port = free_port()
    start = time.perf_counter()
    try:
        result = restore_pitr(
            settings, catalog, RecoveryTarget(), datadir, port=port, start=True,
            wal_command=archiving.wal_command, socket_dir=archiving.cluster.socketdir,
            timeout=7200, source=source,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        if not result.started:
            raise RuntimeError(f"recovery from {source} did not finish: {result.stop_line}")
        rows = query(f"postgresql://postgres@127.0.0.1:{port}/postgres", "SELECT note FROM marker")
        if rows != [("after the load",)]:
            raise RuntimeError(f"recovered from {source} without the last row: {rows}")
        return seconds
    finally:
        stop_restored(archiving.cluster, datadir)
        shutil.rmtree(datadir, ignore_errors=True)


def rto(wal_mb: int) -> tuple[list[list[str]], str]:
    from lifeos_backup.core.fsutil import private_dir
    from lifeos_backup.jobs.backups import create_backup, verify_backup
    from lifeos_backup.kinds.basebackup.offsite_wal import upload_wal
    from lifeos_backup.storage.catalog.store import Catalog
    from lifeos_backup.storage.offsite.download import rebuild_from_offsite
    from lifeos_backup.storage.offsite.upload import upload_backup

    work = Path(tempfile.mkdtemp(prefix="lifeos-bench-rto-"))
    moto = MotoServer()
    archiving = start_archiving_cluster(archive_timeout=60)
    try:
        bucket = new_bucket(moto)
        s3 = {
            "LIFEOS_S3_ENDPOINT_URL": moto.url,
            "LIFEOS_S3_BUCKET": bucket.name,
            "LIFEOS_S3_PREFIX": bucket.prefix,
            "AWS_ACCESS_KEY_ID": moto.credentials["AWS_ACCESS_KEY_ID"],
            "AWS_SECRET_ACCESS_KEY": moto.credentials["AWS_SECRET_ACCESS_KEY"],
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        url = archiving.cluster.url()
        private_dir(work / "backups")
        settings = set_env(
            LIFEOS_BACKUP_ROOT=str(work / "backups"),
            LIFEOS_DATABASE_URL=url,
            LIFEOS_WAL_ARCHIVE_DIR=str(archiving.archive),
            LIFEOS_PG_BIN_DIR=str(archiving.cluster.bindir),
            **s3,
        )
        catalog = Catalog(settings.effective_catalog_url)
        query(url, "CREATE TABLE marker (note text)")
        backup_id = create_backup("basebackup", settings, catalog).backup_id
        verify_backup(backup_id, settings, catalog)
        base_mb = du_mb(settings.backup_root / catalog.get(backup_id).path)
        wal_bytes = write_wal(url, wal_mb)
        query(url, "INSERT INTO marker VALUES ('after the load')")
        archived_through(url)
        archive_mb = du_mb(archiving.archive)
        up = time.perf_counter()
        upload_backup(backup_id, settings, catalog)
        upload_wal(settings)
        upload_s = time.perf_counter() - up

        restores = archiving.base / "restores"
        local_s = timed_restore(archiving, settings, catalog, restores / "local", "local")

        fresh = work / "fresh"
        private_dir(fresh / "backups")
        fresh_settings = set_env(
            LIFEOS_BACKUP_ROOT=str(fresh / "backups"),
            LIFEOS_WAL_ARCHIVE_DIR=str(fresh / "no-archive"),
            LIFEOS_PG_BIN_DIR=str(archiving.cluster.bindir),
            **s3,
        )
        fresh_catalog = Catalog(fresh_settings.effective_catalog_url)
        rebuilt = time.perf_counter()
        rebuild_from_offsite(fresh_settings, fresh_catalog)
        rebuild_s = time.perf_counter() - rebuilt
        offsite_s = timed_restore(
            archiving, fresh_settings, fresh_catalog, restores / "offsite", "offsite"
        )
    finally:
        archiving.stop()
        moto.stop()
        shutil.rmtree(work, ignore_errors=True)
    wal = f"{wal_bytes / MB:.0f} ({archive_mb:.0f} archived)"
    rows = [
        ["local", f"{base_mb:.1f}", wal, "-", f"{local_s:.1f}"],
        ["off-site (moto)", f"{base_mb:.1f}", wal, f"{rebuild_s:.1f}", f"{offsite_s:.1f}"],
    ]
    headers = ["restore pitr from", "base backup MB", "WAL MB", "catalog rebuild s",
               "to latest s"]  # fmt: skip
    note = f"upload of the base backup and WAL to moto: {upload_s:.1f} s"
    return [headers, *rows], note


PGBENCH = re.compile(r"latency average = ([\d.]+) ms.*?tps = ([\d.]+)", re.S)


def pgbench(mode: str, seconds: int, scale: int, clients: int) -> list[str]:
    archiving = start_archiving_cluster(archive_timeout=60)
    try:
        cluster = archiving.cluster
        conn = ["-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres"]
        bench = str(cluster.bindir / "pgbench")
        subprocess.run([bench, "-i", "-q", "-s", str(scale), *conn, "postgres"],
                       check=True, capture_output=True)  # fmt: skip
        with streaming(archiving, mode):
            env = {**os.environ, "PGOPTIONS": "-c synchronous_commit=on"}
            done = subprocess.run(
                [bench, "-n", "-c", str(clients), "-j", "2", "-T", str(seconds), *conn,
                 "postgres"], check=True, capture_output=True, text=True, env=env,
            )  # fmt: skip
        found = PGBENCH.search(done.stdout)
        if found is None:
            raise RuntimeError(f"pgbench output not understood:\n{done.stdout}")
        return [TITLES[mode], found.group(2).split(".")[0], found.group(1)]
    finally:
        archiving.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--wal-mb", type=int, default=1024, help="WAL to replay, MB")
    parser.add_argument("--pgbench-seconds", type=int, default=60, help="per mode")
    parser.add_argument("--scale", type=int, default=10, help="pgbench scale factor")
    parser.add_argument("--clients", type=int, default=4, help="pgbench clients")
    parser.add_argument("--only", default=",".join(PARTS), help="of " + ", ".join(PARTS))
    args = parser.parse_args(argv)
    parts = [p for p in args.only.split(",") if p]
    if set(parts) - set(PARTS):
        parser.error(f"--only takes {', '.join(PARTS)}")
    # A SIGTERM ends the run through the `finally` blocks: the clusters stop, the folders go.
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))
    load = load_average()
    out = []
    if "rto" in parts:
        (headers, *rows), note = rto(args.wal_mb)
        out += [markdown_table(headers, rows), "", note, ""]
    if "overhead" in parts:
        rows = [pgbench(m, args.pgbench_seconds, args.scale, args.clients) for m in MODES]
        headers = ["primary, synchronous_commit = on", "pgbench tps", "latency average ms"]
        out += [markdown_table(headers, rows), ""]
    facts = machine_facts(
        {
            "postgres": tool_version(["pg_receivewal", "--version"]),
            "code": git_revision(REPO, ["lifeos_backup", "benchmarks/wal_rto.py"]),
            "load avg at start": load,
            "load avg at end": load_average(),
            "sizes": f"--wal-mb {args.wal_mb}; pgbench -s {args.scale} -c {args.clients} -j 2"
            f" -T {args.pgbench_seconds} per mode",
        }
    )
    print("\n".join([facts_block(facts), "", *out]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
