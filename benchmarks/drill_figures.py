"""Recovery figures for docs/runbook.md, measured by the restore drills themselves.

Starts a throwaway PostgreSQL cluster (tests/support/services.py), loads the Life-OS reference
schema with `--rows` rows per main table plus a JSON tree of `--files` files, takes a verified
PostgreSQL and JSON backup, runs `lifeos-backup drill --json` (the same code as the weekly drill)
and prints the drill figures, the data sizes and `lifeos-backup status --json`.

    .venv/bin/python benchmarks/drill_figures.py --rows 20000 --files 2000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.lifeos_app import load_schema  # noqa: E402
from tests.support.services import PostgresCluster  # noqa: E402
from tests.support.trees import make_tree  # noqa: E402

CLI = str(Path(sys.executable).with_name("lifeos-backup"))


def fill(url: str, rows: int) -> None:
    """`rows` characters, each with one outfit and one composition; clothing and games too."""
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO characters (character_id, user_id, name, description, appearance, tags)"
            " SELECT 'c-' || i, 'u-' || (i %% 500), 'Character ' || i, repeat('lorem ', 40),"
            " jsonb_build_object('hair', 'red', 'n', i), ARRAY['tag' || (i %% 7)]"
            " FROM generate_series(1, %s) AS i",
            (rows,),
        )
        conn.execute(
            "INSERT INTO clothing_items (item_id, user_id, name, category, attributes)"
            " SELECT 'i-' || i, 'u-' || (i %% 500), 'Item ' || i, 'top', '{\"wool\": true}'"
            " FROM generate_series(1, %s) AS i",
            (rows,),
        )
        conn.execute(
            "INSERT INTO outfits (outfit_id, character_id, name, item_ids)"
            " SELECT 'o-' || i, 'c-' || i, 'Outfit ' || i, ARRAY['i-' || i]"
            " FROM generate_series(1, %s) AS i",
            (rows,),
        )
        conn.execute(
            "INSERT INTO compositions (composition_id, character_id, outfit_id, title, prompt)"
            " SELECT 'p-' || i, 'c-' || i, 'o-' || i, 'Scene ' || i, repeat('prompt ', 30)"
            " FROM generate_series(1, %s) AS i",
            (rows,),
        )
        conn.execute(
            "INSERT INTO board_games (game_id, name, min_players)"
            " SELECT 'g-' || i, 'Game ' || i, 2 FROM generate_series(1, 500) AS i"
        )


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=1800)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--files", type=int, default=2_000)
    opts = parser.parse_args()
    cluster = PostgresCluster()
    try:
        cluster.create_database("lifeos")
        url = cluster.url("lifeos")
        load_schema(url)
        fill(url, opts.rows)
        with psycopg.connect(url) as conn:
            size = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        work = Path(tempfile.mkdtemp(prefix="drill-figures-"))
        json_bytes = make_tree(work / "app", files=opts.files, size=3000)
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIFEOS_")}
        env.update(
            LIFEOS_BACKUP_ROOT=str(work / "backups"),
            LIFEOS_APP_DIR=str(work / "app"),
            LIFEOS_DATABASE_URL=url,
        )
        os.environ.update(env)
        from lifeos_backup.core.settings import get_settings
        from lifeos_backup.jobs.backups import create_backup, verify_backup
        from lifeos_backup.storage.catalog import open_catalog

        settings = get_settings()
        catalog = open_catalog(settings.effective_catalog_url)
        for kind in ("postgres", "json"):
            manifest = create_backup(kind, settings, catalog, reason="drill figures")
            verify_backup(manifest.backup_id, settings, catalog)
        drill = cli(env, "drill", "--json")
        status = cli(env, "status", "--json")
        report = {
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{os.cpu_count()} CPUs",
            "database_bytes": size[0] if size else None,
            "rows_per_main_table": opts.rows,
            "json_files": opts.files,
            "json_bytes": json_bytes,
            "backups": [
                {"id": b.id, "kind": b.kind, "size": b.size, "seconds": b.duration_s}
                for b in catalog.list()
            ],
            "drill_exit": drill.returncode,
            "drills": json.loads(drill.stdout or "[]"),
            "status": json.loads(status.stdout or "{}"),
        }
        print(json.dumps(report, indent=2, default=str))
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
