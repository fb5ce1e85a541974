"""A child process serving HTTP on a local port: moto and the cloud emulators start through it."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.services import ServiceUnavailable, _tail


class HttpProcess:
    """`argv` started in a private folder (its log there), waited for until `ready_path` answers
    on 127.0.0.1:`port`; any HTTP reply, an error status too, means it is up."""

    name = "server"

    def __init__(
        self,
        argv: list[str],
        port: int,
        ready_path: str,
        timeout: float = 60,
        env: dict[str, str] | None = None,
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"lifeos-{self.name}-"))
        self.log = self.dir / f"{self.name}.log"
        self.port = port
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                argv,
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(self.url + ready_path, timeout=1):
                    return
            except urllib.error.HTTPError:
                return  # it answers: up
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.1)
        self.stop()
        raise ServiceUnavailable(f"{self.name} did not start:\n{_tail(self.log)}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def pause(self) -> None:
        """Stop answering (SIGSTOP): connections hang or are refused like an outage."""
        self._proc.send_signal(19)

    def resume(self) -> None:
        self._proc.send_signal(18)
