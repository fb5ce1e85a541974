"""What the GCS and Azure stores share: checking a body's SHA-256 as it is sent, the composite
checksum of joined parts, and the staging names of unfinished uploads.

S3 checks a SHA-256 itself (additional checksums); GCS and Azure check CRC32C or MD5 of each
transfer instead. So these stores hash what they send in the same pass (`Hashing`), compare it
with the SHA-256 the upload planned, and record it on the object as metadata (`checksum`), which
HEAD then reports like S3's own. An object whose bytes were not the planned ones is deleted
before anyone trusts it (an archive is only trusted once its manifest is there, which comes last).

Unfinished multipart uploads are made visible under a staging prefix beside the backups' prefix
(`<prefix>.uploads/<upload id>/`): a marker object naming the destination key and its options
(so an upload can be listed, resumed or aborted after a crash) and, on GCS, the parts themselves.
The staging prefix is outside the backups' prefix, so listings of the backups never see it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import posixpath

from lifeos_backup.core.errors import VerificationFailed
from lifeos_backup.storage.offsite.store import ObjectOptions, Readable

MARKER = "upload"


class Hashing:
    """A body that hashes what is read from it (SHA-256), for SDKs that read it once."""

    def __init__(self, body: Readable, size: int) -> None:
        self._body = body
        self._left = size
        self.size = size
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        size = self._left if size is None or size < 0 else min(size, self._left)
        data = self._body.read(size) if size > 0 else b""
        self._left -= len(data)
        self.digest.update(data)
        return data

    def seek(self, pos: int, whence: int = 0) -> int:
        if pos == 0 and whence == 0:  # a rewind for a retry: start the hash again
            self._body.seek(0)
            self._left = self.size
            self.digest = hashlib.sha256()
            return 0
        raise OSError("a hashing body only rewinds to its start")

    def tell(self) -> int:
        return self.size - self._left

    def __len__(self) -> int:
        return self.size

    @property
    def checksum(self) -> str:
        return base64.b64encode(self.digest.digest()).decode()


def refuse_unless(body: Hashing, checksum: str, key: str) -> None:
    """VerificationFailed unless what was sent has the planned SHA-256 (base64)."""
    if body.tell() != body.size or body.checksum != checksum:
        raise VerificationFailed(
            f"what was sent to {key} is not what was planned",
            f"{body.tell()} of {body.size} bytes, SHA-256 {body.checksum} (planned {checksum})",
            "the local file changed while it was sent; it is sent again",
        )


def composite(checksums: list[str]) -> str:
    """The checksum S3 reports for an object joined from parts, from the parts' SHA-256s."""
    if len(checksums) == 1:
        return checksums[0]
    digests = b"".join(base64.b64decode(c) for c in checksums)
    return f"{base64.b64encode(hashlib.sha256(digests).digest()).decode()}-{len(checksums)}"


def staging_root(prefix: str) -> str:
    """Where unfinished uploads live: beside the backups' prefix, never under it."""
    return f"{prefix}.uploads/" if prefix else ".uploads/"


def marker_key(prefix: str, upload_id: str) -> str:
    return posixpath.join(staging_root(prefix), upload_id, MARKER)


def marker_metadata(key: str, options: ObjectOptions) -> dict[str, str]:
    """What completing an upload needs to know after a crash: where it goes, and how (names
    Azure accepts too: identifiers, no hyphens)."""
    return {
        "key": key,
        "content_type": options.content_type,
        "object_metadata": json.dumps(options.metadata, sort_keys=True),
    }


def options_of(metadata: dict[str, str]) -> tuple[str, dict[str, str]]:
    """(content type, object metadata) recorded by `marker_metadata`."""
    return (
        metadata.get("content_type", "application/octet-stream"),
        dict(json.loads(metadata.get("object_metadata", "{}"))),
    )
