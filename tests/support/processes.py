"""Flower and Celery Beat as real child processes for the operations tests (like WorkerProcess).

Each runs in its own process group with its output in a log file; `kill()` is a real SIGKILL,
`stop()` a SIGTERM as `docker stop` or `lifeos-backup up` would send.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.support.worker import CELERY, ChildProcess


class BeatProcess(ChildProcess):
    """`celery -A workers beat` with the scheduler production uses (RedBeat) unless told."""

    def __init__(
        self, env: Mapping[str, str], log_path: Path, scheduler: Sequence[str] | None = None
    ) -> None:
        chosen = list(scheduler or ["-S", "redbeat.RedBeatScheduler"])
        super().__init__([*CELERY, "beat", "--loglevel=DEBUG", *chosen], env, log_path)


class FlowerProcess(ChildProcess):
    """`celery -A workers flower` on 127.0.0.1:`port`, basic auth from FLOWER_BASIC_AUTH."""

    def __init__(
        self, env: Mapping[str, str], log_path: Path, port: int, db: Path, auth: str
    ) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.auth = auth
        self.db = db  # where --persistent keeps its state
        args = [
            *CELERY, "flower", "--address=127.0.0.1", f"--port={port}",
            "--persistent=True", f"--db={db}", "--state_save_interval=1000",
        ]  # fmt: skip
        super().__init__(args, {**env, "FLOWER_BASIC_AUTH": auth}, log_path)

    def request(self, path: str, auth: str | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(self.url + path)
        if auth:
            token = base64.b64encode(auth.encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=10) as response:
                return int(response.status), response.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()

    def api(self, path: str) -> Any:
        status, body = self.request(path, self.auth)
        assert status == 200, (status, body[:500])
        return json.loads(body)

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"flower exited early:\n{self.log()}")
            try:
                if self.request("/healthcheck")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"flower not ready after {timeout}s:\n{self.log()}")
