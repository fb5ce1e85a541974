"""Benchmark: a small PostgreSQL database end to end, CLI and workers, vs `pg_dump | gzip` and psql.

    .venv/bin/python benchmarks/small_database.py [--scale 3] [--documents 10000] [--repeat 7]

Most installations hold tens of MB, where fixed costs (process start-up, queue round trips,
polling, extra connections and passes) are the whole cost. This starts a throwaway PostgreSQL
cluster and Redis (tests/support/services.py), fills a database of about 60 MB (`pgbench -i -s 3`
plus a JSONB `documents` table, as benchmarks/postgres_backup.py builds it), starts the two
workers `lifeos-backup up` starts (`dumps`, concurrency 1; the others, concurrency 2), then runs
every contender `--repeat` times, round robin, each as its own command, and prints medians:

* backup: `lifeos-backup backup postgres --wait` (request -> created -> verified, printed id)
  against `pg_dump | gzip`;
* restore: `lifeos-backup restore postgres ID --database NAME` of the backup made in the same
  round against `gunzip -c | psql`, each into a new, empty database created beforehand, untimed,
  after a CHECKPOINT;
* for reference, the CLI's start-up alone (`python -c 'import lifeos_backup.cli.commands'`).

Exit status 0 when both targets hold (ours at most 1.2x the plain tool's median wall time).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

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
    run_measured,
    tool_version,
)
from postgres_backup import DB, build_database, checkpoint

REPO = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).parent / "lifeos-backup")
TARGET = 1.2  # ours may take at most this multiple of the plain tool's wall time


@dataclass
class Contender:
    key: str
    label: str
    run: Callable[[int], float]
    samples: list[float] = field(default_factory=list)

    @property
    def med(self) -> float:
        return median(self.samples)


class Bench:
    """The cluster, the workers and the CLI's environment of one run."""

    def __init__(self, cluster: object, redis_url: str, work: Path) -> None:
        from tests.support.worker import WorkerProcess

        self.cluster = cluster
        self.work = work
        self.url = cluster.url(DB)  # type: ignore[attr-defined]
        self.bindir: Path = cluster.bindir  # type: ignore[attr-defined]
        self.env = clean_env(
            drop_prefixes=("LIFEOS_",),
            LIFEOS_BACKUP_ROOT=str(work / "repo"),
            LIFEOS_REDIS_URL=redis_url,
            LIFEOS_DATABASE_URL=self.url,
            LIFEOS_PG_BIN_DIR=str(self.bindir),
            LIFEOS_LOG_LEVEL="INFO",
        )
        self.last_backup: str | None = None
        # The two workers of `lifeos-backup up` (lifeos_backup/service/up.py), no Beat or Flower.
        self.workers = [
            WorkerProcess(self.env, work / "worker-dumps.log", 1, "dumps", "dumps@%h"),
            WorkerProcess(
                self.env, work / "worker.log", 2, "uploads,drills,maintenance", "lifeos@%h"
            ),
        ]
        for worker in self.workers:
            worker.wait_ready(60)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()

    def tool(self, name: str) -> str:
        return str(self.bindir / name)

    def timed(self, cmd: list[str]) -> tuple[float, str]:
        m = run_measured(cmd, cwd=self.work, env=self.env)
        return m.seconds, m.stdout

    def shell(self, script: str) -> float:
        return self.timed(["bash", "-o", "pipefail", "-c", script])[0]

    def _fresh(self, label: str, rnd: int) -> str:
        name = f"r_{label}_{rnd}"
        self.cluster.drop_database(name)  # type: ignore[attr-defined]
        self.cluster.create_database(name)  # type: ignore[attr-defined]
        checkpoint(self.cluster)
        return name

    # contenders
    def ours_backup(self, rnd: int) -> float:
        seconds, stdout = self.timed([CLI, "backup", "postgres", "--wait", "--reason", "bench"])
        self.last_backup = stdout.split()[-1]
        return seconds

    def dump_gzip(self, rnd: int) -> float:
        return self.shell(f"{self.tool('pg_dump')} '{self.url}' | gzip > plain.sql.gz")

    def ours_restore(self, rnd: int) -> float:
        assert self.last_backup is not None
        target = self._fresh("ours", rnd)
        seconds, _ = self.timed(
            [CLI, "restore", "postgres", self.last_backup, "--database", target]
        )
        self.cluster.drop_database(target)  # type: ignore[attr-defined]
        return seconds

    def restore_psql(self, rnd: int) -> float:
        target = self._fresh("psql", rnd)
        seconds = self.shell(
            f"gunzip -c plain.sql.gz | {self.tool('psql')} -X -q -o /dev/null"
            f" -v ON_ERROR_STOP=1 -d '{self.cluster.url(target)}'"  # type: ignore[attr-defined]
        )
        self.cluster.drop_database(target)  # type: ignore[attr-defined]
        return seconds

    def cli_import(self, rnd: int) -> float:
        return self.timed([sys.executable, "-c", "import lifeos_backup.cli.commands"])[0]


def _rotated(items: list[Contender], by: int) -> list[Contender]:
    by %= len(items)
    return items[by:] + items[:by]


def report(backups: list[Contender], restores: list[Contender], start_up: Contender) -> tuple[
    str, bool
]:
    def rows(group: list[Contender]) -> list[list[str]]:
        base = group[-1]
        return [
            [c.label.replace("|", "\\|"), f"{c.med:.2f}", f"{min(c.samples):.2f}",
             f"{max(c.samples):.2f}", f"{c.med / base.med:.2f}x"]
            for c in group
        ]

    headers = ["contender", "median s", "min s", "max s", "vs plain tool"]
    backup = backups[0].med / backups[-1].med
    restore = restores[0].med / restores[-1].med
    checks = [
        (backup <= TARGET, f"backup: {backup:.2f}x the time of pg_dump | gzip (target <= "
                           f"{TARGET}x)"),
        (restore <= TARGET, f"restore: {restore:.2f}x the time of gunzip -c | psql (target <= "
                            f"{TARGET}x)"),
    ]
    lines = [
        "Backups",
        "",
        markdown_table(headers, rows(backups)),
        "",
        "Restores",
        "",
        markdown_table(headers, rows(restores)),
        "",
        "CLI start-up alone (python -c 'import lifeos_backup.cli.commands'): "
        f"median {start_up.med:.2f} s",
        "",
        *(f"{'PASS' if ok else 'FAIL'}  {text}" for ok, text in checks),
    ]
    return "\n".join(lines), all(ok for ok, _ in checks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=3, help="pgbench scale (default 3)")
    parser.add_argument("--documents", type=int, default=10_000, help="JSONB rows")
    parser.add_argument("--repeat", type=int, default=7, help="runs per contender (medians)")
    args = parser.parse_args(argv)

    from tests.support.services import PostgresCluster, RedisServer

    work = Path(tempfile.mkdtemp(prefix="lifeos-smalldb-"))
    cluster = PostgresCluster()
    redis_server = RedisServer()
    bench = None
    try:
        facts = machine_facts({
            "pg_dump": tool_version([str(cluster.bindir / "pg_dump"), "--version"]),
            "code": git_revision(REPO, ["lifeos_backup", "benchmarks", "workers", "tasks"]),
            "cluster": "throwaway initdb cluster, fsync=off (tests/support/services.py)",
        })
        facts.update(build_database(cluster, args.scale, args.documents))
        facts["load average"] = f"{load_average()} at start"
        bench = Bench(cluster, redis_server.url(1), work)
        backups = [
            Contender("ours", "lifeos-backup backup postgres --wait", bench.ours_backup),
            Contender("gzip", "pg_dump | gzip", bench.dump_gzip),
        ]
        restores = [
            Contender("ours", "lifeos-backup restore postgres", bench.ours_restore),
            Contender("psql", "gunzip -c | psql", bench.restore_psql),
        ]
        start_up = Contender("import", "import lifeos_backup.cli.commands", bench.cli_import)
        for rnd in range(args.repeat):
            # Alternate which goes first; our restore reads the backup made in this round.
            order = _rotated(backups, rnd) + _rotated(restores, rnd) + [start_up]
            for contender in order:
                checkpoint(cluster)
                seconds = contender.run(rnd)
                contender.samples.append(seconds)
                print(f"round {rnd + 1}: {contender.label}: {seconds:.2f} s", flush=True)
        facts["load average"] += f", {load_average()} at end"
        text, ok = report(backups, restores, start_up)
        print()
        print(facts_block(facts))
        print()
        print(f"medians of {args.repeat} runs, wall seconds of the whole command")
        print()
        print(text)
        return 0 if ok else 1
    finally:
        if bench is not None:
            bench.stop()
        redis_server.stop()
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.umask(0o077)
    sys.exit(main())
