"""The whole system as operators run it, for the fault campaign: `lifeos-backup up` (two workers,
Beat, Flower) on a Redis and a PostgreSQL of its own that faults may take away, a Life-OS app
folder, and the backup repository on a small tmpfs that a fault may fill.

Every process of the stack carries one marker in its environment, so the campaign finds them
(workers, their pool processes, pg_dump) through /proc, as an operator would with `ps`.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from tests.support.services import (
    PostgresCluster,
    StoppableRedis,
    free_port,
    temporary_database,
)
from tests.support.trees import make_tree

CLI = str(Path(sys.executable).parent / "lifeos-backup")
MARKER = "LIFEOS_FAULT_CAMPAIGN"
TMPFS_SIZE = "768m"


@dataclass
class Proc:
    pid: int
    ppid: int
    name: str  # comm
    cmdline: str


def processes() -> dict[int, Proc]:
    found: dict[int, Proc] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat.rpartition(")")[2].split()
            if fields[0] == "Z":
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            found[int(entry.name)] = Proc(int(entry.name), int(fields[1]), name, cmdline)
    return found


@dataclass
class Stack:
    """One running system under test, in folder `work`."""

    work: Path
    big: bool = True  # the long campaign's data; the test suite's is smaller (faster setup)
    marker: str = field(default_factory=lambda: uuid.uuid4().hex)
    redis: StoppableRedis | None = None
    cluster: PostgresCluster | None = None
    database_url: str = ""
    tmpfs: bool = False
    up: subprocess.Popen[str] | None = None
    lines: list[str] = field(default_factory=list)
    _database: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    @property
    def root(self) -> Path:
        return self.work / "root"

    @property
    def app_dir(self) -> Path:
        return self.work / "app"

    @property
    def tmpdir(self) -> Path:
        return self.work / "tmp"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LIFEOS_", "FLOWER_"))}
        env.update(self.settings_env(), TMPDIR=str(self.tmpdir), PYTHONUNBUFFERED="1")
        env[MARKER] = self.marker
        return env

    def settings_env(self) -> dict[str, str]:
        assert self.redis is not None
        return {
            "LIFEOS_BACKUP_ROOT": str(self.root),
            "LIFEOS_APP_DIR": str(self.app_dir),
            "LIFEOS_REDIS_URL": self.redis.url(),
            "LIFEOS_DATABASE_URL": self.database_url,
            "LIFEOS_FLOWER_PORT": str(self.flower_port),
            "LIFEOS_METRICS_PORT": "0",
            "LIFEOS_DASHBOARD_PORT": "0",
            "LIFEOS_RETENTION_JSON": "last=3",
            "LIFEOS_RETENTION_POSTGRES": "last=3",
            "LIFEOS_RETRY_BACKOFF_MAX": "4",
            "LIFEOS_RETRY_MAX": "8",
            "LIFEOS_SCHEDULE_HEALTH": "* * * * *",  # the sweeper runs with every health check
            "LIFEOS_HEALTH_MIN_FREE_DISK": "0",
        }

    # ------------------------------------------------------------------ start and stop

    def start(self) -> None:
        for folder in (self.work, self.app_dir, self.tmpdir, self.root):
            folder.mkdir(parents=True, exist_ok=True)
        self.tmpfs = _mount_tmpfs(self.root)
        self.flower_port = free_port()
        self.redis = StoppableRedis()
        self.cluster = PostgresCluster()
        database = self._database.enter_context(temporary_database(self.cluster, "lifeos_faults_"))
        self.database_url = database.url
        _fill_database(database.url, rows=1_500_000 if self.big else 300_000)
        make_tree(self.app_dir, files=6000 if self.big else 1500, size=12_000)
        self.start_up()

    def start_up(self) -> None:
        self.up = subprocess.Popen(
            [CLI, "up"], env=self.env(), cwd=self.work, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(lines,), daemon=True).start()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                if "running" in lines.get(timeout=1) and self.children_alive():
                    return
            if self.up.poll() is not None:
                break
        raise RuntimeError("`lifeos-backup up` did not start:\n" + "\n".join(self.lines[-40:]))

    def _read(self, lines: queue.Queue[str]) -> None:
        assert self.up is not None and self.up.stdout is not None
        for line in self.up.stdout:
            self.lines.append(line.rstrip())
            lines.put(line)

    def stop(self) -> None:
        if self.up is not None and self.up.poll() is None:
            self.up.send_signal(signal.SIGTERM)
            try:
                self.up.wait(90)
            except subprocess.TimeoutExpired:
                self.up.kill()
                self.up.wait()
        for proc in self.mine():  # whatever a failure left
            with contextlib.suppress(OSError):
                os.kill(proc.pid, signal.SIGKILL)
        self._database.close()
        if self.cluster is not None:
            self.cluster.stop()
        if self.redis is not None:
            self.redis.stop()
        if self.tmpfs:
            subprocess.run(["umount", "-l", str(self.root)], check=False)

    # ------------------------------------------------------------------ its processes

    def mine(self) -> list[Proc]:
        """Every live process of the stack (the marker is in its environment)."""
        wanted = f"{MARKER}={self.marker}".encode()
        found = []
        for proc in processes().values():
            with contextlib.suppress(OSError):
                if wanted in Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0"):
                    found.append(proc)
        return found

    def worker_mains(self) -> list[Proc]:
        assert self.up is not None
        return [p for p in self.mine() if p.ppid == self.up.pid and " worker " in p.cmdline]

    def pool_processes(self) -> list[Proc]:
        mains = {p.pid for p in self.worker_mains()}
        return [p for p in self.mine() if p.ppid in mains]

    def dump_processes(self) -> list[Proc]:
        return [p for p in self.mine() if p.name in ("pg_dump", "psql")]

    def children_alive(self) -> bool:
        """`up` runs two workers, Beat and Flower."""
        assert self.up is not None
        if self.up.poll() is not None:
            return False
        kids = [p.cmdline for p in self.mine() if p.ppid == self.up.pid]
        return (
            sum(" worker " in c for c in kids) == 2
            and any(" beat " in c for c in kids)
            and any(" flower " in c for c in kids)
        )


def _mount_tmpfs(path: Path) -> bool:
    """The repository on its own small file system, so a fault can fill it (needs root)."""
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs", str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return result.returncode == 0


def _fill_database(url: str, rows: int) -> None:
    """A small Life-OS-like database: a few tables, one of them big enough to be sliced."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE characters (id serial PRIMARY KEY, name text NOT NULL, traits jsonb);"
            "CREATE INDEX ON characters USING gin (traits);"
            "CREATE TABLE events (id bigint PRIMARY KEY, character_id int, body text);"
            "INSERT INTO characters (name, traits) SELECT 'c' || g, "
            "jsonb_build_object('level', g) FROM generate_series(1, 5000) g;"
            "INSERT INTO events SELECT g, g % 5000, repeat(md5(g::text), 2) "
            f"FROM generate_series(1, {rows}) g;"
        )
        conn.execute("VACUUM ANALYZE")
