"""The Google Cloud Storage implementation of the off-site object store, on google-cloud-storage.

Every object is sent with the SDK's resumable upload and its CRC32C checked against the one the
service computed (`checksum="crc32c"`); its SHA-256 is taken in the same pass and compared with
the one the upload planned (staged.py). A multipart upload is the S3 model on GCS's own terms:
each part is an object under the staging prefix (listable, so a crashed upload resumes from the
parts still there), joined by server-side `compose` (32 sources a call, composites of composites
beyond) into the destination, then the parts are deleted. GCS caps a composite at 1024
components, hence `max_parts`.

Credentials: the service-account key file named by the target's `credentials.service_account_file`
variable, else Google's application default credentials; a target with an `endpoint` and no key
(an emulator) connects anonymously. Object Lock has no counterpart here (bucket retention policies
are set on the bucket by its owner).
"""

from __future__ import annotations

import contextlib
import posixpath
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import requests
from google.api_core import exceptions as gexc
from google.api_core.retry import Retry
from google.auth.exceptions import GoogleAuthError, TransportError
from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY
from google.resumable_media.common import DataCorruption, InvalidResponse

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

TIMEOUT = (10, 120)  # connect, read (seconds)
CHUNK = 8 << 20  # resumable upload chunk (a multiple of 256 KiB)
RETRY_SECONDS = 5.0  # of SDK retries per attempt allowed
COMPOSE_MAX = 32
MAX_PARTS = 1024  # components of one composite object

_SDK_ERRORS: tuple[type[BaseException], ...] = (
    gexc.GoogleAPIError,
    GoogleAuthError,
    requests.RequestException,
    DataCorruption,
    InvalidResponse,
)


def connect_target(target: Target, settings: Settings) -> GCSStore:
    """A store for one GCS target. The SDK retries reads, deletes and composes itself, with
    backoff, for about 5 s per LIFEOS_S3_MAX_ATTEMPTS; uploads are not retried by it (their body
    is hashed as it is read): the task and the sync retry them."""
    key_file = credential(target, "service_account_file")
    options = {"api_endpoint": target.endpoint} if target.endpoint else None
    if key_file:
        client = storage.Client.from_service_account_json(key_file, client_options=options)
    elif target.endpoint:
        from google.auth.credentials import AnonymousCredentials

        client = storage.Client(
            project="lifeos-backup", credentials=AnonymousCredentials(), client_options=options
        )
    else:
        client = storage.Client(client_options=options)
    attempts = settings.s3_max_attempts
    retry = DEFAULT_RETRY.with_timeout(RETRY_SECONDS * attempts) if attempts > 1 else None
    bucket = client.bucket(target.bucket)
    return GCSStore(client, bucket, target.prefix.strip("/"), target.where, retry)


def translate(exc: BaseException, what: str, where: str) -> LifeosError:
    """The SDK's exception -> ours, with a hint; never a credential."""
    if isinstance(exc, gexc.Unauthorized | gexc.Forbidden | GoogleAuthError) and not isinstance(
        exc, TransportError
    ):
        return ConfigError(
            f"{what}: off-site storage refused our credentials",
            f"{where}: {exc}",
            "check the target's service-account key and the bucket's permissions; not retried",
        )
    if isinstance(exc, gexc.NotFound) and "bucket" in str(exc).lower():
        return ConfigError(f"{what}: the bucket does not exist", f"{where}: {exc}", "create it")
    if isinstance(
        exc,
        gexc.TooManyRequests
        | gexc.ServerError
        | gexc.RetryError
        | requests.RequestException
        | TransportError
        | DataCorruption
        | InvalidResponse,
    ):
        return OffsiteError(
            f"{what}: off-site storage unreachable, busy or failing",
            f"{where}: {exc}",
            "it is retried with backoff",
        )
    return PermanentError(f"{what}: off-site storage refused the request", f"{where}: {exc}")


@contextlib.contextmanager
def gcs_errors(what: str, where: str) -> Iterator[None]:
    try:
        yield
    except _SDK_ERRORS as exc:
        raise translate(exc, what, where) from exc


def _not_found(exc: BaseException) -> bool:
    return isinstance(exc, gexc.NotFound)


@dataclass
class GCSStore(PrefixedKeys):
    """One bucket and prefix (store.ObjectStore)."""

    client: storage.Client
    bucket: storage.Bucket
    prefix: str
    where: str
    retry: Retry | None = None
    transient: tuple[type[BaseException], ...] = (
        requests.RequestException,
        gexc.ServerError,
        OSError,
    )
    max_parts: int = MAX_PARTS
    _staging: str = field(init=False)

    def __post_init__(self) -> None:
        self._staging = staging_root(self.prefix)

    def errors(self, what: str) -> contextlib.AbstractContextManager[None]:
        return gcs_errors(what, self.where)

    def refused(self, exc: BaseException) -> bool:
        if not isinstance(exc, _SDK_ERRORS):
            return False
        return not isinstance(translate(exc, "request", self.where), RetryableError)

    def check(self) -> None:
        self.bucket.reload(timeout=TIMEOUT, retry=None)

    def head(self, key: str) -> ObjectInfo | None:
        blob = self.bucket.get_blob(key, timeout=TIMEOUT, retry=self.retry)
        if blob is None:
            return None
        metadata = blob.metadata or {}
        return ObjectInfo(
            size=int(blob.size or 0),
            sha256=metadata.get("sha256"),
            checksum=metadata.get("checksum"),
        )

    def listing(self, prefix: str) -> Iterator[tuple[str, int]]:
        for blob in self.client.list_blobs(
            self.bucket, prefix=prefix, timeout=TIMEOUT, retry=self.retry
        ):
            yield blob.name, int(blob.size or 0)

    def chunks(self, key: str, start: int = 0, size: int = 1 << 20) -> Iterator[bytes]:
        reader = self.open(key, size)
        if start:
            cast(Any, reader).seek(start)
        while True:
            data = reader.read(size)
            if not data:
                return
            yield data

    def open(self, key: str, chunk: int = 1 << 20) -> Stream:
        blob = self.bucket.blob(key)
        return cast(
            Stream,
            blob.open("rb", chunk_size=max(chunk, 256 << 10), timeout=TIMEOUT, retry=self.retry),
        )

    def _send(
        self,
        key: str,
        body: Readable,
        size: int,
        checksum: str,
        metadata: dict[str, str],
        content_type: str,
    ) -> storage.Blob:
        """One object by resumable upload, CRC32C checked; deleted again unless its SHA-256 is
        `checksum`."""
        blob = self.bucket.blob(key, chunk_size=CHUNK)
        blob.metadata = {**metadata, "checksum": checksum}
        hashing = Hashing(body, size)
        blob.upload_from_file(
            hashing,
            size=size,
            content_type=content_type,
            checksum="crc32c",
            timeout=TIMEOUT,
            retry=None,
        )
        try:
            refuse_unless(hashing, checksum, key)
        except LifeosError:
            with contextlib.suppress(*_SDK_ERRORS):
                blob.delete(timeout=TIMEOUT, retry=self.retry)
            raise
        return blob

    def put(
        self, key: str, body: Readable, size: int, checksum: str, options: ObjectOptions
    ) -> None:
        self._send(key, body, size, checksum, dict(options.metadata), options.content_type)

    def delete(self, key: str) -> None:
        with contextlib.suppress(gexc.NotFound):
            self.bucket.blob(key).delete(timeout=TIMEOUT, retry=self.retry)

    def retain(self, key: str, mode: str, until: datetime) -> None:
        raise ConfigError(
            "Object Lock is an S3 setting",
            f"{self.where}: GCS keeps objects with the bucket's retention policy instead",
            "set a retention policy on the bucket",
        )

    # --- Multipart: parts as objects under the staging prefix, joined by compose ----------------

    def _part_prefix(self, upload_id: str) -> str:
        return posixpath.join(self._staging, upload_id) + "/"

    def start_upload(self, key: str, options: ObjectOptions) -> str:
        upload_id = uuid.uuid4().hex
        marker = self.bucket.blob(marker_key(self.prefix, upload_id))
        marker.metadata = marker_metadata(key, options)
        marker.upload_from_string(b"", timeout=TIMEOUT, retry=None)
        return upload_id

    def send_part(
        self, key: str, upload_id: str, number: int, body: Readable, size: int, checksum: str
    ) -> str:
        name = f"{self._part_prefix(upload_id)}{number:05d}"
        blob = self._send(name, body, size, checksum, {}, "application/octet-stream")
        return str(blob.generation)

    def parts(self, key: str, upload_id: str) -> dict[int, StoredPart] | None:
        if (
            self.bucket.get_blob(
                marker_key(self.prefix, upload_id), timeout=TIMEOUT, retry=self.retry
            )
            is None
        ):
            return None
        found: dict[int, StoredPart] = {}
        prefix = self._part_prefix(upload_id)
        for blob in self.client.list_blobs(
            self.bucket, prefix=prefix, timeout=TIMEOUT, retry=self.retry
        ):
            name = blob.name[len(prefix) :]
            if name.isdigit():
                found[int(name)] = StoredPart(int(name), int(blob.size), str(blob.generation))
        return found

    def complete(self, key: str, upload_id: str, parts: list[tuple[int, str, str]]) -> None:
        marker = self.bucket.get_blob(
            marker_key(self.prefix, upload_id), timeout=TIMEOUT, retry=self.retry
        )
        if marker is None:
            raise OffsiteError(f"upload {upload_id[:12]} of {key} is gone", self.where)
        content_type, metadata = options_of(marker.metadata or {})
        prefix = self._part_prefix(upload_id)
        # Each source at the generation that was sent: the very part, nothing written since.
        sources = [
            self.bucket.blob(f"{prefix}{number:05d}", generation=int(etag))
            for number, etag, _sum in parts
        ]
        round_ = 0
        while len(sources) > COMPOSE_MAX:  # composites of composites, 32 at a time
            joined = []
            for i in range(0, len(sources), COMPOSE_MAX):
                middle = self.bucket.blob(f"{prefix}c{round_}-{i // COMPOSE_MAX:05d}")
                middle.compose(sources[i : i + COMPOSE_MAX], timeout=TIMEOUT, retry=self.retry)
                joined.append(middle)
            sources, round_ = joined, round_ + 1
        destination = self.bucket.blob(key)
        destination.content_type = content_type
        destination.metadata = {**metadata, "checksum": composite([c for _n, _e, c in parts])}
        destination.compose(sources, timeout=TIMEOUT, retry=self.retry)
        self.abort(key, upload_id)

    def abort(self, key: str, upload_id: str) -> None:
        """Delete the upload's parts, then its marker (so a half-done abort is still listed)."""
        marker = marker_key(self.prefix, upload_id)
        prefix = self._part_prefix(upload_id)
        for blob in self.client.list_blobs(
            self.bucket, prefix=prefix, timeout=TIMEOUT, retry=self.retry
        ):
            if blob.name != marker:
                self.delete(blob.name)
        self.delete(marker)

    def uploads(self, prefix: str) -> Iterator[tuple[str, str]]:
        for blob in self.client.list_blobs(
            self.bucket, prefix=self._staging, timeout=TIMEOUT, retry=self.retry
        ):
            upload_id, _, name = blob.name[len(self._staging) :].partition("/")
            key = (blob.metadata or {}).get("key", "")
            if name == "upload" and key.startswith(prefix):
                yield key, upload_id
