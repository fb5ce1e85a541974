"""A real Celery worker in a subprocess, and the LIFEOS_* environment it and the test share.

Integration tests never use eager mode: they send tasks through Redis to this worker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

from lifeos_backup.core.settings import Settings, get_settings
from lifeos_backup.storage.catalog import Catalog, open_catalog

CELERY = [sys.executable, "-m", "celery", "-A", "workers"]


@dataclass
class LifeosEnv:
    """LIFEOS_* variables of one test: its own backup root, app dir, catalog and Redis DB."""

    root: Path
    vars: dict[str, str] = field(default_factory=dict)

    @property
    def backup_root(self) -> Path:
        return Path(self.vars["LIFEOS_BACKUP_ROOT"])

    @property
    def app_dir(self) -> Path:
        return Path(self.vars["LIFEOS_APP_DIR"])

    def set(self, **values: str) -> None:
        """Change variables for this process (the test) and for workers started afterwards."""
        for key, value in values.items():
            self.vars[key] = value
            os.environ[key] = value
        get_settings.cache_clear()

    def subprocess_env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, **self.vars, **extra}

    def settings(self) -> Settings:
        return get_settings()

    def catalog(self) -> Catalog:
        return open_catalog(get_settings().effective_catalog_url)

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.vars["LIFEOS_REDIS_URL"])


class ChildProcess:
    """A child in its own session, its output appended to `log_path`."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            list(args),
            env=dict(env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def wait_for_log(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text.encode() in self.log_path.read_bytes():
                return
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.popen.args} exited early:\n{self.log()}")
            time.sleep(0.1)
        raise RuntimeError(f"no {text!r} after {timeout}s:\n{self.log()}")

    def kill(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)

    def stop(self, timeout: float = 20) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if not self._log.closed:
            self._log.close()


class WorkerProcess(ChildProcess):
    """`celery -A workers worker` as a child process; `kill()` is a real SIGKILL of the group."""

    def __init__(
        self,
        env: Mapping[str, str],
        log_path: Path,
        concurrency: int = 1,
        queues: str | None = None,
        hostname: str | None = None,
    ) -> None:
        self.hostname = hostname or f"test-{os.getpid()}-{time.monotonic_ns()}@%h"
        args = [
            *CELERY,
            "worker",
            "--loglevel=INFO",
            f"--concurrency={concurrency}",
            "--pool=prefork",
            "--without-mingle",
            "--without-gossip",
            f"--hostname={self.hostname}",
        ]
        if queues:
            args.append(f"--queues={queues}")
        super().__init__(args, env, log_path)

    def wait_ready(self, timeout: float = 30) -> None:
        self.wait_for_log(" ready.", timeout)

    def pool_pids(self) -> list[int]:
        """The worker's pool processes (children of its main process)."""
        children = Path(f"/proc/{self.popen.pid}/task/{self.popen.pid}/children")
        try:
            return [int(pid) for pid in children.read_text().split()]
        except OSError:
            return []
