"""The Azure Blob Storage implementation of the off-site object store, on azure-storage-blob.

Objects are block blobs. A multipart upload is Azure's block upload: each part is a block staged
with a transactional MD5 the service checks (`validate_content=True`) after its SHA-256 was
compared with the planned one; the blocks stay uncommitted (invisible) until `complete` commits
the list, which makes the blob appear whole at once. Staged blocks can be listed again after a
crash (`get_block_list("uncommitted")`), so an upload resumes from them; a marker object under
the staging prefix (staged.py) names each unfinished upload so the sync can find and abort it.
Azure drops uncommitted blocks itself after seven days; aborting removes the marker (and the blob
when nothing was committed to it).

Credentials: the target's `credentials.connection_string`, `account_key` or `sas_token` variable,
with the account URL as `endpoint` (account name taken from it for a key).
"""

from __future__ import annotations

import base64
import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast
from urllib.parse import urlparse

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import BlobBlock, BlobServiceClient, ContainerClient, ContentSettings

from lifeos_backup.core.errors import (
    ConfigError,
    LifeosError,
    OffsiteError,
    PermanentError,
    RetryableError,
)
from lifeos_backup.core.settings import Settings
from lifeos_backup.core.targets import Target, credential
from lifeos_backup.storage.offsite.staged import (
    Hashing,
    composite,
    marker_key,
    marker_metadata,
    options_of,
    refuse_unless,
    staging_root,
)
from lifeos_backup.storage.offsite.store import (
    ObjectInfo,
    ObjectOptions,
    PrefixedKeys,
    Readable,
    StoredPart,
    Stream,
)

MAX_PARTS = 50_000  # blocks of one block blob
_CLIENT = {"connection_timeout": 10, "read_timeout": 120}


def _account_name(url: str) -> str:
    """`acct` of https://acct.blob.core.windows.net, or the first path segment of an emulator's
    http://127.0.0.1:10000/devstoreaccount1."""
    parsed = urlparse(url)
    host = parsed.hostname or ""
    if host.endswith(".blob.core.windows.net"):
        return host.split(".", 1)[0]
    return parsed.path.strip("/").split("/", 1)[0]


def connect_target(target: Target, settings: Settings) -> AzureStore:
    """A store for one Azure target (the SDK retries each request `LIFEOS_S3_MAX_ATTEMPTS` times
    in all)."""
    retries: dict[str, Any] = {"retry_total": max(0, settings.s3_max_attempts - 1), **_CLIENT}
    connection_string = credential(target, "connection_string")
    if connection_string:
        service = BlobServiceClient.from_connection_string(connection_string, **retries)
    else:
        assert target.endpoint  # core.targets requires one without a connection string
        key = credential(target, "account_key")
        sas = credential(target, "sas_token")
        secret: Any = (
            {"account_name": _account_name(target.endpoint), "account_key": key} if key else sas
        )
        service = BlobServiceClient(target.endpoint, credential=secret, **retries)
    container = service.get_container_client(target.bucket)
    return AzureStore(container, target.prefix.strip("/"), target.where)


def translate(exc: BaseException, what: str, where: str) -> LifeosError:
    """The SDK's exception -> ours, with a hint; never a credential."""
    detail = f"{where}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    if isinstance(exc, ClientAuthenticationError):
        return ConfigError(
            f"{what}: off-site storage refused our credentials",
            detail,
            "check the target's account key, SAS token or connection string; not retried",
        )
    if isinstance(exc, ResourceNotFoundError) and "container" in str(exc).lower():
        return ConfigError(f"{what}: the container does not exist", detail, "create it first")
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return OffsiteError(
            f"{what}: off-site storage unreachable",
            detail,
            "check the target's endpoint and the network; it is retried with backoff",
        )
    if isinstance(exc, HttpResponseError):
        status = exc.status_code or 0
        if status in (401, 403):
            return ConfigError(f"{what}: off-site storage refused our credentials", detail)
        if status == 429 or status >= 500:
            return OffsiteError(f"{what}: off-site storage is busy or failing", detail)
        return PermanentError(f"{what}: off-site storage refused the request", detail)
    return OffsiteError(f"{what}: off-site request failed", detail)


@contextlib.contextmanager
def azure_errors(what: str, where: str) -> Iterator[None]:
    try:
        yield
    except AzureError as exc:
        raise translate(exc, what, where) from exc


def _names(metadata: dict[str, str]) -> dict[str, str]:
    """Our metadata under names Azure accepts (C# identifiers: `backup-id` -> `backup_id`)."""
    return {name.replace("-", "_"): value for name, value in metadata.items()}


def _block_id(upload_id: str, number: int) -> str:
    """Block ids of one blob must all have the same length: the upload id and a fixed-width
    part number, base64."""
    return base64.b64encode(f"{upload_id}-{number:06d}".encode()).decode()


def _block_number(upload_id: str, block_id: str) -> int | None:
    try:
        text = base64.b64decode(block_id).decode()
    except ValueError:
        return None
    owner, _, number = text.rpartition("-")
    return int(number) if owner == upload_id and number.isdigit() else None


@dataclass
class AzureStore(PrefixedKeys):
    """One container and prefix (store.ObjectStore)."""

    container: ContainerClient
    prefix: str
    where: str
    transient: tuple[type[BaseException], ...] = (AzureError, OSError)
    max_parts: int = MAX_PARTS

    def errors(self, what: str) -> contextlib.AbstractContextManager[None]:
        return azure_errors(what, self.where)

    def refused(self, exc: BaseException) -> bool:
        if not isinstance(exc, AzureError):
            return False
        return not isinstance(translate(exc, "request", self.where), RetryableError)

    def check(self) -> None:
        self.container.get_container_properties()

    def head(self, key: str) -> ObjectInfo | None:
        try:
            props = self.container.get_blob_client(key).get_blob_properties()
        except ResourceNotFoundError:
            return None
        metadata = props.metadata or {}
        return ObjectInfo(
            size=int(props.size), sha256=metadata.get("sha256"), checksum=metadata.get("checksum")
        )

    def listing(self, prefix: str) -> Iterator[tuple[str, int]]:
        for blob in self.container.list_blobs(name_starts_with=prefix):
            yield blob.name, int(blob.size)

    def chunks(self, key: str, start: int = 0, size: int = 1 << 20) -> Iterator[bytes]:
        downloader = self.container.download_blob(key, offset=start or None)
        yield from downloader.chunks()

    def open(self, key: str) -> Stream:
        return cast(Stream, self.container.download_blob(key))

    def put(
        self, key: str, body: Readable, size: int, checksum: str, options: ObjectOptions
    ) -> None:
        hashing = Hashing(body, size)
        blob = self.container.get_blob_client(key)
        blob.upload_blob(
            cast(Any, hashing),
            length=size,
            overwrite=True,
            metadata=_names({**options.metadata, "checksum": checksum}),
            content_settings=ContentSettings(content_type=options.content_type),
            validate_content=True,
            max_concurrency=1,
        )
        try:
            refuse_unless(hashing, checksum, key)
        except LifeosError:
            with contextlib.suppress(AzureError):
                blob.delete_blob()
            raise

    def delete(self, key: str) -> None:
        with contextlib.suppress(ResourceNotFoundError):
            self.container.delete_blob(key)

    def retain(self, key: str, mode: str, until: datetime) -> None:
        raise ConfigError(
            "Object Lock is an S3 setting",
            f"{self.where}: Azure keeps blobs with the container's immutability policy instead",
            "set an immutability policy on the container",
        )

    # --- Multipart: staged blocks, committed at once ---------------------------------------------

    def start_upload(self, key: str, options: ObjectOptions) -> str:
        upload_id = uuid.uuid4().hex[:16]
        self.container.upload_blob(
            marker_key(self.prefix, upload_id), b"", metadata=marker_metadata(key, options)
        )
        return upload_id

    def send_part(
        self, key: str, upload_id: str, number: int, body: Readable, size: int, checksum: str
    ) -> str:
        hashing = Hashing(body, size)
        data = hashing.read(size)  # one block in memory: the SDK's MD5 needs the whole of it
        refuse_unless(hashing, checksum, key)
        block_id = _block_id(upload_id, number)
        self.container.get_blob_client(key).stage_block(
            block_id, data, length=size, validate_content=True
        )
        return block_id

    def _marker(self, upload_id: str) -> dict[str, str] | None:
        try:
            props = self.container.get_blob_client(
                marker_key(self.prefix, upload_id)
            ).get_blob_properties()
        except ResourceNotFoundError:
            return None
        return dict(props.metadata or {})

    def parts(self, key: str, upload_id: str) -> dict[int, StoredPart] | None:
        if self._marker(upload_id) is None:
            return None
        try:
            _committed, uncommitted = self.container.get_blob_client(key).get_block_list(
                "uncommitted"
            )
        except ResourceNotFoundError:
            return {}
        found: dict[int, StoredPart] = {}
        for block in uncommitted:
            number = _block_number(upload_id, block.id)
            if number is not None:
                found[number] = StoredPart(number, int(block.size), block.id)
        return found

    def complete(self, key: str, upload_id: str, parts: list[tuple[int, str, str]]) -> None:
        marker = self._marker(upload_id)
        if marker is None:
            raise OffsiteError(f"upload {upload_id} of {key} is gone", self.where)
        content_type, metadata = options_of(marker)
        self.container.get_blob_client(key).commit_block_list(
            [BlobBlock(block_id=etag) for _number, etag, _sum in parts],
            metadata=_names({**metadata, "checksum": composite([c for _n, _e, c in parts])}),
            content_settings=ContentSettings(content_type=content_type),
        )
        self.delete(marker_key(self.prefix, upload_id))

    def abort(self, key: str, upload_id: str) -> None:
        with contextlib.suppress(ResourceNotFoundError):
            committed, _uncommitted = self.container.get_blob_client(key).get_block_list("all")
            if not committed:  # only staged blocks: the blob is ours to drop
                self.delete(key)
        self.delete(marker_key(self.prefix, upload_id))

    def uploads(self, prefix: str) -> Iterator[tuple[str, str]]:
        staging = staging_root(self.prefix)
        for blob in self.container.list_blobs(name_starts_with=staging, include=["metadata"]):
            upload_id, _, name = blob.name[len(staging) :].partition("/")
            key = (blob.metadata or {}).get("key", "")
            if name == "upload" and key.startswith(prefix):
                yield key, upload_id
