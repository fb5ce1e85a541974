"""Reading off-site copies back: fetch one backup for a restore, and rebuild the catalog.

Both work on a machine that has nothing but the bucket's settings and credentials (and, for
encrypted backups, the private key): the manifests in the bucket describe everything. A remote
manifest is streamed into a file of a private scratch folder and read there like a local one
(`read_manifest`: the first line parsed, the entries streamed by `iter_files`), so memory does not
grow with a backup's file count. A sealed manifest (`<id>.manifest.json.age`, written when
encryption is on) is decrypted on its way into that file; without the key only the listing can be
read: ids, kinds, times and sizes (`list_remote`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from lifeos_backup.core.errors import (
    DecryptionKeyError,
    LifeosError,
    NotFound,
    VerificationFailed,
)
from lifeos_backup.core.fsutil import private_dir, remove_quietly
from lifeos_backup.core.names import created_at_of_id, is_backup_id
from lifeos_backup.core.progress import Progress, ProgressFn, ignore
from lifeos_backup.core.settings import Settings
from lifeos_backup.core.targets import LEGACY_NAME, Target
from lifeos_backup.formats.crypto import open_sealed_manifest
from lifeos_backup.formats.manifest import (
    MANIFEST_SUFFIX,
    SEALED_MANIFEST_SUFFIX,
    Manifest,
    read_manifest,
)
from lifeos_backup.formats.streams import CHUNK
from lifeos_backup.storage.catalog import Backup, Catalog
from lifeos_backup.storage.catalog.models import OffsiteCopy
from lifeos_backup.storage.catalog.store import CREATED, VERIFIED
from lifeos_backup.storage.offsite import state
from lifeos_backup.storage.offsite.store import ObjectStore, find_manifest
from lifeos_backup.storage.offsite.targets import configured, connect, named, require_targets
from lifeos_backup.storage.offsite.upload import remote_mismatch
from lifeos_backup.storage.repository import LAYOUTS

log = logging.getLogger(__name__)


def read_remote_manifest(
    remote: ObjectStore, key: str, scratch: Path, identity_file: Path | None = None
) -> Manifest:
    """The manifest at `key`, streamed into a file in `scratch` and read from there: its entries
    stream from that file (`iter_files`) as long as it is there.

    A sealed manifest (`.manifest.json.age`) is decrypted on the way with the identities in
    `identity_file`: without one, or with one that is not a recipient, a DecryptionKeyError says
    so; altered or truncated ciphertext is a VerificationFailed.
    """
    name = key.rsplit("/", 1)[-1]
    sealed = name.endswith(SEALED_MANIFEST_SUFFIX)
    plain = name.removesuffix(".age") if sealed else name
    if not plain.endswith(MANIFEST_SUFFIX) or plain.startswith("."):
        plain = "remote" + MANIFEST_SUFFIX
    path = scratch / plain
    if sealed:
        body = remote.open(key)
        return open_sealed_manifest(body, path, identity_file, f"off-site manifest {name}")
    with open(path, "wb") as out:
        for chunk in remote.chunks(key, 0, CHUNK):
            out.write(chunk)
    return read_manifest(path)


def download_archive(
    remote: ObjectStore,
    key: str,
    dest: Path,
    manifest: Manifest,
    settings: Settings,
    progress: ProgressFn = ignore,
) -> None:
    """Stream the object to `dest`, hashing as it arrives; keep it only if it matches the manifest.

    One sequential GET with the SHA-256 taken in the same pass (no second read of the file). A
    connection that breaks mid-stream is resumed with a Range request from the byte reached, up
    to LIFEOS_S3_MAX_ATTEMPTS times: the hash simply continues. docs/decisions.md explains why
    not boto3's parallel ranged download.
    """
    report = Progress("downloading", bytes_total=manifest.archive.size)
    digest = hashlib.sha256()
    tmp = dest.with_name(f".{dest.name}.download")
    failures = 0
    try:
        with open(tmp, "wb") as out:
            while True:
                try:
                    for chunk in remote.chunks(key, report.bytes_done, CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        report.bytes_done += len(chunk)
                        progress(report)
                    break
                except remote.transient as exc:  # the stream broke: continue from here
                    failures += 1
                    if failures >= settings.s3_max_attempts:
                        raise
                    log.warning("download of %s broke at %d bytes: %s", key, report.bytes_done, exc)
                    time.sleep(min(0.5 * 2.0**failures, 20.0))
        size = report.bytes_done
        if size != manifest.archive.size or digest.hexdigest() != manifest.archive.sha256:
            raise VerificationFailed(
                f"off-site copy of {manifest.backup_id} does not match its manifest",
                f"{size} bytes (manifest {manifest.archive.size}), SHA-256 "
                f"{'differs' if digest.hexdigest() != manifest.archive.sha256 else 'equal'}",
                "the remote copy is damaged; use another backup",
            )
        tmp.replace(dest)
    finally:
        remove_quietly(tmp)


@contextlib.contextmanager
def fetched(
    backup_id: str,
    settings: Settings,
    catalog: Catalog,
    progress: ProgressFn = ignore,
    source: str = "offsite",
) -> Iterator[tuple[Path, Manifest]]:
    """Download a backup's archive and manifest into a private scratch folder; removed after.
    The manifest's entries stream from its file there while the block runs.

    `source`: a target's name, or `offsite` for the first target (in configured order) that
    holds a good copy and answers; a target that fails (unreachable, damaged copy) is logged and
    the next one is tried."""
    row = catalog.get(backup_id)
    held = state.copies(catalog, backup_id)
    if source == "offsite":
        candidates = [
            t for t in configured(settings) if getattr(held.get(t.name), "status", None) in USABLE
        ]
    else:
        candidates = [named(settings, source)]
    candidates = [t for t in candidates if getattr(held.get(t.name), "key", None)]
    if not candidates:
        raise NotFound(
            f"backup {backup_id} has no off-site copy"
            + (f" on {source}" if source != "offsite" else ""),
            f"off-site status: {row.offsite_status or 'never uploaded'}",
            "restore it from the local copy, or choose one that `list` shows as offsite/both",
        )
    for i, target in enumerate(candidates):
        scratch = Path(tempfile.mkdtemp(prefix="offsite-", dir=private_dir(settings.state_dir)))
        try:
            try:
                found = _fetch(backup_id, target, held[target.name], settings, scratch, progress)
            except (LifeosError, OSError) as exc:
                if i + 1 == len(candidates) or isinstance(exc, DecryptionKeyError):
                    raise
                log.warning(
                    "restore of %s from %s failed, trying the next: %s", backup_id, target.name, exc
                )
                continue
            yield found
            return
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


USABLE = (state.UPLOADED, state.DAMAGED)


def _fetch(
    backup_id: str,
    target: Target,
    held: OffsiteCopy,
    settings: Settings,
    scratch: Path,
    progress: ProgressFn,
) -> tuple[Path, Manifest]:
    remote = connect(target, settings)
    assert held.key
    with remote.errors(f"download of {backup_id} from {target.name}"):
        key = find_manifest(remote, held.key, backup_id)
        if key is None:
            raise NotFound(
                f"the off-site manifest of {backup_id} on {target.name} is missing",
                f"no {backup_id}{MANIFEST_SUFFIX}[.age] beside {held.key}",
                "`lifeos-backup offsite sync` re-checks it; restore another backup",
            )
        manifest = read_remote_manifest(remote, key, scratch, settings.encryption_identity_file)
        if manifest.backup_id != backup_id:
            raise VerificationFailed(
                f"remote manifest of {backup_id} describes {manifest.backup_id}"
            )
        archive = scratch / manifest.archive.name
        download_archive(remote, held.key, archive, manifest, settings, progress)
    return archive, manifest


# --- Catalog rebuild from the bucket --------------------------------------------------------------


@dataclass
class Listed:
    """What the bucket's listing alone shows of a backup, readable without any key: its id and
    kind (the manifest's key), when it was taken (the id), and its archive's key and size."""

    backup_id: str
    kind: str
    manifest_key: str  # the sealed one when both are there
    archive_key: str | None
    archive_size: int | None

    @property
    def sealed(self) -> bool:
        return self.manifest_key.endswith(SEALED_MANIFEST_SUFFIX)

    @property
    def created_at(self) -> datetime:
        return created_at_of_id(self.backup_id)


class KeyNeeded(DecryptionKeyError):
    """The bucket's manifests are sealed and no private key is configured: `listed` is what can
    be told without it (ids, kinds, times, sizes)."""

    def __init__(self, what: str, detail: str = "", hint: str = "") -> None:
        super().__init__(what, detail, hint)
        self.listed: list[Listed] = []


def _manifest_name(remote: ObjectStore, key: str) -> tuple[str, str, str] | None:
    """(kind, folder, backup id) of a manifest key in one of the kinds' folders, else None."""
    folder, _, name = remote.relpath(key).rpartition("/")
    for suffix in (SEALED_MANIFEST_SUFFIX, MANIFEST_SUFFIX):
        if not name.endswith(suffix):
            continue
        backup_id = name.removesuffix(suffix)
        for kind, lay in LAYOUTS.items():
            if folder == lay.folder and backup_id.startswith(lay.prefix):
                return (kind, folder, backup_id) if is_backup_id(backup_id) else None
    return None


def list_remote(remote: ObjectStore) -> list[Listed]:
    """Every backup with a manifest in the bucket, by id, from one listing (no object is read)."""
    sizes = dict(remote.listing(remote.root))
    found: dict[str, Listed] = {}
    for key in sorted(sizes):
        named = _manifest_name(remote, key)
        if named is None:
            continue
        kind, folder, backup_id = named
        known = found.get(backup_id)
        if known is not None and known.sealed:
            continue
        archive = next(
            (
                remote.key(f"{folder}/{backup_id}{suffix}")
                for suffix in LAYOUTS[kind].suffixes
                if remote.key(f"{folder}/{backup_id}{suffix}") in sizes
            ),
            None,
        )
        found[backup_id] = Listed(
            backup_id, kind, key, archive, sizes[archive] if archive else None
        )
    return [found[backup_id] for backup_id in sorted(found)]


def remote_manifest_keys(remote: ObjectStore) -> list[str]:
    """The key of every backup's manifest in the bucket (the sealed one when both are there)."""
    return sorted(item.manifest_key for item in list_remote(remote))


@dataclass
class RemoteBackup:
    manifest: Manifest
    archive_key: str
    path: str  # the archive's path relative to the backup root (the layouts are the same)
    status: str  # state.UPLOADED / MISSING / DAMAGED
    checksum: str | None
    problem: str
    target: str = LEGACY_NAME


def _valid_remote_manifest(
    remote: ObjectStore, item: Listed, scratch: Path, identity_file: Path | None
) -> Manifest:
    """The manifest of `item`, valid (lifeos_backup.core.names, via Manifest) and describing the
    backup its key is named after; VerificationFailed otherwise. Only its first line is parsed
    (the catalog needs no entries) and its file in `scratch` is removed at once: the entries are
    not kept."""
    try:
        manifest = read_remote_manifest(remote, item.manifest_key, scratch, identity_file)
    finally:
        for path in scratch.iterdir():
            remove_quietly(path)
    if manifest.backup_id != item.backup_id:
        raise VerificationFailed(
            f"manifest {item.manifest_key} describes {manifest.backup_id}",
            "not the backup its key is named after",
        )
    return manifest


def key_needed(listed: list[Listed]) -> KeyNeeded:
    """The one error of a rebuild that meets sealed manifests without a private key."""
    sealed = sum(1 for item in listed if item.sealed)
    error = KeyNeeded(
        f"{sealed} of the {len(listed)} backups in the bucket have sealed manifests and no "
        "private key is configured",
        "ids, kinds, times and sizes are listed above; the catalog is unchanged",
        "set LIFEOS_ENCRYPTION_IDENTITY_FILE to the age identity file (from the safe) and run "
        "it again",
    )
    error.listed = listed
    return error


def scan_remote(
    remote: ObjectStore,
    scratch: Path,
    warn: Callable[[str], None] = log.warning,
    identity_file: Path | None = None,
) -> list[RemoteBackup]:
    """Every backup in the bucket with a valid manifest, and whether its archive is intact; an
    invalid manifest is reported through `warn` and skipped. Each manifest passes through a file
    in the private folder `scratch`, one at a time.

    Sealed manifests need `identity_file`: without it nothing is read and KeyNeeded lists what
    the bucket shows. A sealed manifest that the key does not open is skipped with a warning,
    unless the key opens no sealed manifest at all: then that DecryptionKeyError is raised (a
    wrong key, not one foreign manifest).
    """
    listed = list_remote(remote)
    if identity_file is None and any(item.sealed for item in listed):
        raise key_needed(listed)
    found: list[RemoteBackup] = []
    fitted = 0  # sealed manifests the key opened (a damaged one too: damage shows after that)
    refused: list[tuple[str, DecryptionKeyError]] = []
    for item in listed:
        try:
            manifest = _valid_remote_manifest(remote, item, scratch, identity_file)
        except VerificationFailed as exc:
            fitted += item.sealed
            warn(f"skipped remote manifest {item.manifest_key}: {exc}")
            continue
        except DecryptionKeyError as exc:  # told below: one foreign manifest, or a wrong key
            refused.append((item.manifest_key, exc))
            continue
        fitted += item.sealed
        archive_key = item.manifest_key.rsplit("/", 1)[0] + "/" + manifest.archive.name
        reply = remote.head(archive_key)
        problem = remote_mismatch(reply, manifest.archive.size, manifest.archive.sha256, None)
        status = (
            state.UPLOADED if not problem else state.MISSING if reply is None else state.DAMAGED
        )
        checksum = reply.checksum if reply else None
        path = remote.relpath(archive_key)
        found.append(RemoteBackup(manifest, archive_key, path, status, checksum, problem))
    if refused and not fitted:
        raise refused[0][1]
    for key, refusal in refused:
        warn(f"skipped remote manifest {key}: {refusal}")
    return found


def scan_offsite(
    settings: Settings, warn: Callable[[str], None] = log.warning
) -> list[RemoteBackup]:
    """Read every manifest in the first target that answers (see `scan_remote`; a fresh machine
    may have one target's credentials only); nothing local is changed, so a missing or wrong key
    fails before a catalog is touched."""
    targets = require_targets(settings)
    for i, target in enumerate(targets):
        try:
            remote = connect(target, settings)
            with (
                tempfile.TemporaryDirectory(
                    prefix="offsite-", dir=private_dir(settings.state_dir)
                ) as tmp,
                remote.errors(f"catalog rebuild from {target.name}"),
            ):
                found = scan_remote(remote, Path(tmp), warn, settings.encryption_identity_file)
        except LifeosError as exc:
            if i + 1 == len(targets) or isinstance(exc, DecryptionKeyError):
                raise
            warn(f"off-site target {target.name} could not be read: {exc}")
            continue
        for item in found:
            item.target = target.name
        return found
    return []


def add_to_catalog(catalog: Catalog, remote_backups: list[RemoteBackup]) -> list[str]:
    """Add every remote backup to the catalog (or its off-site fields to a known one).

    Rows known only from the bucket get the manifest's status (verified: only verified backups
    are uploaded) and `list` shows them as `offsite`. Checksums are taken from the bucket as found
    (trust on first sight); the sync's full re-reads compare the content with the manifests.
    """
    for item in remote_backups:
        m = item.manifest
        offsite = {
            "offsite_status": item.status,
            "offsite_key": item.archive_key,
            "offsite_checksum": item.checksum,
            "offsite_error": item.problem or None,
        }
        if catalog.exists(m.backup_id):
            catalog.update(m.backup_id, **offsite)
            state.set_copy(catalog, m.backup_id, item.target, **offsite)
            continue
        catalog.add_backup(
            Backup(
                id=m.backup_id,
                kind=m.kind,
                status=VERIFIED if m.verified_at else CREATED,
                path=item.path,
                size=m.archive.size,
                sha256=m.archive.sha256,
                reason=m.reason,
                initiator=m.initiator,
                host=m.host,
                created_at=m.created_at,
                finished_at=m.finished_at,
                verified_at=m.verified_at,
                duration_s=(m.finished_at - m.created_at).total_seconds(),
                **offsite,
            )
        )
        state.set_copy(catalog, m.backup_id, item.target, **offsite)
    for item in remote_backups:
        if item.problem:
            log.error("off-site copy of %s: %s", item.manifest.backup_id, item.problem)
    return [item.manifest.backup_id for item in remote_backups]


def rebuild_from_offsite(
    settings: Settings, catalog: Catalog, warn: Callable[[str], None] = log.warning
) -> list[str]:
    """Read every manifest in the bucket, then add what they describe to `catalog`; invalid
    remote manifests are reported through `warn` and skipped."""
    return add_to_catalog(catalog, scan_offsite(settings, warn))
