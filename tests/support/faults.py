"""Servers a test can take away and bring back: a Redis that stops and starts on the same port.

The session's Redis (tests/support/services.py) serves every test and must never go away; a
fault test starts one of these instead.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType

import redis

from tests.support.services import ServiceUnavailable, find_redis_server, free_port


class StoppableRedis:
    """A redis-server on a fixed 127.0.0.1 port; `stop()` and `start()` as often as needed.

    `persistent`: an append-only file (fsync always) keeps the data across a stop, as a Redis
    configured for a queue should; without it a restart comes back empty (a flushed Redis).
    """

    def __init__(self, folder: Path, persistent: bool = False) -> None:
        self.folder = folder / f"redis-{free_port()}"
        self.folder.mkdir(parents=True)
        self.port = free_port()
        self.persistent = persistent
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> StoppableRedis:
        self.start()
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self, timeout: float = 30) -> None:
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else [
            "--appendonly", "no"
        ]  # fmt: skip
        log = (self.folder / "redis.log").open("ab")
        self._proc = subprocess.Popen(
            [find_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--dir", str(self.folder), "--daemonize", "no", *persistence],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with redis.Redis.from_url(self.url, socket_timeout=1) as client:
                    if client.ping():
                        return
            except redis.RedisError:
                time.sleep(0.05)
        raise ServiceUnavailable(f"redis-server on port {self.port} did not start")

    def stop(self) -> None:
        """Gone at once, like a crash or a network cut (what was fsynced stays)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None
