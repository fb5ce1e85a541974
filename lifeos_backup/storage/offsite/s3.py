"""The S3 client, object keys, and botocore's failures turned into our errors.

Credentials come only from the standard AWS chain (environment, shared files, instance or task
role): never from our settings, task arguments or logs. botocore retries each request itself
("standard" mode: exponential backoff with jitter, also on 503 SlowDown and throttling);
what still fails becomes an OffsiteError (retryable: the Celery task backs off and retries, the
next sync tries again) or a ConfigError/PermanentError (retrying cannot help).
"""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

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

from lifeos_backup.core.errors import ConfigError, LifeosError, OffsiteError, PermanentError
from lifeos_backup.core.settings import Settings
from lifeos_backup.formats.manifest import MANIFEST_SUFFIX, SEALED_MANIFEST_SUFFIX

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


@dataclass
class Remote:
    """One bucket and prefix, with a thread-safe low-level client."""

    client: BaseClient
    bucket: str
    prefix: str
    where: str  # endpoint and bucket, for messages (no credentials)

    def key(self, relpath: str) -> str:
        """Remote key of a path relative to the backup root (the layouts are the same)."""
        return posixpath.join(self.prefix, relpath) if self.prefix else relpath

    def relpath(self, key: str) -> str:
        return key[len(self.prefix) + 1 :] if self.prefix else key

    @property
    def root(self) -> str:
        return self.prefix + "/" if self.prefix else ""


def manifest_key(archive_key: str, backup_id: str, sealed: bool = False) -> str:
    """Key of a backup's manifest beside its archive: `<id>.manifest.json`, or, sealed to the
    encryption recipients, `<id>.manifest.json.age`."""
    suffix = SEALED_MANIFEST_SUFFIX if sealed else MANIFEST_SUFFIX
    return posixpath.join(posixpath.dirname(archive_key), backup_id + suffix)


def manifest_keys(archive_key: str, backup_id: str, sealed_first: bool = True) -> list[str]:
    """Both places a backup's manifest may be, the likelier first: buckets written before
    manifests were sealed, or without encryption, hold clear ones."""
    keys = [manifest_key(archive_key, backup_id, sealed=True), manifest_key(archive_key, backup_id)]
    return keys if sealed_first else keys[::-1]


def find_manifest(
    remote: Remote, archive_key: str, backup_id: str, sealed_first: bool = True
) -> str | None:
    """The key of the backup's manifest in the bucket (sealed or clear), or None (HEAD only)."""
    for key in manifest_keys(archive_key, backup_id, sealed_first):
        if head(remote, key) is not None:
            return key
    return None


def client_config(settings: Settings) -> Config:
    return Config(
        # total_max_attempts counts the first try too (botocore's max_attempts would not).
        retries={"total_max_attempts": settings.s3_max_attempts, "mode": "standard"},
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        max_pool_connections=max(10, settings.s3_concurrency + 2),
        # MinIO and most S3-compatible services want path-style URLs; AWS picks by itself.
        s3={"addressing_style": "path" if settings.s3_endpoint_url else "auto"},
    )


def connect(settings: Settings) -> Remote:
    """A client for the configured bucket; ConfigError when off-site is not configured."""
    bucket = require_bucket(settings)
    session = boto3.session.Session()
    client = session.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url or None,
        region_name=settings.s3_region or None,
        config=client_config(settings),
    )
    where = f"s3://{bucket}" + (
        f" at {settings.s3_endpoint_url}" if settings.s3_endpoint_url else ""
    )
    return Remote(client, bucket, settings.s3_prefix.strip("/"), where)


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
def s3_errors(what: str, remote: Remote | None = None) -> Iterator[None]:
    """Translate botocore failures inside the block (ours pass through untouched)."""
    try:
        yield
    except (BotoCoreError, ClientError) as exc:
        raise translate(exc, what, remote.where if remote else "S3") from exc


def head(remote: Remote, key: str) -> dict[str, Any] | None:
    """HEAD with checksums, or None when the object does not exist."""
    try:
        return dict(
            remote.client.head_object(Bucket=remote.bucket, Key=key, ChecksumMode="ENABLED")
        )
    except ClientError as exc:
        if is_not_found(exc):
            return None
        raise


def same_checksum(reported: str | None, expected: str | None) -> bool:
    """Compare S3 checksums ignoring the "-<parts>" suffix some services add to composites."""
    if not reported or not expected:
        return False
    return reported.split("-")[0] == expected.split("-")[0]
