"""Off-site copies of the WAL archive, made by the worker every few minutes (Beat).

Not from archive_command itself: that runs as the database's OS user, often with a Python that has
no boto3 (or none at all: the sh port), importing boto3 alone takes about a second per segment,
and an unreachable bucket would stall archiving and fill the database's disk. The local archive is
the durable copy PostgreSQL waits for; this copies every archived file not yet in the bucket
(same bytes, same name, under `<prefix>/postgresql/wal/`), with its SHA-256 checked by S3.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from pathlib import Path

from lifeos_backup.core.settings import Settings
from lifeos_backup.kinds.basebackup import wal_archive_dir
from lifeos_backup.wal.archive import SUFFIX
from lifeos_backup.wal.names import ARCHIVABLE

log = logging.getLogger(__name__)

REMOTE_FOLDER = "postgresql/wal"


def _sha256_b64(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return base64.b64encode(digest.digest()).decode()


def local_wal_files(archive: Path) -> list[str]:
    """Archived file names (with .zst), oldest position first."""
    if not archive.is_dir():
        return []
    names = [
        p.name for p in archive.iterdir() if p.name.endswith(SUFFIX) and ARCHIVABLE.match(p.stem)
    ]
    return sorted(names, key=lambda n: (n[8:24], n))


def upload_wal(settings: Settings) -> list[str]:
    """Upload archived WAL files the bucket lacks; returns their names."""
    from lifeos_backup.storage.offsite.s3 import connect
    from lifeos_backup.storage.offsite.store import ObjectOptions

    remote = connect(settings)
    folder = remote.key(REMOTE_FOLDER) + "/"
    archive = wal_archive_dir(settings)
    with remote.errors("listing archived WAL off-site"):
        present = {key[len(folder) :] for key, _size in remote.listing(folder)}
    sent: list[str] = []
    for name in local_wal_files(archive):
        if name in present:
            continue
        path = archive / name
        with remote.errors(f"uploading {name}"), open(path, "rb") as body:
            size = os.fstat(body.fileno()).st_size
            remote.put(folder + name, body, size, _sha256_b64(path), ObjectOptions())
        sent.append(name)
    if sent:
        log.info("uploaded %d archived WAL files off-site (%s .. %s)", len(sent), sent[0], sent[-1])
    return sent
