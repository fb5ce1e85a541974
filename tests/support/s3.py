"""A throwaway S3 endpoint for tests: a moto server process over HTTP (never in-process mocks).

One server per session on a free 127.0.0.1 port; every test gets its own bucket.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

from tests.support.services import ServiceUnavailable, _tail, free_port

REGION = "us-east-1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "lifeos-test", "AWS_SECRET_ACCESS_KEY": "lifeos-test-secret"}


class MotoServer:
    """`python -m moto.server` as a child process; `url` is its endpoint."""

    def __init__(self, start_timeout: float = 30) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="lifeos-moto-"))
        self.log = self.dir / "moto.log"
        self.port = free_port()
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(self.url + "/moto-api/", timeout=1):
                    return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.1)
        self.stop()
        raise ServiceUnavailable(f"moto server did not start:\n{_tail(self.log)}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


@dataclass
class Bucket:
    """One test's bucket on the moto server, and the client to look inside it."""

    name: str
    prefix: str
    client: Any
    endpoint: str

    def keys(self) -> list[str]:
        reply = self.client.list_objects_v2(Bucket=self.name)
        return sorted(obj["Key"] for obj in reply.get("Contents", []))

    def get(self, key: str) -> bytes:
        return bytes(self.client.get_object(Bucket=self.name, Key=key)["Body"].read())

    def uploads(self) -> list[dict[str, Any]]:
        return list(self.client.list_multipart_uploads(Bucket=self.name).get("Uploads", []))


def new_bucket(server: MotoServer, object_lock: bool = False) -> Bucket:
    client = server.client()
    name = f"lifeos-test-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=object_lock)
    return Bucket(name, "lifeos", client, server.url)


def closed_port_url() -> str:
    """An endpoint where nothing listens: connections are refused at once."""
    return f"http://127.0.0.1:{free_port()}"
