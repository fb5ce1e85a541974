"""Benchmark: recovery point (RPO) under a steady write load, archive_command vs the WAL stream.

    .venv/bin/python benchmarks/wal_rpo.py [--seconds 120] [--rate 50] [--archive-timeout 60]
        [--modes archive,stream,sync]

Each mode gets its own throwaway cluster (initdb, needs the PostgreSQL server binaries) whose
archive_command is `lifeos-wal push` (tests/support/pitr.py). One client commits one-row
transactions at `--rate` per second and records, for each, the moment the commit was
acknowledged and `pg_current_wal_insert_lsn()` read right after it (an upper bound of the
commit's end). Once a second a sampler reads what is on the backup host's disk as an LSN and
takes the recovery point: the age of the oldest acknowledged commit beyond that LSN, i.e. how
far back a loss of the primary at that moment reaches (0 when every commit is there).

- archive: archive_command alone (archive_timeout `--archive-timeout`, 60 as in the docs). On
  disk = the end LSN of the newest segment in the archive (segment name -> LSN).
- stream: `lifeos_backup.wal.stream.run` (pg_receivewal on a physical slot + the sealer), as
  `lifeos-backup wal stream` runs it, asynchronous; archive_command keeps running beside it.
  On disk = the end of what pg_receivewal wrote into the spool's newest segment: the `.partial`
  is pre-filled with zeros, so the written part is the last page with a WAL page header plus
  that page's last non-zero byte. (The primary's pg_stat_replication.write_lsn only moves with
  the receiver's status messages, once a second, and would overstate the figure.)
- sync: the same stream with `pg_receivewal --synchronous`, named in
  synchronous_standby_names; the client commits with synchronous_commit = on. On disk: as for
  the stream (pg_receivewal fsyncs each write before it acknowledges).

The test clusters run with synchronous_commit = off; the client sets `local` (archive, stream)
so that a commit is acknowledged once its WAL is flushed on the primary, as in production.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from _common import (  # noqa: E402  (the folder is not a package; sys.path is set above)
    facts_block,
    git_revision,
    load_average,
    machine_facts,
    markdown_table,
    median,
    tool_version,
)

from lifeos_backup.wal import stream as wal_stream  # noqa: E402
from lifeos_backup.wal.archive import SUFFIX  # noqa: E402
from lifeos_backup.wal.names import SEGMENT  # noqa: E402
from tests.support.pitr import ArchivingCluster, start_archiving_cluster  # noqa: E402

MODES = ("archive", "stream", "sync")
TITLES = {
    "archive": "archive_command alone (archive_timeout {timeout} s)",
    "stream": "WAL stream, asynchronous",
    "sync": "WAL stream, synchronous",
}
SLOT = "lifeos_bench_rpo"
WARMUP = 3.0  # seconds of load before the first sample
TARGET_P99 = 1.0  # seconds: the stream's target (issue: stream p99 <= 1 s)


@dataclass
class Commits:
    """(acknowledged at, LSN after) of every commit, in order; the writer appends, the sampler
    reads a prefix (list appends are atomic)."""

    when: list[float] = field(default_factory=list)
    lsn: list[int] = field(default_factory=list)


def parse_lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def segno_of(name: str, segsize: int) -> int:
    return int(name[8:16], 16) * (0x1_0000_0000 // segsize) + int(name[16:24], 16)


def archived_lsn(archive: Path, segsize: int) -> int:
    """End LSN of the newest finished segment in the archive (0: none)."""
    names = [
        e.name[: -len(SUFFIX)]
        for e in os.scandir(archive)
        if e.name.endswith(SUFFIX) and SEGMENT.match(e.name[: -len(SUFFIX)])
    ]
    return (segno_of(max(names), segsize) + 1) * segsize if names else 0


def written_end(path: Path, segsize: int, blcksz: int) -> int:
    """Bytes of a zero-padded `.partial` that pg_receivewal wrote: pages with a WAL page header
    (non-zero xlp_magic) form a prefix; within the last one, up to its last non-zero byte
    (rounded up to the 8-byte record alignment)."""
    with path.open("rb") as handle:

        def page(index: int) -> bytes:
            handle.seek(index * blcksz)
            return handle.read(blcksz)

        def written(index: int) -> bool:
            head = page(index)[:2]
            return len(head) == 2 and head != b"\0\0"

        lo, hi = 0, segsize // blcksz  # invariant: pages < lo written, pages >= hi not
        if not written(0):
            return 0
        lo = 1
        while lo < hi:
            mid = (lo + hi) // 2
            if written(mid):
                lo = mid + 1
            else:
                hi = mid
        last = lo - 1
        data = page(last).rstrip(b"\0")
        return last * blcksz + ((len(data) + 7) // 8) * 8


def spooled_lsn(spool: Path, segsize: int, blcksz: int) -> int:
    """End of the WAL pg_receivewal wrote into the spool (0: nothing yet)."""
    best = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(spool):
            name = entry.name
            if SEGMENT.match(name):
                best = max(best, (segno_of(name, segsize) + 1) * segsize)
            elif name.endswith(".partial") and SEGMENT.match(name[:24]):
                with contextlib.suppress(FileNotFoundError):
                    end = written_end(Path(entry.path), segsize, blcksz)
                    best = max(best, segno_of(name, segsize) * segsize + end)
    return best


def writer(url: str, rate: float, setting: str, commits: Commits, stop: threading.Event) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"SET synchronous_commit = {setting}")
        start = time.monotonic()
        count = 0
        while not stop.is_set():
            due = start + count / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            conn.execute("INSERT INTO events (at) VALUES (now())")
            acked = time.monotonic()
            row = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
            assert row is not None
            commits.lsn.append(parse_lsn(str(row[0])))
            commits.when.append(acked)
            count += 1


def sample(commits: Commits, on_disk: int, now: float, known: int) -> float:
    """Age of the oldest of the first `known` commits beyond `on_disk` (0: all are there)."""
    first = bisect.bisect_right(commits.lsn, on_disk, 0, known)
    return now - commits.when[first] if first < known else 0.0


def wait_for(what: str, check, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(psycopg.Error):
            if check():
                return
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")


def query(url: str, sql: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql, params or None)
        return cur.fetchall() if cur.description else []


@contextlib.contextmanager
def streaming(archiving: ArchivingCluster, mode: str) -> Iterator[Path]:
    """With mode "stream" or "sync", run `lifeos_backup.wal.stream.run` into a fresh spool
    beside the cluster's archive until the block ends ("sync": named in
    synchronous_standby_names, waited for until it is the synchronous standby); "archive" runs
    nothing. Yields the spool."""
    archiving.archive.chmod(0o2770)  # the stream (another OS user) seals into it too
    spool = Path(tempfile.mkdtemp(prefix="lifeos-bench-spool-"))
    stop_stream = threading.Event()
    thread = None
    lines: list[str] = []
    try:
        if mode != "archive":
            cluster = archiving.cluster
            url = cluster.url()
            cfg = wal_stream.StreamConfig(
                receivewal=str(cluster.bindir / "pg_receivewal"),
                conninfo=f"host=127.0.0.1 port={cluster.port} user=postgres dbname=postgres"
                f" application_name={SLOT}",
                spool=spool,
                archive=archiving.archive,
                slot=SLOT,
                synchronous=mode == "sync",
            )
            thread = threading.Thread(
                target=wal_stream.run, args=(cfg, stop_stream.is_set, lines.append),
                daemon=True,
            )  # fmt: skip
            thread.start()
            wait_for("the stream", lambda: query(
                url, "SELECT 1 FROM pg_stat_replication WHERE application_name = %s"
                " AND state = 'streaming'", SLOT))  # fmt: skip
            if mode == "sync":
                query(url, f"ALTER SYSTEM SET synchronous_standby_names = '{SLOT}'")
                query(url, "SELECT pg_reload_conf()")
                wait_for("a synchronous standby", lambda: query(
                    url, "SELECT 1 FROM pg_stat_replication WHERE application_name = %s"
                    " AND sync_state = 'sync'", SLOT))  # fmt: skip
        yield spool
    finally:
        stop_stream.set()
        if thread is not None:
            thread.join(60)
        shutil.rmtree(spool, ignore_errors=True)


def run_mode(mode: str, seconds: float, rate: float, archive_timeout: int) -> dict[str, object]:
    archiving: ArchivingCluster = start_archiving_cluster(archive_timeout=archive_timeout)
    try:
        url = archiving.cluster.url()
        # The checkpointer starts during recovery and then sleeps checkpoint_timeout before it
        # first looks at archive_timeout; a reload wakes it, as it would be long after a start.
        query(url, "SELECT pg_reload_conf()")
        query(url, "CREATE TABLE events (id bigserial PRIMARY KEY, at timestamptz)")
        segsize = int(
            str(query(url, "SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'")[0][0])
        )
        blcksz = int(
            str(query(url, "SELECT setting FROM pg_settings WHERE name = 'wal_block_size'")[0][0])
        )
        with streaming(archiving, mode) as spool:
            if mode == "archive":

                def on_disk() -> int:
                    return archived_lsn(archiving.archive, segsize)
            else:

                def on_disk() -> int:
                    return spooled_lsn(spool, segsize, blcksz)

            commits = Commits()
            stop = threading.Event()
            setting = "on" if mode == "sync" else "local"
            load = threading.Thread(target=writer, args=(url, rate, setting, commits, stop))
            load.start()
            try:
                time.sleep(WARMUP)
                ages: list[float] = []
                seen = 0
                tick = time.monotonic()
                end = tick + seconds
                while tick < end and load.is_alive():
                    tick += 1.0
                    time.sleep(max(0.0, tick - time.monotonic()))
                    known = len(commits.when)
                    seen = max(seen, on_disk())  # what reached the disk stays there
                    ages.append(sample(commits, seen, time.monotonic(), known))
            finally:
                stop.set()
                load.join(30)
        elapsed = commits.when[-1] - commits.when[0] if len(commits.when) > 1 else 0.0
        return {
            "mode": mode,
            "ages": ages,
            "commits": len(commits.when),
            "rate": (len(commits.when) - 1) / elapsed if elapsed else 0.0,
        }
    finally:
        archiving.stop()


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120, help="sampled seconds per mode")
    parser.add_argument("--rate", type=float, default=50, help="commits per second")
    parser.add_argument("--archive-timeout", type=int, default=60, help="archive_timeout, s")
    parser.add_argument("--modes", default=",".join(MODES), help="of " + ", ".join(MODES))
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown mode(s): {', '.join(sorted(unknown))}")

    # A SIGTERM ends the run through the `finally` blocks: the clusters stop, the folders go.
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))
    load = load_average()
    results = [run_mode(m, args.seconds, args.rate, args.archive_timeout) for m in modes]
    print(report(results, args, load))
    return 0


def report(results: list[dict[str, object]], args: argparse.Namespace, load: str) -> str:
    facts = machine_facts(
        {
            "postgres": tool_version(["pg_receivewal", "--version"]),
            "code": git_revision(REPO, ["lifeos_backup/wal", "benchmarks/wal_rpo.py"]),
            "load avg at start": load,
            "load": f"{args.rate:g} commits/s, {args.seconds:g} s sampled once a second per mode",
        }
    )
    rows = []
    verdict = ""
    for result in results:
        ages = list(result["ages"])  # type: ignore[call-overload]
        mode = str(result["mode"])
        p99 = percentile(ages, 99)
        rows.append(
            [
                TITLES[mode].format(timeout=args.archive_timeout),
                len(ages),
                f"{result['commits']} ({result['rate']:.1f}/s)",
                f"{median(ages):.3f}",
                f"{p99:.3f}",
                f"{max(ages):.3f}",
            ]
        )
        if mode == "stream":
            verdict = f"stream p99 {p99:.2f} s, target <= {TARGET_P99:g} s: " + (
                "PASS" if p99 <= TARGET_P99 else "FAIL"
            )
    headers = ["mode", "samples", "commits", "RPO median s", "p99 s", "max s"]
    parts = [facts_block(facts), "", markdown_table(headers, rows), ""]
    if verdict:
        parts += [verdict, ""]
    return "\n".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
