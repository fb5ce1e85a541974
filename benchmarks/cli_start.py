"""Benchmark: start-up of the read-only `lifeos-backup` commands, beside `python3 -c pass`.

    .venv/bin/python benchmarks/cli_start.py [--runs 10] [--target 0.3]

Operators call `list`, `status` and their kind in loops, so each command is timed as a whole
process (interpreter start, imports, the work, exit), `--runs` times, round robin; the table shows
median, best and worst wall seconds. The floor is `python3 -c pass` with the same interpreter.

The repository is made here, in a temporary folder: LIFEOS_BACKUP_ROOT points at it, one JSON
backup of three small files is created and verified with the plain functions
(jobs.backups.create_backup, verify_backup), so `list`, `show ID`, `ls ID`, `status` and `audit`
read a real SQLite catalog. `status` pings Redis and `flags get` reads it: a throwaway redis-server
(tests/support/services.py) answers both, as on a deployment. The machine's `LIFEOS_*` settings
are ignored. Verdict: PASS when every command's median is at most `--target` seconds; exit 0 then.
"""

from __future__ import annotations

import argparse
import json
import os
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
)

from tests.support.services import RedisServer  # noqa: E402

CLI = str(Path(sys.executable).parent / "lifeos-backup")


def make_repository(root: Path, env: dict[str, str]) -> str:
    """A repository with one verified JSON backup, made in a child with `env`; its id."""
    app = root / "app"
    for folder, name in (("data/characters", "a"), ("presets/x", "b"), ("configs/y", "c")):
        (app / folder).mkdir(parents=True)
        (app / folder / f"{name}.json").write_text(json.dumps({"id": name}))
    code = (
        "from lifeos_backup.core.settings import get_settings\n"
        "from lifeos_backup.jobs.backups import create_backup, verify_backup\n"
        "from lifeos_backup.storage.catalog import open_catalog\n"
        "s = get_settings(); c = open_catalog(s.effective_catalog_url)\n"
        "m = create_backup('json', s, c, reason='benchmark')\n"
        "verify_backup(m.backup_id, s, c)\n"
        "print(m.backup_id)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip().splitlines()[-1]


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1, 2):  # status answers 1/2 when degraded/critical
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--target", type=float, default=0.3)
    args = parser.parse_args(argv)

    redis_server = RedisServer()
    with tempfile.TemporaryDirectory(prefix="lifeos-cli-start-") as tmp:
        root = Path(tmp)
        env = clean_env(
            drop_prefixes=("LIFEOS_",),
            LIFEOS_BACKUP_ROOT=str(root / "backups"),
            LIFEOS_APP_DIR=str(root / "app"),
            LIFEOS_REDIS_URL=redis_server.url(1),
        )
        env.pop("PYTHONPROFILEIMPORTTIME", None)
        try:
            backup_id = make_repository(root, env)
            commands = {
                "python3 -c pass (floor)": [sys.executable, "-c", "pass"],
                "--help": [CLI, "--help"],
                "list": [CLI, "list"],
                "show ID": [CLI, "show", backup_id],
                "ls ID": [CLI, "ls", backup_id],
                "status": [CLI, "status"],
                "flags get NAME": [CLI, "flags", "get", "new_backend"],
                "audit": [CLI, "audit"],
            }
            seconds: dict[str, list[float]] = {name: [] for name in commands}
            for cmd in commands.values():  # once unmeasured: warm page cache and .pyc
                timed(cmd, env)
            for _ in range(args.runs):
                for name, cmd in commands.items():
                    seconds[name].append(timed(cmd, env))
        finally:
            redis_server.stop()

    rows, failed = [], []
    for name, values in seconds.items():
        floor = name.endswith("(floor)")
        verdict = "" if floor else ("PASS" if median(values) <= args.target else "FAIL")
        if verdict == "FAIL":
            failed.append(name)
        rows.append(
            [name, f"{median(values):.3f}", f"{min(values):.3f}", f"{max(values):.3f}", verdict]
        )
    revision = git_revision(REPO, ["lifeos_backup"])
    facts = machine_facts({"revision": revision, "load": load_average()})
    print(facts_block(facts))
    print(f"\n{args.runs} runs per command, round robin; target: median <= {args.target} s\n")
    print(markdown_table(["command", "median s", "min s", "max s", "verdict"], rows))
    print(f"\n{'FAIL: ' + ', '.join(failed) if failed else 'PASS: every command'}")
    return 1 if failed else 0


if __name__ == "__main__":
    os.umask(0o077)
    sys.exit(main())
