"""The one interface through which off-site code reaches object storage.

Upload, download, the sync, remote retention, `forget`, the catalog rebuild from the bucket, the
WAL copy and `doctor` all speak to an `ObjectStore`; none of them names a provider's SDK. The S3
implementation is `lifeos_backup.storage.offsite.s3.S3Store` (boto3: AWS S3, MinIO and other
S3-compatible services). Keys are full object keys; `key()`/`relpath()` map between them and paths
relative to the backup root (the remote layout is the local one, under a prefix).

What a store must offer follows from what the copies need: whole-object and ranged reads, a
listing with sizes, objects written with a SHA-256 the service checks, multipart uploads whose
parts can be listed again after a crash (resumption), aborting and listing unfinished uploads
(orphans), deletion, and optional retention locks. Errors: a store raises its SDK's exceptions
from these calls; `errors(what)` turns them into ours inside a block (OffsiteError when a retry
may help, ConfigError or PermanentError when it cannot), and `refused` tells, without raising,
whether a failure is one that no retry can fix. Nothing here imports an SDK.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from lifeos_backup.formats.manifest import MANIFEST_SUFFIX, SEALED_MANIFEST_SUFFIX


@dataclass(frozen=True)
class ObjectInfo:
    """What a HEAD tells about an object, without reading it."""

    size: int
    sha256: str | None = None  # hex SHA-256 we stored in the object's metadata (archives)
    checksum: str | None = None  # the service's SHA-256 (base64; "-N" composite for N parts)
    locked_until: datetime | None = None  # retention lock, when the object has one


@dataclass(frozen=True)
class ObjectOptions:
    """How a new object is stored: our metadata, its type, and an optional retention lock.

    `bulk` marks archive data: a store may give it a cheaper storage class
    (LIFEOS_S3_STORAGE_CLASS); manifests stay in the standard class, since a rebuild reads every
    one of them.
    """

    metadata: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/octet-stream"
    lock_mode: str | None = None
    lock_until: datetime | None = None
    bulk: bool = False


@dataclass(frozen=True)
class StoredPart:
    """A part of an unfinished multipart upload, as the service holds it."""

    number: int
    size: int
    etag: str


class Readable(Protocol):
    """A body to send: read in pieces, rewound for a retry."""

    def read(self, size: int = -1) -> bytes: ...

    def seek(self, pos: int, whence: int = 0) -> int: ...


class Stream(Protocol):
    """An object's body as it downloads."""

    def read(self, size: int = -1) -> bytes: ...


class PrefixedKeys:
    """Object keys below a store's prefix, the same rule for every provider: `<prefix>/<relpath>`
    (the repository's own layout), or the relpath itself without a prefix."""

    prefix: str

    def key(self, relpath: str) -> str:
        return posixpath.join(self.prefix, relpath) if self.prefix else relpath

    def relpath(self, key: str) -> str:
        return key[len(self.prefix) + 1 :] if self.prefix else key

    @property
    def root(self) -> str:
        return self.prefix + "/" if self.prefix else ""


class ObjectStore(Protocol):
    """One bucket (or container) and prefix of one provider."""

    @property
    def where(self) -> str:
        """Provider, bucket and endpoint for messages; never a credential."""
        ...

    @property
    def root(self) -> str:
        """The prefix with a trailing "/", or "" (what listings start from)."""
        ...

    @property
    def transient(self) -> tuple[type[BaseException], ...]:
        """What a broken download stream raises (the download resumes from where it broke)."""
        ...

    def key(self, relpath: str) -> str:
        """Object key of a path relative to the backup root."""
        ...

    def relpath(self, key: str) -> str:
        """Path relative to the backup root of an object key under the prefix."""
        ...

    def errors(self, what: str) -> AbstractContextManager[None]:
        """Inside the block, the SDK's failures become ours (`what` names the action)."""
        ...

    def refused(self, exc: BaseException) -> bool:
        """Whether `exc` is the service refusing a request for good (credentials, a missing
        bucket, a bad request): no retry can help. False for anything else, passing trouble
        (network, throttling) included."""
        ...

    def check(self) -> None:
        """One quick request proving credentials and bucket (for `doctor`); raises on failure."""
        ...

    def head(self, key: str) -> ObjectInfo | None:
        """The object's size, hashes and lock, or None when it does not exist."""
        ...

    def listing(self, prefix: str) -> Iterator[tuple[str, int]]:
        """Every object under `prefix`: (key, size), in key order."""
        ...

    def chunks(self, key: str, start: int = 0, size: int = 1 << 20) -> Iterator[bytes]:
        """The object's bytes from `start` on, in pieces of about `size`."""
        ...

    def open(self, key: str) -> Stream:
        """The object's body as a stream (read in bounded pieces)."""
        ...

    def put(
        self, key: str, body: Readable, size: int, checksum: str, options: ObjectOptions
    ) -> None:
        """Write a whole object; the service refuses it unless its SHA-256 is `checksum`
        (base64)."""
        ...

    def delete(self, key: str) -> None:
        """Delete the object; one that does not exist is fine."""
        ...

    def retain(self, key: str, mode: str, until: datetime) -> None:
        """Set the object's retention lock (for services that ignored it when it was written)."""
        ...

    def start_upload(self, key: str, options: ObjectOptions) -> str:
        """Begin a multipart upload whose parts carry SHA-256 checksums; its upload id."""
        ...

    def send_part(
        self, key: str, upload_id: str, number: int, body: Readable, size: int, checksum: str
    ) -> str:
        """Send one part (refused unless its SHA-256 is `checksum`, base64); its ETag."""
        ...

    def parts(self, key: str, upload_id: str) -> dict[int, StoredPart] | None:
        """The parts the service holds for an upload, or None when the upload is gone."""
        ...

    def complete(self, key: str, upload_id: str, parts: list[tuple[int, str, str]]) -> None:
        """Join the parts, given as (number, ETag, checksum) in order, into the object."""
        ...

    def abort(self, key: str, upload_id: str) -> None:
        """Drop an unfinished upload and its parts; one already gone is fine."""
        ...

    def uploads(self, prefix: str) -> Iterator[tuple[str, str]]:
        """Unfinished multipart uploads under `prefix`: (key, upload id)."""
        ...


# --- What every store shares: manifest keys, checksums --------------------------------------------


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
    store: ObjectStore, archive_key: str, backup_id: str, sealed_first: bool = True
) -> str | None:
    """The key of the backup's manifest in the bucket (sealed or clear), or None (HEAD only)."""
    for key in manifest_keys(archive_key, backup_id, sealed_first):
        if store.head(key) is not None:
            return key
    return None


def same_checksum(reported: str | None, expected: str | None) -> bool:
    """Compare SHA-256 checksums ignoring the "-<parts>" suffix some services add to composites."""
    if not reported or not expected:
        return False
    return reported.split("-")[0] == expected.split("-")[0]
