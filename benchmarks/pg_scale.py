"""Benchmark: PostgreSQL backup and restore at several sizes, beside `pg_dump | gzip` and psql.

    .venv/bin/python benchmarks/pg_scale.py [--sizes 50,500,2000] [--repeat 1]

For each size (MB of database, about): a throwaway cluster (tests/support/services.py) with
`pgbench -i` at the scale that gives that size plus a JSONB table of the same share as in
postgres_backup.py, then, round robin, `--repeat` times each:

* lifeos create+verify (plain functions in a fresh interpreter: wall time, peak RSS of its tree,
  pg_dump included) beside `pg_dump | gzip`;
* lifeos restore (2 jobs) beside `gunzip -c | psql`, each into a new empty database.

It prints one row per size: our seconds and peak RSS beside the plain tools', and the ratios
(speed-up: the plain tool's seconds over ours). The per-size figures of the end-to-end paths
(CLI and a running worker) are benchmarks/small_database.py's; the 1-2 GB contender table with
every variant is postgres_backup.py's. Exit status 0 always: this benchmark reports a curve,
the targets are checked by the others.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import facts_block, git_revision, machine_facts, markdown_table, median, tool_version
from postgres_backup import DB, DOCUMENTS_SQL, Bench, Sample, checkpoint, psql

REPO = Path(__file__).resolve().parent.parent
# pgbench scale 1 is about 15 MB; the JSONB rows add about 45 % of the pgbench tables' size.
MB_PER_SCALE = 22.0
DOCUMENTS_PER_SCALE = 8600


def build(cluster: Any, megabytes: int) -> str:
    """pgbench + documents of about `megabytes`; returns its measured size in MB."""
    scale = max(1, round(megabytes / MB_PER_SCALE))
    cluster.create_database(DB)
    subprocess.run(
        [str(cluster.bindir / "pgbench"), "-i", "-q", "-s", str(scale), "-d", cluster.url(DB)],
        capture_output=True, check=True,
    )
    rows = scale * DOCUMENTS_PER_SCALE
    psql(cluster, DB, "-c", DOCUMENTS_SQL.replace("%(rows)s", str(rows)))
    psql(cluster, DB, "-c", "VACUUM ANALYZE")
    size = int(psql(cluster, DB, "-c", "SELECT pg_database_size(current_database())"))
    return f"{size / 1e6:,.0f}"


def one_size(megabytes: int, repeat: int) -> list[str]:
    from tests.support.services import PostgresCluster

    work = Path(tempfile.mkdtemp(prefix="lifeos-pgscale-"))
    cluster = PostgresCluster()
    try:
        size = build(cluster, megabytes)
        bench = Bench(cluster, work, "redis://127.0.0.1:1/0")  # no worker row here
        runs: dict[str, list[Sample]] = {"ours": [], "gzip": [], "restore": [], "psql": []}
        for rnd in range(repeat):
            for key, run in (
                ("ours", bench.ours_backup), ("gzip", bench.dump_gzip),
                ("restore", bench.ours_restore(2)), ("psql", bench.restore_psql),
            ):
                checkpoint(cluster)
                sample = run(rnd)
                runs[key].append(sample)
                print(f"{size} MB round {rnd + 1}: {key}: {sample.seconds:.2f} s", flush=True)
            shutil.rmtree(work / "ours", ignore_errors=True)

        def sec(key: str) -> float:
            return median([s.seconds for s in runs[key]])

        def rss(key: str) -> str:
            return f"{max(s.rss_kb for s in runs[key]) / 1024:.0f}"

        return [
            size,
            f"{sec('ours'):.2f}", rss("ours"), f"{sec('gzip'):.2f}", rss("gzip"),
            f"{sec('gzip') / sec('ours'):.2f}x",
            f"{sec('restore'):.2f}", rss("restore"), f"{sec('psql'):.2f}", rss("psql"),
            f"{sec('psql') / sec('restore'):.2f}x",
        ]
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


HEADERS = [
    "database MB", "lifeos backup s", "RSS MiB", r"pg_dump \| gzip s", "RSS MiB", "speed-up",
    "lifeos restore s", "RSS MiB", r"gunzip -c \| psql s", "RSS MiB", "speed-up",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,500,2000", help="database sizes in MB, about")
    parser.add_argument("--repeat", type=int, default=1, help="runs per contender (medians)")
    args = parser.parse_args(argv)
    from tests.support.services import find_pg_bindir

    bindir = find_pg_bindir()
    facts = machine_facts({
        "pg_dump": tool_version([str(bindir / "pg_dump"), "--version"]),
        "gzip": tool_version(["gzip", "--version"]),
        "code": git_revision(REPO, ["lifeos_backup", "benchmarks"]),
        "backup": "lifeos create+verify in a fresh interpreter (RSS: its tree, pg_dump included)",
        "restore": "lifeos restore, 2 jobs; gunzip -c | psql; each into a new empty database",
    })
    rows = [one_size(int(mb), args.repeat) for mb in args.sizes.split(",")]
    print()
    print(facts_block(facts))
    print()
    print(f"medians of {args.repeat} run(s); RSS: peak of the run's process tree")
    print()
    print(markdown_table(HEADERS, rows))
    return 0


if __name__ == "__main__":
    os.umask(0o077)
    sys.exit(main())
