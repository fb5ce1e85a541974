"""Off-site copies of the WAL archive: uploaded by the worker (Beat), pruned, fetched back.

Not from archive_command itself: that runs as the database's OS user, often with a Python that has
no boto3 (or none at all: the sh port), importing boto3 alone takes about a second per segment,
and an unreachable bucket would stall archiving and fill the database's disk. The local archive is
the durable copy PostgreSQL waits for; `upload_wal` copies every archived file not yet in a
target's bucket to every configured off-site target (same bytes, same name, under
`<prefix>/postgresql/wal/`), with its SHA-256 checked by the service. Each target has its own
listing, uploads and pruning; one that fails is reported after the others had their turn:

- finished segments and history files go once, oldest first;
- the stream's unfinished segment (`<segment>.partial.zst`) goes after every finished file
  before it, and again whenever the local copy changed (one PUT of one whole copy read in a
  single pass: the object always holds exactly the WAL its header claims); once the finished
  segment is in the bucket, the remote partial is deleted;
- each run records in the state folder, per target, when the files it found went off-site, so
  `status` shows the off-site lag (the age of the oldest archived WAL not yet in a target's
  bucket: the worst target's, with each target's beside it).

`prune_remote_wal` applies the local rule (retention.py) to the bucket: every segment a kept base
backup needs stays, nothing older. Kept means kept locally or off-site; base backups rotated
away locally but kept off-site are known by the start segment recorded here while their manifest
was local. A kept base backup whose start is unknown stops pruning (never a guess).

`download_wal` fetches the remote archive from a segment on (in parallel) into a local folder and
checks every file (decrypting sealed ones with the key), from the target that holds the start
segment and the most WAL after it: `restore pitr --from offsite` recovers from it on a machine
that has only a bucket and the key.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lifeos_backup.core.errors import LifeosError, OffsiteError, VerificationFailed
from lifeos_backup.core.fsutil import write_json_atomic
from lifeos_backup.core.settings import Settings
from lifeos_backup.formats.manifest import manifest_path, read_manifest
from lifeos_backup.kinds.basebackup import wal_archive_dir
from lifeos_backup.kinds.basebackup.retention import KIND, prunable
from lifeos_backup.storage.catalog import Catalog
from lifeos_backup.storage.catalog.store import CREATED, VERIFIED
from lifeos_backup.wal.archive import PARTIAL, SUFFIX, verify_file
from lifeos_backup.wal.names import ARCHIVABLE, segment_part
from lifeos_backup.wal.segment import WalError

log = logging.getLogger(__name__)

REMOTE_FOLDER = "postgresql/wal"
STATE_FILE = "wal-offsite.json"  # in the state folder: lag figures and base backup starts
# Off-site statuses of a base backup whose remote copy is (or may still be) there.
REMOTE_KEPT = ("uploading", "uploaded", "damaged", "missing", "deleting", "failed")


def _sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _is_partial(name: str) -> bool:
    return name.endswith(PARTIAL + SUFFIX)


def local_wal_files(archive: Path) -> list[str]:
    """Archived file names (with .zst), oldest position first."""
    if not archive.is_dir():
        return []
    names = [
        p.name for p in archive.iterdir() if p.name.endswith(SUFFIX) and ARCHIVABLE.match(p.stem)
    ]
    return sorted(names, key=lambda n: (n[8:24], n))


def read_state(settings: Settings) -> dict[str, Any]:
    """What the uploads recorded; missing or damaged reads as empty (health data)."""
    try:
        data = json.loads((settings.state_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _remote_listing(remote: Any, folder: str) -> dict[str, int]:
    """Remote WAL object names (with .zst) and their sizes."""
    with remote.errors("listing archived WAL off-site"):
        return {key[len(folder) :]: size for key, size in remote.listing(folder)}


def _put(remote: Any, key: str, data: bytes, what: str) -> None:
    """One whole object, refused by the service unless its SHA-256 is the data's."""
    from lifeos_backup.storage.offsite.store import ObjectOptions

    with remote.errors(what):
        remote.put(key, io.BytesIO(data), len(data), _sha256_b64(data), ObjectOptions())


def _remote_checksum(remote: Any, key: str) -> str | None:
    with remote.errors(f"checking {key.rsplit('/', 1)[-1]} off-site"):
        info = remote.head(key)
    return None if info is None else info.checksum


def _delete(remote: Any, keys: list[str], what: str) -> None:
    with remote.errors(what):
        for key in keys:
            remote.delete(key)


def _remotes(settings: Settings) -> list[tuple[str, Any]]:
    """(name, store) of every configured off-site target; ConfigError when there is none."""
    from lifeos_backup.storage.offsite.targets import connect, require_targets

    return [(t.name, connect(t, settings)) for t in require_targets(settings)]


def _each_target(
    settings: Settings, what: str, work: Any
) -> tuple[dict[str, Any], dict[str, LifeosError]]:
    """`work(name, remote)` for every target; a target that fails does not stop the others.
    Returns (results by target, failures by target)."""
    done: dict[str, Any] = {}
    failed: dict[str, LifeosError] = {}
    for name, remote in _remotes(settings):
        try:
            done[name] = work(name, remote)
        except LifeosError as exc:
            log.warning("%s on off-site target %s failed: %s", what, name, exc)
            failed[name] = exc
    return done, failed


def _raise_failures(failed: dict[str, LifeosError], total: int, what: str) -> None:
    if not failed:
        return
    if total == 1:
        raise next(iter(failed.values()))
    raise OffsiteError(
        f"{what} failed on {len(failed)} of {total} off-site targets",
        "; ".join(f"{name}: {exc}" for name, exc in failed.items()),
        "the other targets are up to date; the next run retries the failed ones",
    )


def upload_wal(settings: Settings) -> list[str]:
    """Upload archived WAL files each target's bucket lacks (and a grown partial) to every
    target; returns the names sent anywhere. OffsiteError after the others ran when any target
    failed."""
    archive = wal_archive_dir(settings)
    began = time.time()
    names = local_wal_files(archive)
    mtimes: dict[str, float] = {}
    for name in names:
        try:
            mtimes[name] = (archive / name).stat().st_mtime
        except FileNotFoundError:  # pruned or finished meanwhile
            continue

    def one(name: str, remote: Any) -> tuple[list[str], set[str]]:
        return _upload_to(remote, archive, names, mtimes)

    done, failed = _each_target(settings, "uploading archived WAL", one)
    sent_anywhere = {n for sent, _current in done.values() for n in sent}
    _record(settings, began, mtimes, done, list(failed))
    sent = [n for n in names if n in sent_anywhere]
    if sent:
        log.info("uploaded %d archived WAL files off-site (%s .. %s)", len(sent), sent[0], sent[-1])
    _raise_failures(failed, len(done) + len(failed), "uploading archived WAL")
    return sent


def _upload_to(
    remote: Any, archive: Path, names: list[str], mtimes: dict[str, float]
) -> tuple[list[str], set[str]]:
    """One target's upload run: (names sent, names the bucket holds as they are here)."""
    folder = remote.key(REMOTE_FOLDER) + "/"
    present = _remote_listing(remote, folder)
    sent: list[str] = []
    complete = True  # every finished file so far is in the bucket
    for name in (n for n in names if not _is_partial(n) and n in mtimes):
        if name in present:
            continue
        try:
            data = (archive / name).read_bytes()
        except FileNotFoundError:
            complete = False
            continue
        _put(remote, folder + name, data, f"uploading {name}")
        sent.append(name)
        present[name] = len(data)
    partials = [n for n in names if _is_partial(n) and n in mtimes]
    stale = [
        n
        for n in present
        if _is_partial(n) and n.removesuffix(PARTIAL + SUFFIX) + SUFFIX in present
    ]
    if stale:
        _delete(remote, [folder + n for n in stale], "removing superseded WAL partials off-site")
    # What the bucket holds as it is here: finished files by name (they never change), the
    # partial only once sent or found the same.
    current = {n for n in names if not _is_partial(n) and n in present}
    if partials and complete:
        newest = partials[-1]
        sent_partial, same = _upload_partial(remote, folder, archive, newest, present)
        sent += sent_partial
        if same:
            current.add(newest)
    return sent, current


def _upload_partial(
    remote: Any, folder: str, archive: Path, name: str, present: dict[str, int]
) -> tuple[list[str], bool]:
    """The newest unfinished segment, when the bucket holds another state of it (or none);
    (what was sent, whether the bucket now holds this state)."""
    if name.removesuffix(PARTIAL + SUFFIX) + SUFFIX in present:
        return [], True  # finished meanwhile: the whole segment is off-site already
    try:
        data = (archive / name).read_bytes()  # one copy, as the sealer published it
    except FileNotFoundError:
        return [], False  # the segment finished meanwhile; the next run sends it
    if name in present and _remote_checksum(remote, folder + name) == _sha256_b64(data):
        return [], True
    _put(remote, folder + name, data, f"uploading {name}")
    present[name] = len(data)
    return [name], True


def _record(
    settings: Settings,
    began: float,
    mtimes: dict[str, float],
    done: dict[str, tuple[list[str], set[str]]],
    failed: list[str],
) -> None:
    """Remember, per target, when the archive as found at `began` was off-site: the lag
    `status` shows. The top-level figures are the worst target's."""
    state = read_state(settings)
    finished = time.time()
    targets: dict[str, Any] = dict(state.get("targets") or {})
    for name, (sent, current) in done.items():
        off = [mtimes[n] for n in current if n in mtimes]
        lags = [finished - mtimes[n] for n in sent if n in mtimes]
        before = targets.get(name) or {}
        targets[name] = {
            "offsite_through": max(off) if off else before.get("offsite_through"),
            "last_upload_lag_s": round(max(lags), 3) if lags else before.get("last_upload_lag_s"),
            "error": None,
        }
    for name in failed:
        targets[name] = {**(targets.get(name) or {}), "error": "failed at the last run"}
    targets = {k: v for k, v in targets.items() if k in done or k in failed}  # configured now
    throughs = [float(t.get("offsite_through") or 0) for t in targets.values()]
    upload_lags = [t["last_upload_lag_s"] for t in targets.values() if t.get("last_upload_lag_s")]
    state.update(
        last_run_at=datetime.fromtimestamp(finished, UTC).isoformat(),
        last_run_s=round(finished - began, 3),
        uploaded=len({n for sent, _c in done.values() for n in sent}),
        offsite_through=min(throughs) if throughs else state.get("offsite_through"),
        last_upload_lag_s=max(upload_lags) if upload_lags else state.get("last_upload_lag_s"),
        targets=targets,
    )
    state["base_starts"] = {**state.get("base_starts", {}), **_local_base_starts(settings)}
    try:
        write_json_atomic(settings.state_dir / STATE_FILE, state)
    except OSError as exc:  # health data: the upload itself succeeded
        log.warning("cannot record the WAL upload in %s: %s", settings.state_dir, exc)


def _pending(archive: Path, through: float) -> list[float]:
    """Modification times of archived files changed after `through`."""
    pending = []
    for name in local_wal_files(archive):
        try:
            mtime = (archive / name).stat().st_mtime
        except FileNotFoundError:
            continue
        if mtime > through:
            pending.append(mtime)
    return pending


def offsite_lag(settings: Settings, now: float | None = None) -> dict[str, Any] | None:
    """The off-site lag of the WAL archive: None without uploads; `lag_s` is the age of the
    oldest archived file changed after the last upload run found it on the worst target (0: all
    off-site); `targets` has the same per target."""
    state = read_state(settings)
    if "last_run_at" not in state:
        return None
    now = time.time() if now is None else now
    archive = wal_archive_dir(settings)

    def lag(through: float) -> tuple[float, int]:
        pending = _pending(archive, through)
        return (round(max(0.0, now - min(pending)), 1) if pending else 0.0), len(pending)

    lag_s, pending_files = lag(float(state.get("offsite_through") or 0))
    per_target = {}
    for name, figures in sorted((state.get("targets") or {}).items()):
        t_lag, t_pending = lag(float(figures.get("offsite_through") or 0))
        per_target[name] = {
            "lag_s": t_lag,
            "pending_files": t_pending,
            "error": figures.get("error"),
        }
    return {
        "lag_s": lag_s,
        "pending_files": pending_files,
        "last_run_at": state.get("last_run_at"),
        "last_upload_lag_s": state.get("last_upload_lag_s"),
        "targets": per_target,
    }


# --------------------------------------------------------------------------- remote retention


def _local_base_starts(settings: Settings) -> dict[str, str]:
    """Start WAL file of every base backup whose manifest is on this disk."""
    from lifeos_backup.storage.catalog import open_catalog

    try:
        catalog = open_catalog(settings.effective_catalog_url)
        rows = catalog.list(kind=KIND)
    except Exception as exc:  # the catalog is not this function's to fix
        log.warning("cannot read base backups for WAL retention: %s", exc)
        return {}
    starts = {}
    for row in rows:
        try:
            facts = read_manifest(manifest_path(settings.backup_root / row.path, row.id)).facts
        except (OSError, VerificationFailed):
            continue
        if facts.get("start_wal_file"):
            starts[row.id] = str(facts["start_wal_file"])
    return starts


def remote_cutoff(settings: Settings, catalog: Catalog) -> str | None:
    """Start WAL file of the oldest base backup kept locally or off-site; None on a guess."""
    known = {**read_state(settings).get("base_starts", {}), **_local_base_starts(settings)}
    starts = []
    for row in catalog.list(kind=KIND):
        kept = row.status in (CREATED, VERIFIED) or row.offsite_status in REMOTE_KEPT
        if not kept:
            continue
        if row.id not in known:
            log.warning("off-site WAL retention skipped: start of base backup %s unknown", row.id)
            return None
        starts.append(known[row.id])
    return min(starts, key=segment_part) if starts else None


def prune_remote_wal(settings: Settings, catalog: Catalog, *, dry_run: bool = False) -> list[str]:
    """Remove remote WAL older than every kept base backup (history files stay) on every
    target; the names removed anywhere."""
    cutoff = remote_cutoff(settings, catalog)
    if cutoff is None:
        return []

    def one(name: str, remote: Any) -> list[str]:
        folder = remote.key(REMOTE_FOLDER) + "/"
        present = _remote_listing(remote, folder)
        stems = {n.removesuffix(SUFFIX): n for n in present if n.endswith(SUFFIX)}
        bare = {stem.removesuffix(PARTIAL): stem for stem in stems}
        doomed = sorted(stems[bare[b]] for b in prunable(list(bare), cutoff))
        if doomed and not dry_run:
            _delete(remote, [folder + n for n in doomed], "pruning archived WAL off-site")
        if doomed:
            log.info("off-site WAL retention on %s %s %d files before %s", name,
                     "would remove" if dry_run else "removed", len(doomed), cutoff)  # fmt: skip
        return doomed

    done, failed = _each_target(settings, "pruning archived WAL", one)
    _raise_failures(failed, len(done) + len(failed), "pruning archived WAL")
    return sorted({n for doomed in done.values() for n in doomed}, key=lambda n: (n[8:24], n))


# --------------------------------------------------------------------------- fetching back


def download_wal(
    settings: Settings, dest: Path, first: str, identity_file: Path | None = None
) -> list[str]:
    """Every remote WAL file from segment `first` on (history files too) into `dest`, each
    checked against its own checksum (decrypted with `identity_file` when sealed) before it is
    published under its name; VerificationFailed names a damaged one. Returns the names.

    Reads the target that holds segment `first` and the most files from it on (the first in
    configured order on a tie; without any holding `first`, the one with the most files). A
    target that cannot be listed is skipped with a warning; OffsiteError when none can."""
    chosen: tuple[Any, str, list[str]] | None = None
    best: tuple[bool, int] = (False, -1)
    errors: list[str] = []
    for name, remote in _remotes(settings):
        folder = remote.key(REMOTE_FOLDER) + "/"
        try:
            present = _remote_listing(remote, folder)
        except LifeosError as exc:
            log.warning("cannot list archived WAL on off-site target %s: %s", name, exc)
            errors.append(f"{name}: {exc}")
            continue
        wanted = [
            n
            for n in present
            if n.endswith(SUFFIX)
            and ARCHIVABLE.match(n.removesuffix(SUFFIX))
            and (n.endswith(".history" + SUFFIX) or segment_part(n) >= segment_part(first))
        ]
        rank = (first + SUFFIX in present, len(wanted))
        if chosen is None or rank > best:
            chosen, best = (remote, folder, wanted), rank
    if chosen is None:
        raise OffsiteError(
            "no off-site target can list the archived WAL",
            "; ".join(errors),
            "check the targets' endpoints and credentials (LIFEOS_S3_*, LIFEOS_OFFSITE_TARGETS)",
        )
    remote, folder, wanted = chosen

    def fetch_one(name: str) -> str:
        tmp = dest / f".{name}.download"
        with remote.errors(f"downloading {name}"), open(tmp, "wb") as out:
            for chunk in remote.chunks(folder + name):
                out.write(chunk)
        try:
            verify_file(tmp, identity_file)
        except WalError as exc:
            tmp.unlink(missing_ok=True)
            raise VerificationFailed(
                f"off-site WAL file {name} is damaged or cannot be opened", str(exc),
                "recovery from the bucket cannot pass this file; check the local archive",
            ) from None  # fmt: skip
        os.replace(tmp, dest / name)
        return name

    with ThreadPoolExecutor(max_workers=max(1, settings.s3_concurrency)) as pool:
        return sorted(pool.map(fetch_one, wanted), key=lambda n: (n[8:24], n))
