"""Benchmark: latency of archiving one 16 MB WAL segment, ours vs plain `cp` and the `zstd` CLI.

    .venv/bin/python benchmarks/wal_push.py [--segments 6] [--repeat 3] [--rows 400000]

PostgreSQL runs archive_command once per segment, as a new process, and waits for it; so each
contender is timed as a whole process invocation (start-up included), storing one real segment
into an empty archive folder. Segments come from a throwaway cluster (initdb, needs the
PostgreSQL server binaries): "full" segments written by a bulk insert of mixed rows, and
"switched" ones closed early by pg_switch_wal() as archive_timeout does on a quiet database.
Contenders run round robin, `--repeat` times per segment; the table shows medians.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
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
    run_measured,
    tool_version,
)

from tests.support.services import PostgresCluster  # noqa: E402

VENV_BIN = Path(sys.executable).parent
SH_PORT = REPO / "scripts" / "lifeos-wal.sh"
SYSTEM_PYTHON = "/usr/bin/python3"
SEGMENT_SIZE = 16 * 1024 * 1024


@dataclass
class Contender:
    name: str
    argv: list[str]  # {src}, {dest_file}, {dest_dir} are substituted
    env: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, list[float]] = field(default_factory=dict)  # per segment class
    sizes: dict[str, list[int]] = field(default_factory=dict)
    rss_kb: list[int] = field(default_factory=list)


def contenders() -> list[Contender]:
    ours_dir = ["--archive-dir", "{dest_dir}"]
    found = [
        Contender("cp (PostgreSQL docs' example)", ["cp", "{src}", "{dest_file}"]),
        Contender("cp + fsync", ["sh", "-c", 'cp "$0" "$1" && sync "$1"', "{src}", "{dest_file}"]),
        Contender("zstd -1 CLI", ["zstd", "-q", "-1", "-f", "{src}", "-o", "{dest_file}"]),
        Contender("zstd -3 CLI", ["zstd", "-q", "-3", "-f", "{src}", "-o", "{dest_file}"]),
        Contender("lifeos-wal push", [str(VENV_BIN / "lifeos-wal"), "push", "{src}", *ours_dir]),
        Contender(
            "lifeos-backup wal-push",
            [str(VENV_BIN / "lifeos-backup"), "wal-push", "{src}", *ours_dir],
        ),
        Contender(
            "lifeos-wal.sh push (sh port)",
            ["sh", str(SH_PORT), "push", "{src}"],
            env={"LIFEOS_WAL_ARCHIVE_DIR": "{dest_dir}"},
        ),
    ]
    if os.access(SYSTEM_PYTHON, os.X_OK):
        found.append(
            Contender(
                "python3 -m lifeos_backup.wal (no zstandard: zstd command)",
                [SYSTEM_PYTHON, "-m", "lifeos_backup.wal", "push", "{src}", *ours_dir],
                env={"PYTHONPATH": str(REPO)},
            )
        )
    return found


def make_segments(work: Path, full: int, switched: int, rows: int) -> dict[str, list[Path]]:
    """Real WAL segments from a throwaway cluster, copied out of pg_wal."""
    # Keep every segment in pg_wal until we copied it (no archiving in this cluster).
    cluster = PostgresCluster(conf_lines=["wal_keep_size = 2GB", "max_wal_size = 4GB"])
    try:
        url = cluster.url()
        with psycopg.connect(url, autocommit=True) as conn:
            names: dict[str, list[str]] = {"full": [], "switched": []}
            conn.execute(
                "CREATE TABLE items (id bigserial PRIMARY KEY, owner int, name text,"
                " attrs jsonb, created timestamptz DEFAULT now())"
            )
            first = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()
            while len(names["full"]) < full:
                conn.execute(
                    "INSERT INTO items (owner, name, attrs) SELECT g %% 97,"
                    " md5(g::text) || ' item ' || g, jsonb_build_object('colour', g %% 13,"
                    " 'size', g %% 7, 'tags', ARRAY[md5((g*7)::text), 'x' || g %% 5])"
                    " FROM generate_series(1, %s) g",
                    (rows // 4,),
                )
                current = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()
                assert first and current
                names["full"] = _segment_names(str(first[0]), str(current[0]))[:full]
            conn.execute("SELECT pg_switch_wal()")  # close the bulk insert's last segment first
            for _ in range(switched):
                conn.execute("INSERT INTO items (owner, name) VALUES (1, 'small change')")
                row = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()
                assert row
                names["switched"].append(str(row[0]))
        out: dict[str, list[Path]] = {}
        for kind, wanted in names.items():
            folder = work / kind
            folder.mkdir(parents=True)
            out[kind] = []
            for name in wanted:
                shutil.copy(cluster.datadir / "pg_wal" / name, folder / name)
                out[kind].append(folder / name)
        return out
    finally:
        cluster.stop()


def _segment_names(first: str, current: str) -> list[str]:
    """Completed segments from `first` up to (not including) `current`, timeline 1."""
    start = int(first[8:16], 16) * 256 + int(first[16:], 16)
    end = int(current[8:16], 16) * 256 + int(current[16:], 16)
    return [f"00000001{n // 256:08X}{n % 256:08X}" for n in range(start, end)]


def run_one(c: Contender, src: Path, scratch: Path) -> tuple[float, int, int]:
    dest_dir = scratch / "archive"
    shutil.rmtree(dest_dir, ignore_errors=True)
    dest_dir.mkdir()
    dest_file = dest_dir / f"{src.name}.out"
    subst = {"{src}": str(src), "{dest_file}": str(dest_file), "{dest_dir}": str(dest_dir)}
    argv = [subst.get(a, a) for a in c.argv]
    env = {**os.environ, **{k: subst.get(v, v) for k, v in c.env.items()}}
    measured = run_measured(argv, env=env, cwd=src.parent)
    size = sum(p.stat().st_size for p in dest_dir.iterdir() if not p.name.startswith("."))
    return measured.seconds, size, measured.peak_rss_kb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--segments", type=int, default=6, help="full segments to archive")
    parser.add_argument("--switched", type=int, default=3, help="early-switched segments")
    parser.add_argument("--repeat", type=int, default=3, help="runs per contender and segment")
    parser.add_argument("--rows", type=int, default=400_000, help="rows per insert batch")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="lifeos-bench-wal-"))
    try:
        segments = make_segments(work / "segments", args.segments, args.switched, args.rows)
        found = contenders()
        load = load_average()
        for kind, paths in segments.items():
            for src in paths:
                src.read_bytes()  # warm page cache: measure archiving, not the first read
                for _ in range(args.repeat):
                    for c in found:
                        seconds, size, rss = run_one(c, src, work)
                        c.seconds.setdefault(kind, []).append(seconds)
                        c.sizes.setdefault(kind, []).append(size)
                        c.rss_kb.append(rss)
        print(report(found, segments, load))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def report(found: list[Contender], segments: dict[str, list[Path]], load: str) -> str:
    facts = machine_facts(
        {
            "zstd": tool_version(["zstd", "--version"]),
            "code": git_revision(REPO, ["lifeos_backup/wal", "scripts/lifeos-wal.sh"]),
            "load avg at start": load,
        }
    )
    parts = [facts_block(facts), ""]
    for kind, paths in segments.items():
        if not paths:
            continue
        raw = sum(p.stat().st_size for p in paths) / len(paths)
        rows = []
        for c in found:
            ms = median(c.seconds[kind]) * 1000
            size = median(c.sizes[kind])
            rows.append(
                [
                    c.name,
                    f"{ms:.1f}",
                    f"{raw / 1e6 / (ms / 1000):.0f}",
                    f"{size / 1e6:.2f}",
                    f"{raw / size:.1f}x" if size else "-",
                    f"{max(c.rss_kb) / 1024:.0f}",
                ]
            )
        title = f"{kind} segments: {len(paths)} x {raw / 1e6:.1f} MB, median of all runs"
        headers = ["contender", "ms / segment", "MB/s", "stored MB", "ratio", "peak RSS MiB"]
        parts += [f"#### {title}", "", markdown_table(headers, rows), ""]
    return "\n".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
