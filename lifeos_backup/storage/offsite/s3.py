"""The S3 implementation of the off-site object store (`store.ObjectStore`), on boto3.

One `S3Store` is one bucket and prefix with a thread-safe low-level client, reached by
`connect()`; it also turns botocore's failures into our errors.

Credentials come only from the standard AWS chain (environment, shared files, instance or task
role): never from our settings, task arguments or logs. botocore retries each request itself
("standard" mode: exponential backoff with jitter, also on 503 SlowDown and throttling);
what still fails becomes an OffsiteError (retryable: the Celery task backs off and retries, the
next sync tries again) or a ConfigError/PermanentError (retrying cannot help).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import boto3
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)

from lifeos_backup.core.errors import (
    ConfigError,
    LifeosError,
    OffsiteError,
    PermanentError,
    RetryableError,
)
from lifeos_backup.core.settings import Settings
from lifeos_backup.core.targets import Target, credential, legacy
from lifeos_backup.storage.offsite.store import (
    ObjectInfo,
    ObjectOptions,
    PrefixedKeys,
    Readable,
    StoredPart,
    Stream,
)

CONNECT_TIMEOUT = 10
READ_TIMEOUT = 120
_RETRYABLE_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "503",
    "500",
    "502",
    "504",
}
_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "403",
}


def require_bucket(settings: Settings) -> str:
    """The bucket, or a clear error for commands that need off-site storage."""
    if not settings.s3_bucket:
        raise ConfigError(
            "off-site storage is not configured",
            "LIFEOS_S3_BUCKET is not set",
            "set LIFEOS_S3_BUCKET (and LIFEOS_S3_ENDPOINT_URL for MinIO or another S3 service)",
        )
    return settings.s3_bucket


def client_config(settings: Settings, path_style: bool) -> Config:
    return Config(
        # total_max_attempts counts the first try too (botocore's max_attempts would not).
        retries={"total_max_attempts": settings.s3_max_attempts, "mode": "standard"},
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        max_pool_connections=max(10, settings.s3_concurrency + 2),
        # MinIO and most S3-compatible services want path-style URLs; AWS picks by itself.
        s3={"addressing_style": "path" if path_style else "auto"},
    )


def connect(settings: Settings) -> S3Store:
    """A store for LIFEOS_S3_BUCKET (the target `s3`); ConfigError when it is not set."""
    bucket = require_bucket(settings)
    target = legacy(bucket, settings.s3_prefix, settings.s3_endpoint_url, settings.s3_region)
    return connect_target(target, settings)


def connect_target(target: Target, settings: Settings) -> S3Store:
    """A store for one S3 target: LIFEOS_S3_*'s (storage class, encryption at rest apply) or one
    of LIFEOS_OFFSITE_TARGETS (credentials from the variables it names, else the AWS chain)."""
    session = boto3.session.Session(
        aws_access_key_id=credential(target, "access_key_id"),
        aws_secret_access_key=credential(target, "secret_access_key"),
        aws_session_token=credential(target, "session_token"),
    )
    client = session.client(
        "s3",
        endpoint_url=target.endpoint or None,
        region_name=target.region or None,
        config=client_config(settings, bool(target.endpoint)),
    )
    return S3Store(
        client,
        target.bucket,
        target.prefix.strip("/"),
        target.where if not target.legacy else target.where.split(": ", 1)[1],
        storage_class=settings.s3_storage_class if target.legacy else None,
        server_side_encryption=settings.s3_server_side_encryption if target.legacy else None,
        sse_kms_key_id=settings.s3_sse_kms_key_id if target.legacy else None,
    )


def error_code(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    return str(error.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))


def is_not_found(exc: ClientError) -> bool:
    return error_code(exc) in ("404", "NoSuchKey", "NotFound", "NoSuchUpload")


def translate(exc: BaseException, what: str, where: str) -> LifeosError:
    """botocore's exception -> ours, with what was being done and a hint; never a credential."""
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return ConfigError(
            f"{what}: no credentials for off-site storage",
            str(exc),
            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or an AWS profile or role",
        )
    if isinstance(exc, ConnectionError | HTTPClientError):
        return OffsiteError(
            f"{what}: off-site storage unreachable",
            f"{where}: {exc}",
            "check LIFEOS_S3_ENDPOINT_URL and the network; it is retried with backoff",
        )
    if isinstance(exc, ClientError):
        code = error_code(exc)
        message = exc.response.get("Error", {}).get("Message") or str(exc)
        detail = f"{where}: {code}: {message}"
        if code == "NoSuchBucket":
            return ConfigError(f"{what}: the bucket does not exist", detail, "create it first")
        if code in _CREDENTIAL_CODES:  # retrying only delays the alarm (and may lock a key)
            return ConfigError(
                f"{what}: off-site storage refused our credentials",
                detail,
                "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and the bucket policy; not "
                "retried (the daily sync tries again)",
            )
        if code == "InvalidRequest" and "ObjectLock" in message.replace(" ", ""):
            return ConfigError(
                f"{what}: the bucket does not support Object Lock",
                detail,
                "enable Object Lock on the bucket or unset LIFEOS_S3_OBJECT_LOCK_DAYS",
            )
        if code in _RETRYABLE_CODES or code.startswith("5"):
            return OffsiteError(f"{what}: off-site storage is busy or failing", detail)
        return PermanentError(f"{what}: off-site storage refused the request", detail)
    if isinstance(exc, BotoCoreError):
        return OffsiteError(f"{what}: off-site request failed", f"{where}: {exc}")
    raise exc


@contextlib.contextmanager
def s3_errors(what: str, where: str = "S3") -> Iterator[None]:
    """Translate botocore failures inside the block (ours pass through untouched)."""
    try:
        yield
    except (BotoCoreError, ClientError) as exc:
        raise translate(exc, what, where) from exc


def _no_such_upload(exc: ClientError) -> bool:
    return error_code(exc) in ("NoSuchUpload", "404")


@dataclass
class S3Store(PrefixedKeys):
    """One bucket and prefix with a thread-safe low-level client (store.ObjectStore)."""

    client: BaseClient
    bucket: str
    prefix: str
    where: str  # endpoint and bucket, for messages (no credentials)
    storage_class: str | None = None
    server_side_encryption: str | None = None
    sse_kms_key_id: str | None = None
    transient: tuple[type[BaseException], ...] = (BotoCoreError, OSError)

    def errors(self, what: str) -> contextlib.AbstractContextManager[None]:
        return s3_errors(what, self.where)

    def refused(self, exc: BaseException) -> bool:
        if not isinstance(exc, BotoCoreError | ClientError):
            return False
        return not isinstance(translate(exc, "request", self.where), RetryableError)

    def check(self) -> None:
        self.client.meta.config.retries = {"total_max_attempts": 1}
        self.client.head_bucket(Bucket=self.bucket)

    def head(self, key: str) -> ObjectInfo | None:
        """HEAD with checksums, or None when the object does not exist."""
        try:
            reply = self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        except ClientError as exc:
            if is_not_found(exc):
                return None
            raise
        return ObjectInfo(
            size=int(reply.get("ContentLength", 0)),
            sha256=reply.get("Metadata", {}).get("sha256"),
            checksum=reply.get("ChecksumSHA256"),
            locked_until=reply.get("ObjectLockRetainUntilDate"),
        )

    def listing(self, prefix: str) -> Iterator[tuple[str, int]]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        for page in pages:
            for obj in page.get("Contents", []):
                yield obj["Key"], int(obj["Size"])

    def chunks(self, key: str, start: int = 0, size: int = 1 << 20) -> Iterator[bytes]:
        extra = {"Range": f"bytes={start}-"} if start else {}
        reply = self.client.get_object(Bucket=self.bucket, Key=key, **extra)
        yield from reply["Body"].iter_chunks(size)

    def open(self, key: str) -> Stream:
        return cast(Stream, self.client.get_object(Bucket=self.bucket, Key=key)["Body"])

    def _options(self, options: ObjectOptions) -> dict[str, Any]:
        """Our options in S3's words: metadata, type, storage class, encryption at rest, lock."""
        out: dict[str, Any] = {"ContentType": options.content_type}
        if options.metadata:
            out["Metadata"] = dict(options.metadata)
        if options.bulk and self.storage_class:
            out["StorageClass"] = self.storage_class
        if self.server_side_encryption:
            out["ServerSideEncryption"] = self.server_side_encryption
            if self.sse_kms_key_id:
                out["SSEKMSKeyId"] = self.sse_kms_key_id
        if options.lock_mode and options.lock_until:
            out["ObjectLockMode"] = options.lock_mode
            out["ObjectLockRetainUntilDate"] = options.lock_until
        return out

    def put(
        self, key: str, body: Readable, size: int, checksum: str, options: ObjectOptions
    ) -> None:
        self.client.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=body,
            ContentLength=size,
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=checksum,
            **self._options(options),
        )

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def retain(self, key: str, mode: str, until: datetime) -> None:
        self.client.put_object_retention(
            Bucket=self.bucket, Key=key, Retention={"Mode": mode, "RetainUntilDate": until}
        )

    def start_upload(self, key: str, options: ObjectOptions) -> str:
        created = self.client.create_multipart_upload(
            Bucket=self.bucket, Key=key, ChecksumAlgorithm="SHA256", **self._options(options)
        )
        return str(created["UploadId"])

    def send_part(
        self, key: str, upload_id: str, number: int, body: Readable, size: int, checksum: str
    ) -> str:
        reply = self.client.upload_part(
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=body,
            ContentLength=size,
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=checksum,
        )
        return str(reply["ETag"])

    def parts(self, key: str, upload_id: str) -> dict[int, StoredPart] | None:
        found: dict[int, StoredPart] = {}
        try:
            pages = self.client.get_paginator("list_parts").paginate(
                Bucket=self.bucket, Key=key, UploadId=upload_id
            )
            for page in pages:
                for part in page.get("Parts", []):
                    number = int(part["PartNumber"])
                    found[number] = StoredPart(number, int(part["Size"]), str(part["ETag"]))
        except ClientError as exc:
            if _no_such_upload(exc):
                return None
            raise
        return found

    def complete(self, key: str, upload_id: str, parts: list[tuple[int, str, str]]) -> None:
        self.client.complete_multipart_upload(
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={
                "Parts": [
                    {"PartNumber": number, "ETag": etag, "ChecksumSHA256": checksum}
                    for number, etag, checksum in parts
                ]
            },
        )

    def abort(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except ClientError as exc:
            if not _no_such_upload(exc):
                raise

    def uploads(self, prefix: str) -> Iterator[tuple[str, str]]:
        pages = self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        for page in pages:
            for upload in page.get("Uploads", []):
                yield upload["Key"], upload["UploadId"]
