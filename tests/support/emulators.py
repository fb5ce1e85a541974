"""Throwaway GCS and Azure Blob endpoints for tests: emulator processes on free ports.

GCS is `gcp-storage-emulator` (PyPI, a dev dependency) in memory; Azure is Azurite (npm package
`azurite`, installed by scripts/test.sh into .cache/azurite and run with node) in memory. Each
test gets its own bucket or container and a target description for LIFEOS_OFFSITE_TARGETS whose
credentials are the names of variables set in the test's environment.
"""

from __future__ import annotations

import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.http_process import HttpProcess
from tests.support.services import ServiceUnavailable, free_port

REPO = Path(__file__).resolve().parents[2]
AZURITE = REPO / ".cache" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
AZURITE_MISSING = (
    "Azurite missing: run scripts/test.sh (npm install --prefix .cache/azurite azurite)"
)
# Azurite's well-known development account (public, documented by Microsoft; not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


class GcsEmulator(HttpProcess):
    name = "gcs"

    def __init__(self) -> None:
        port = free_port()
        exe = str(Path(sys.executable).with_name("gcp-storage-emulator"))
        super().__init__(
            [exe, "start", "-H", "127.0.0.1", "--port", str(port), "-M", "-q"], port, "/"
        )

    def client(self) -> Any:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project="lifeos-test",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.url},
        )


class Azurite(HttpProcess):
    name = "azurite"

    def __init__(self) -> None:
        if not AZURITE.exists():
            raise ServiceUnavailable(AZURITE_MISSING)
        port = free_port()
        argv = [
            str(AZURITE),
            *("--blobHost", "127.0.0.1", "--blobPort", str(port)),
            *("--inMemoryPersistence", "--silent", "--loose", "--skipApiVersionCheck"),
            "--disableTelemetry",
        ]
        super().__init__(argv, port, f"/{AZURITE_ACCOUNT}?comp=list")

    @property
    def account_url(self) -> str:
        return f"{self.url}/{AZURITE_ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
            f"AccountKey={AZURITE_KEY};BlobEndpoint={self.account_url};"
        )

    def client(self) -> Any:
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string)


@dataclass
class RemoteBucket:
    """One test's bucket (or container) on some provider: its target and a way to look inside."""

    provider: str
    name: str
    prefix: str
    target: dict[str, Any]  # one entry of LIFEOS_OFFSITE_TARGETS
    env: dict[str, str] = field(default_factory=dict)  # the variables its credentials name
    handle: Any = None  # boto3 client, GCS bucket or Azure container client

    def names(self) -> list[str]:
        """Every object's name in the bucket, staging included."""
        if self.provider == "s3":
            pages = self.handle.get_paginator("list_objects_v2").paginate(Bucket=self.name)
            return sorted(o["Key"] for p in pages for o in p.get("Contents", []))
        if self.provider == "gcs":
            return sorted(b.name for b in self.handle.list_blobs())
        return sorted(b.name for b in self.handle.list_blobs())

    def get(self, key: str) -> bytes:
        if self.provider == "s3":
            return bytes(self.handle.get_object(Bucket=self.name, Key=key)["Body"].read())
        if self.provider == "gcs":
            return bytes(self.handle.blob(key).download_as_bytes())
        return bytes(self.handle.download_blob(key).readall())

    def metadata(self, key: str) -> dict[str, str]:
        if self.provider == "s3":
            return dict(self.handle.head_object(Bucket=self.name, Key=key)["Metadata"])
        if self.provider == "gcs":
            return dict(self.handle.get_blob(key).metadata or {})
        return dict(self.handle.get_blob_client(key).get_blob_properties().metadata or {})

    def put(self, key: str, data: bytes) -> None:
        """Overwrite an object behind our back (damage), keeping its metadata."""
        meta = self.metadata(key)
        if self.provider == "s3":
            self.handle.put_object(Bucket=self.name, Key=key, Body=data, Metadata=meta)
        elif self.provider == "gcs":
            blob = self.handle.blob(key)
            blob.metadata = meta
            blob.upload_from_string(data)
        else:
            self.handle.upload_blob(key, data, overwrite=True, metadata=meta)

    def delete(self, key: str) -> None:
        if self.provider == "s3":
            self.handle.delete_object(Bucket=self.name, Key=key)
        elif self.provider == "gcs":
            self.handle.blob(key).delete()
        else:
            self.handle.delete_blob(key)


def _name(name: str | None) -> str:
    return name or f"lifeos-test-{uuid.uuid4().hex[:12]}"


def s3_bucket(server: Any, target_name: str = "s3-b") -> RemoteBucket:
    """A bucket on a moto server, as a listed target with its credentials' variables."""
    client = server.client()
    name = _name(None)
    client.create_bucket(Bucket=name)
    env = {
        f"{target_name.upper().replace('-', '_')}_KEY_ID": server.credentials["AWS_ACCESS_KEY_ID"],
        f"{target_name.upper().replace('-', '_')}_SECRET": server.credentials[
            "AWS_SECRET_ACCESS_KEY"
        ],
    }
    key_id, secret = list(env)
    target = {
        "name": target_name,
        "provider": "s3",
        "bucket": name,
        "endpoint": server.url,
        "region": "us-east-1",
        "prefix": "lifeos",
        "credentials": {"access_key_id": key_id, "secret_access_key": secret},
    }
    return RemoteBucket("s3", name, "lifeos", target, env, client)


def gcs_bucket(emulator: GcsEmulator, target_name: str = "gcs-eu") -> RemoteBucket:
    name = _name(None)
    bucket = emulator.client().create_bucket(name)
    target = {
        "name": target_name,
        "provider": "gcs",
        "bucket": name,
        "endpoint": emulator.url,
        "prefix": "lifeos",
    }
    return RemoteBucket("gcs", name, "lifeos", target, {}, bucket)


def azure_container(azurite: Azurite, target_name: str = "azure-weu") -> RemoteBucket:
    name = _name(None)
    container = azurite.client().create_container(name)
    var = f"{target_name.upper().replace('-', '_')}_KEY"
    target = {
        "name": target_name,
        "provider": "azure",
        "container": name,
        "endpoint": azurite.account_url,
        "prefix": "lifeos",
        "credentials": {"account_key": var},
    }
    return RemoteBucket("azure", name, "lifeos", target, {var: AZURITE_KEY}, container)
