"""Benchmark: PostgreSQL backup and restore vs `pg_dump | gzip`, `pg_dump -Fc`, psql, pg_restore.

    .venv/bin/python benchmarks/postgres_backup.py [--scale 70] [--documents 600000] [--repeat 5]
    .venv/bin/python benchmarks/postgres_backup.py --shape app [--factor 1.0] [--repeat 3]

Starts a throwaway PostgreSQL cluster (the test suite's, tests/support/services.py), fills a
database of about 1 GB (`pgbench -i -s 70` plus a JSONB `documents` table), or with `--shape app`
one of about 1.7 GB shaped like the application's (a GIN index on JSONB, 3 M narrow rows under a
composite key, secondary indexes, foreign keys, an enum, a domain, bytea), then runs every
contender `--repeat` times, round robin, each in its own child process, and prints medians:

* backup: lifeos create+verify (plain functions, fresh interpreter), lifeos through a real Celery
  worker (request -> verified; the worker's peak RSS), `pg_dump | gzip`, `pg_dump -Fc`, and for
  reference the bare `pg_dump -Fc -Z0 | zstd -1 -T2` pipeline;
* restore (each into a new, empty database created beforehand, untimed, after a CHECKPOINT):
  lifeos restore (default 2 jobs, and 1 job), `gunzip -c | psql`, `pg_restore -j2` of the
  `pg_dump -Fc` file.

The "two-core check" at start and end times a CPU-bound job and a 768 MiB file write, alone and
two at once: on a shared VM it shows whether two cores (and the page cache) were really there.

Exit status 0 when the issue's targets hold (ratios of medians in this run), 1 otherwise.
benchmarks/README.md explains the figures and records a run.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import (  # the folder is not a package; sys.path is set above
    clean_env,
    facts_block,
    git_revision,
    load_average,
    machine_facts,
    markdown_table,
    median,
    reported_gib,
    run_callable,
    run_measured,
    tool_version,
    two_core_check,
)

REPO = Path(__file__).resolve().parent.parent
DB = "bench"
MiB = 1024 * 1024
# Runs argv[2:] (a Celery worker); SIGTERM is passed on; at exit writes the peak RSS (KiB) of the
# worker's tree (main process, pool child, pg_dump/pg_restore) to argv[1].
_WORKER_WRAPPER = """\
import resource, signal, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
child.wait()
with open(sys.argv[1], "w") as out:
    out.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
"""
DOCUMENTS_SQL = """
CREATE TABLE documents (
    id bigserial PRIMARY KEY,
    kind text NOT NULL,
    body jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT '2024-06-01 00:00:00+00'
);
INSERT INTO documents (kind, body)
SELECT (ARRAY['character', 'outfit', 'composition', 'board_game'])[1 + g % 4],
       jsonb_build_object(
           'name', 'item ' || g,
           'tags', jsonb_build_array('t' || (g % 97), 't' || (g % 13), 'é' || (g % 7)),
           'score', (g::bigint * 7919) % 1000 / 10.0,
           'notes', md5(g::text) || ' ' || md5((g * 31)::text),
           'attrs', jsonb_build_object('h', g % 200, 'w', g % 150, 'flag', g % 2 = 0))
FROM generate_series(1, %(rows)s) g;
CREATE INDEX documents_kind_idx ON documents (kind);
"""


# The application shape: what Life-OS's own tables look like at scale, and where a restore's time
# goes into index builds: a GIN index on JSONB, a composite primary key on 3 M narrow rows,
# secondary indexes, foreign keys, an enum and a domain, and bytea. `%(f)s` scales the row counts
# (1.0: about 1.7 GB).
APP_SQL = """
CREATE TYPE entry_kind AS ENUM ('character', 'outfit', 'composition', 'board_game', 'preset');
CREATE DOMAIN rating AS numeric(4, 1) CHECK (VALUE >= 0);
CREATE TABLE users (
    id integer PRIMARY KEY,
    name text NOT NULL,
    email text NOT NULL UNIQUE
);
INSERT INTO users SELECT g, 'user ' || g, 'u' || g || '@example.org'
FROM generate_series(1, (50000 * %(f)s)::int) g;
CREATE TABLE documents (
    id bigserial PRIMARY KEY,
    user_id integer NOT NULL REFERENCES users,
    kind entry_kind NOT NULL,
    body jsonb NOT NULL,
    rating rating,
    created_at timestamptz NOT NULL
);
INSERT INTO documents (user_id, kind, body, rating, created_at)
SELECT 1 + g % (50000 * %(f)s)::int,
       (enum_range(NULL::entry_kind))[1 + g % 5],
       jsonb_build_object(
           'name', 'item ' || g,
           'tags', jsonb_build_array('t' || (g % 97), 't' || (g % 13), 'é' || (g % 7)),
           'notes', md5(g::text) || ' ' || md5((g * 31)::text),
           'attrs', jsonb_build_object('h', g % 200, 'w', g % 150, 'flag', g % 2 = 0,
                                       'colour', 'c' || (g % 31))),
       ((g::bigint * 7919) % 1000) / 10.0,
       '2024-01-01'::timestamptz + g * interval '7 seconds'
FROM generate_series(1, (1200000 * %(f)s)::int) g;
CREATE INDEX documents_body_idx ON documents USING gin (body);
CREATE INDEX documents_user_idx ON documents (user_id, created_at);
CREATE INDEX documents_kind_idx ON documents (kind);
CREATE TABLE events (
    user_id integer NOT NULL REFERENCES users,
    seq integer NOT NULL,
    at timestamptz NOT NULL,
    kind entry_kind NOT NULL,
    amount integer NOT NULL,
    PRIMARY KEY (user_id, seq)
);
INSERT INTO events
SELECT 1 + g % (50000 * %(f)s)::int, g, '2024-01-01'::timestamptz + g * interval '3 seconds',
       (enum_range(NULL::entry_kind))[1 + g % 5], (g * 37) % 10000
FROM generate_series(1, (3000000 * %(f)s)::int) g;
CREATE INDEX events_at_idx ON events (at);
CREATE INDEX events_kind_at_idx ON events (kind, at);
CREATE TABLE attachments (
    id integer PRIMARY KEY,
    document_id bigint NOT NULL REFERENCES documents,
    name text NOT NULL,
    data bytea NOT NULL
);
INSERT INTO attachments
SELECT g, 1 + g * 13, 'file-' || g || '.png',
       (SELECT decode(string_agg(md5(g::text || ':' || i), ''), 'hex')
        FROM generate_series(1, 600) i)
FROM generate_series(1, (30000 * %(f)s)::int) g;
CREATE INDEX attachments_document_idx ON attachments (document_id);
"""


# --------------------------------------------------------------------------- the database


def psql(cluster: Any, dbname: str, *args: str) -> str:
    out = subprocess.run(
        [str(cluster.bindir / "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
         "-d", cluster.url(dbname), *args],
        capture_output=True, text=True, check=True,
    )
    return out.stdout.strip()


def build_database(cluster: Any, args: argparse.Namespace) -> dict[str, str]:
    """The `--shape` database: pgbench tables at `--scale` plus the JSONB table, or the
    application shape at `--factor`; returns what was built."""
    cluster.create_database(DB)
    start = time.perf_counter()
    if args.shape == "app":
        psql(cluster, DB, "-c", APP_SQL.replace("%(f)s", str(args.factor)))
        what = f"application shape x{args.factor} (GIN on JSONB, composite keys, bytea, FKs)"
    else:
        subprocess.run(
            [str(cluster.bindir / "pgbench"), "-i", "-q", "-s", str(args.scale),
             "-d", cluster.url(DB)],
            capture_output=True, check=True,
        )
        psql(cluster, DB, "-c", DOCUMENTS_SQL.replace("%(rows)s", str(args.documents)))
        what = f"pgbench -i -s {args.scale} + documents ({args.documents:,} JSONB rows)"
    psql(cluster, DB, "-c", "VACUUM ANALYZE")  # not in a transaction block: a call of its own
    size = int(psql(cluster, DB, "-c", "SELECT pg_database_size(current_database())"))
    return {
        "database": what,
        "database size": f"{size:,} B ({size / 1e9:.2f} GB)",
        "built in": f"{time.perf_counter() - start:.0f} s",
    }


def checkpoint(cluster: Any) -> None:
    """Flush dirty buffers so one restore's writes do not slow the next contender: the server's
    to the page cache (CHECKPOINT), then the page cache's to disk (the cluster runs with
    fsync=off, so only sync(2) does; a restore leaves about 1 GB dirty here)."""
    psql(cluster, "postgres", "-c", "CHECKPOINT")
    os.sync()


# --------------------------------------------------------------------------- children


def ours_backup_child(root: str, url: str, bindir: str) -> dict[str, Any]:
    """Fresh interpreter: create_backup + verify_backup of the postgres kind, timed apart."""
    from lifeos_backup.core.settings import Settings
    from lifeos_backup.jobs.backups import create_backup, locate, verify_backup
    from lifeos_backup.storage.catalog.store import Catalog

    settings = Settings(backup_root=Path(root), database_url=url, pg_bin_dir=Path(bindir))
    catalog = Catalog(settings.effective_catalog_url)
    t0 = time.perf_counter()
    manifest = create_backup("postgres", settings, catalog, reason="benchmark")
    t1 = time.perf_counter()
    create_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    verify_backup(manifest.backup_id, settings, catalog)
    t2 = time.perf_counter()
    _row, archive, _mpath = locate(settings, catalog, manifest.backup_id)
    return {
        "backup_id": manifest.backup_id,
        "create_s": t1 - t0,
        "verify_s": t2 - t1,
        "total_s": t2 - t0,
        "archive_bytes": archive.stat().st_size,
        "dump_bytes": manifest.facts["dump_bytes"],
        "level": manifest.compression.level,
        "create_maxrss_kb": create_rss,
    }


def ours_restore_child(root: str, url: str, bindir: str, backup_id: str, target: str,
                       jobs: int) -> dict[str, Any]:
    """Fresh interpreter: restore_postgres (checksum, pg_restore, row counts) into `target`, an
    empty database created beforehand, untimed, as for the other restores."""
    from lifeos_backup.core.settings import Settings
    from lifeos_backup.formats.manifest import read_manifest
    from lifeos_backup.jobs.backups import locate
    from lifeos_backup.kinds.postgres.restore import restore_postgres
    from lifeos_backup.storage.catalog.store import Catalog

    settings = Settings(backup_root=Path(root), database_url=url, pg_bin_dir=Path(bindir))
    catalog = Catalog(settings.effective_catalog_url)
    _row, archive, mpath = locate(settings, catalog, backup_id)
    manifest = read_manifest(mpath)
    t0 = time.perf_counter()
    report = restore_postgres(archive, manifest, settings, target, jobs=jobs)
    seconds = time.perf_counter() - t0
    assert not report.differences, report.differences
    return {"total_s": seconds, "jobs": report.jobs, "tables": len(report.counts)}


# --------------------------------------------------------------------------- contenders


@dataclass
class Sample:
    seconds: float
    cpu_s: float
    size: int | None
    rss_kb: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Contender:
    key: str
    label: str
    run: Callable[[int], Sample]
    samples: list[Sample] = field(default_factory=list)

    def med(self, attr: str) -> float:
        return median([getattr(s, attr) for s in self.samples])


class Bench:
    """Everything one run needs: the cluster, a work folder, the Redis for the worker row."""

    def __init__(self, cluster: Any, work: Path, redis_url: str) -> None:
        self.cluster = cluster
        self.work = work
        self.redis_url = redis_url
        self.url = cluster.url(DB)
        self.bindir = cluster.bindir
        self.last_backup: str | None = None
        self.worker: WorkerRss | None = None

    def tool(self, name: str) -> str:
        return str(self.bindir / name)

    def shell(self, script: str, rnd: int) -> Sample:
        m = run_measured(["bash", "-o", "pipefail", "-c", script], cwd=self.work)
        return Sample(m.seconds, m.cpu_seconds, None, m.peak_rss_kb)

    # backups
    def ours_backup(self, rnd: int) -> Sample:
        m = run_callable(
            ours_backup_child, str(self.work / "ours"), self.url, str(self.bindir),
            cwd=self.work, env=clean_env(drop_prefixes=("LIFEOS_",)),
        )
        r = m.result
        self.last_backup = r["backup_id"]
        return Sample(r["total_s"], m.cpu_seconds, r["archive_bytes"], m.peak_rss_kb, r)

    def worker_backup(self, rnd: int) -> Sample:
        from lifeos_backup.app.client import backup_chain, make_app, wait_verified

        assert self.worker is not None
        app = make_app(self.redis_url)
        start = time.perf_counter()
        steps, ref = backup_chain(app, "postgres", "benchmark")
        steps.apply_async()
        wait_verified(app, ref, timeout=1800, poll=0.05)
        seconds = time.perf_counter() - start
        archive = next((self.work / "worker").rglob(f"{ref.backup_id}.dump.zst"))
        return Sample(seconds, 0.0, archive.stat().st_size, 0, {"id": ref.backup_id})

    def dump_gzip(self, rnd: int) -> Sample:
        out = self.work / "plain.sql.gz"
        s = self.shell(f"{self.tool('pg_dump')} '{self.url}' | gzip > {out}", rnd)
        s.size = out.stat().st_size
        return s

    def dump_custom(self, rnd: int) -> Sample:
        out = self.work / "custom.dump"
        m = run_measured([self.tool("pg_dump"), "-Fc", "-f", str(out), self.url], cwd=self.work)
        return Sample(m.seconds, m.cpu_seconds, out.stat().st_size, m.peak_rss_kb)

    def dump_zstd_ref(self, rnd: int) -> Sample:
        out = self.work / "ref.dump.zst"
        s = self.shell(f"{self.tool('pg_dump')} -Fc -Z0 '{self.url}' | zstd -q -1 -T2 > {out}", rnd)
        s.size = out.stat().st_size
        return s

    # restores (each into a new database, dropped afterwards, not timed)
    def _fresh(self, label: str, rnd: int) -> str:
        name = f"r_{label}_{rnd}"
        self.cluster.drop_database(name)
        self.cluster.create_database(name)
        checkpoint(self.cluster)
        return name

    def ours_restore(self, jobs: int) -> Callable[[int], Sample]:
        def run(rnd: int) -> Sample:
            assert self.last_backup is not None
            target = self._fresh(f"ours{jobs}", rnd)
            m = run_callable(
                ours_restore_child, str(self.work / "ours"), self.url, str(self.bindir),
                self.last_backup, target, jobs,
                cwd=self.work, env=clean_env(drop_prefixes=("LIFEOS_",)),
            )
            self.cluster.drop_database(target)
            return Sample(m.result["total_s"], m.cpu_seconds, None, m.peak_rss_kb, m.result)

        return run

    def restore_psql(self, rnd: int) -> Sample:
        target = self._fresh("psql", rnd)
        s = self.shell(
            f"gunzip -c {self.work / 'plain.sql.gz'} | {self.tool('psql')} -X -q -o /dev/null"
            f" -v ON_ERROR_STOP=1 -d '{self.cluster.url(target)}'",
            rnd,
        )
        self.cluster.drop_database(target)
        return s

    def restore_pg_restore(self, rnd: int) -> Sample:
        target = self._fresh("pgr", rnd)
        m = run_measured(
            [self.tool("pg_restore"), "-j2", "--exit-on-error", "-d", self.cluster.url(target),
             str(self.work / "custom.dump")],
            cwd=self.work,
        )
        self.cluster.drop_database(target)
        return Sample(m.seconds, m.cpu_seconds, None, m.peak_rss_kb)


class WorkerRss:
    """A real Celery worker (prefork, concurrency 1) whose tree's peak RSS is recorded."""

    def __init__(self, bench: Bench) -> None:
        self.report = bench.work / "worker-rss.txt"
        self.log = open(bench.work / "worker.log", "ab")  # noqa: SIM115 - closed in stop()
        env = clean_env(
            drop_prefixes=("LIFEOS_",),
            LIFEOS_BACKUP_ROOT=str(bench.work / "worker"),
            LIFEOS_REDIS_URL=bench.redis_url,
            LIFEOS_DATABASE_URL=bench.url,
            LIFEOS_PG_BIN_DIR=str(bench.bindir),
            LIFEOS_LOG_LEVEL="WARNING",
        )
        self.popen = subprocess.Popen(
            [sys.executable, "-c", _WORKER_WRAPPER, str(self.report), sys.executable, "-m",
             "celery", "-A", "workers", "worker", "--loglevel=INFO", "--concurrency=1",
             "--pool=prefork", "--without-mingle", "--without-gossip"],
            cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while b" ready." not in (bench.work / "worker.log").read_bytes():
            if self.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("worker did not start; see worker.log")
            time.sleep(0.2)

    def stop(self) -> int:
        """Stop the worker; the peak RSS of its tree in KiB."""
        self.popen.send_signal(signal.SIGTERM)
        self.popen.wait(120)
        self.log.close()
        return int(self.report.read_text())


# --------------------------------------------------------------------------- report


def _mb(n: float | None) -> str:
    return "—" if n is None else f"{n / 1e6:,.1f}"


def _row(c: Contender, base: Contender, base_size: float | None) -> list[str]:
    seconds = c.med("seconds")
    sizes = [s.size for s in c.samples if s.size is not None]
    size = median(sizes) if sizes else None
    rss = max(s.rss_kb for s in c.samples)
    return [
        c.label.replace("|", "\\|"),  # a markdown table cell
        f"{seconds:.2f}",
        f"{min(s.seconds for s in c.samples):.2f}",
        f"{c.med('cpu_s'):.2f}" if c.med("cpu_s") else "—",
        f"{base.med('seconds') / seconds:.2f}x",
        _mb(size),
        f"{size / base_size:.3f}x" if size and base_size else "—",
        f"{rss / 1024:.0f}" if rss else "—",
    ]


HEADERS = [
    "contender", "seconds", "min s", "CPU s", "speed vs baseline", "output MB", "size vs baseline",
    "peak RSS MiB",
]


def report(
    backups: list[Contender], restores: list[Contender], worker_rss_kb: int, restore_target: float
) -> tuple[str, bool]:
    by = {c.key: c for c in backups + restores}
    gz, ours, psql_ = by["gzip"], by["ours"], by["psql"]
    gz_size = gz.med("size")
    lines = [
        "Backups (baseline: pg_dump | gzip)",
        "",
        markdown_table(HEADERS, [_row(c, gz, gz_size) for c in backups]),
        "",
        "Restores (baseline: gunzip -c | psql)",
        "",
        markdown_table(HEADERS, [_row(c, psql_, None) for c in restores]),
        "",
    ]
    creates = [s.extra["create_s"] for s in ours.samples]
    verifies = [s.extra["verify_s"] for s in ours.samples]
    lines.append(
        f"lifeos create {median(creates):.2f} s + verify {median(verifies):.2f} s (medians); "
        f"uncompressed dump {ours.samples[0].extra['dump_bytes']:,} B; "
        f"zstd level {ours.samples[0].extra['level']}"
    )
    lines.append(f"worker tree peak RSS over all its backups: {worker_rss_kb / 1024:.0f} MiB")
    lines.append("")
    speed = gz.med("seconds") / ours.med("seconds")
    size = ours.med("size") / gz_size
    restore = by["ours2"]
    rspeed = psql_.med("seconds") / restore.med("seconds")
    checks = [
        (speed >= 2.0, f"backup time: create+verify {speed:.2f}x faster than pg_dump | gzip "
                       "(target >= 2x)"),
        (size <= 1.0, f"backup size: {size:.3f}x of pg_dump | gzip (target <= 1x)"),
        (rspeed >= restore_target, f"restore time: {rspeed:.2f}x faster than gunzip -c | psql "
                                   f"(target >= {restore_target}x)"),
        (worker_rss_kb < 150 * 1024, f"worker peak RSS: {worker_rss_kb / 1024:.0f} MiB "
                                     "(target < 150 MiB)"),
    ]
    lines += [f"{'PASS' if ok else 'FAIL'}  {text}" for ok, text in checks]
    return "\n".join(lines), all(ok for ok, _ in checks)


# --------------------------------------------------------------------------- main


def _rotated(items: list[Contender], by: int) -> list[Contender]:
    by %= len(items)
    return items[by:] + items[:by]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=70, help="pgbench scale (default 70)")
    parser.add_argument("--documents", type=int, default=600_000, help="JSONB rows")
    parser.add_argument("--repeat", type=int, default=5, help="runs per contender (medians)")
    parser.add_argument("--shape", choices=["pgbench", "app"], default="pgbench",
                        help="pgbench + JSONB (default), or the index-heavy application shape")
    parser.add_argument("--factor", type=float, default=1.0,
                        help="row-count factor of the application shape (1.0: about 1.7 GB)")
    args = parser.parse_args(argv)

    from tests.support.services import PostgresCluster, RedisServer

    work = Path(tempfile.mkdtemp(prefix="lifeos-pgbench-"))
    cluster = PostgresCluster()
    redis_server = RedisServer()
    worker = None
    try:
        facts = machine_facts({
            "pg_dump": tool_version([str(cluster.bindir / "pg_dump"), "--version"]),
            "gzip": tool_version(["gzip", "--version"]),
            "zstd": tool_version(["zstd", "--version"]),
            "code": git_revision(REPO, ["lifeos_backup", "benchmarks"]),
            "cluster": "throwaway initdb cluster, fsync=off, synchronous_commit=off, "
                       "full_page_writes=off (tests/support/services.py), default memory",
        })
        facts.update(build_database(cluster, args))
        facts["load average"] = f"{load_average()} at start"
        facts["two-core check"] = f"at start: {two_core_check(work)}"
        reported_at_start = reported_gib()
        bench = Bench(cluster, work, redis_server.url(1))
        backups = [
            Contender("ours", "lifeos create+verify", bench.ours_backup),
            Contender("worker", "lifeos through a real worker (request -> verified)",
                      bench.worker_backup),
            Contender("gzip", "pg_dump | gzip", bench.dump_gzip),
            Contender("custom", "pg_dump -Fc", bench.dump_custom),
            Contender("ref", "pg_dump -Fc -Z0 | zstd -1 -T2 (reference, no verify)",
                      bench.dump_zstd_ref),
        ]
        restores = [
            Contender("ours2", "lifeos restore (2 jobs, default)", bench.ours_restore(2)),
            Contender("ours1", "lifeos restore (1 job)", bench.ours_restore(1)),
            Contender("psql", "gunzip -c | psql", bench.restore_psql),
            Contender("pgr", "pg_restore -j2 (pg_dump -Fc file)", bench.restore_pg_restore),
        ]
        worker = bench.worker = WorkerRss(bench)
        for rnd in range(args.repeat):
            # Each round starts the backups and the restores at a different contender, so that
            # what ran just before (a big restore, a dropped database) weighs on all alike. Our
            # restore reads the backup made in the same round, so the backups all come first.
            order = _rotated(backups, rnd) + _rotated(restores, rnd)
            for contender in order:
                checkpoint(cluster)
                sample = contender.run(rnd)
                contender.samples.append(sample)
                print(f"round {rnd + 1}: {contender.label}: {sample.seconds:.2f} s", flush=True)
            shutil.rmtree(work / "ours", ignore_errors=True)  # keep the disk use bounded
        worker_rss = worker.stop()
        worker = None
        reported_at_end = reported_gib()
        facts["load average"] += f", {load_average()} at end"
        if reported_at_start is not None and reported_at_end is not None:
            facts["handed back"] = (
                f"{reported_at_end - reported_at_start:.1f} GiB of free memory reported to the "
                "host during the rounds"
            )
        facts["two-core check"] += f"; at end: {two_core_check(work)} (1.00x: as fast as alone)"
        text, ok = report(backups, restores, worker_rss, 1.8 if args.shape == "app" else 1.6)
        print()
        print(facts_block(facts))
        print()
        print(f"medians of {args.repeat} runs (min s: best run); MB = 10^6 bytes")
        print()
        print(text)
        return 0 if ok else 1
    finally:
        if worker is not None:
            worker.stop()
        redis_server.stop()
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.umask(0o077)
    sys.exit(main())
