"""Client-side encryption of archives: age v1 (lifeos_backup.formats.agestream) tied to manifests.

The format itself (the streaming writer and reader) lives in lifeos_backup.formats.agestream, the
keys in lifeos_backup.core.agekeys; the WAL hot path imports those without pydantic or zstandard.
This module adds what the backup kinds share: the manifest's `encryption` record, opening an
archive with a given identity file, and checking an encrypted archive without its private key.
The format's names are re-exported here, so callers need one import. No settings: callers pass
the identity file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, Protocol, cast

from lifeos_backup.core.agekeys import (
    Identity,
    Recipient,
    bech32_decode,
    bech32_encode,
    fingerprint,
    generate_identity,
    load_identities,
    parse_identity,
    parse_recipient,
    parse_recipients,
)
from lifeos_backup.core.errors import DecryptionKeyError, VerificationFailed
from lifeos_backup.core.progress import Progress, ProgressFn, ignore
from lifeos_backup.formats.agestream import (
    CHUNK,
    EXTENSION,
    PAYLOAD_NONCE,
    SCHEME,
    SEALED_CHUNK,
    TAG,
    Header,
    OpeningReader,
    SealingWriter,
    check_framing,
    damaged,
    identities_from,
    payload_size_ok,
    read_header,
)
from lifeos_backup.formats.manifest import (
    Encryption,
    Manifest,
    read_manifest,
    require_archive_match,
)
from lifeos_backup.formats.streams import HashingReader, HashingWriter, ReadStream

__all__ = [
    "CHUNK",
    "EXTENSION",
    "PAYLOAD_NONCE",
    "SCHEME",
    "SEALED_CHUNK",
    "TAG",
    "Header",
    "Identity",
    "OpeningReader",
    "Recipient",
    "SealingWriter",
    "bech32_decode",
    "bech32_encode",
    "check_identities",
    "check_sealed",
    "encryption_info",
    "fingerprint",
    "generate_identity",
    "identities_for",
    "identities_from",
    "load_identities",
    "open_plain",
    "open_sealed_manifest",
    "parse_identity",
    "parse_recipient",
    "parse_recipients",
    "payload_size_ok",
    "read_header",
    "seal_file",
    "sealed",
]


def encryption_info(recipients: Sequence[Recipient]) -> Encryption | None:
    """What a manifest records: the scheme and the recipients' fingerprints, never a key."""
    if not recipients:
        return None
    return Encryption(scheme=SCHEME, recipients=[r.fingerprint for r in recipients])


def sealed(out: BinaryIO | HashingWriter, recipients: Sequence[Recipient]) -> BinaryIO:
    """`out` itself when encryption is off, else an encrypting writer into it (close it!).

    Both are file-like enough for what reads or writes through them (write, flush, close).
    """
    sink = cast(BinaryIO, out)
    return cast(BinaryIO, SealingWriter(sink, recipients)) if recipients else sink


def check_identities(identities: Sequence[Identity], recipients: Sequence[str], what: str) -> None:
    """Fail early, with both sides' fingerprints, when no identity fits the manifest."""
    mine = {i.recipient.fingerprint for i in identities}
    if recipients and not mine & set(recipients):
        raise DecryptionKeyError(
            f"cannot decrypt {what}: the configured private key is not one of its recipients",
            f"encrypted for {', '.join(recipients)}; identity file holds {', '.join(sorted(mine))}",
            "set LIFEOS_ENCRYPTION_IDENTITY_FILE to the matching private key",
        )


def identities_for(manifest: Manifest, identity_file: Path | None) -> list[Identity]:
    """The identities that open an encrypted backup, or one clear DecryptionKeyError.

    Restores call this before they create anything, so a missing or wrong key never leaves a
    half-made target behind. `identity_file` is the caller's (LIFEOS_ENCRYPTION_IDENTITY_FILE,
    `settings.encryption_identity_file`); None means none is configured.
    """
    assert manifest.encryption is not None
    what = f"backup {manifest.backup_id}"
    identities = identities_from(identity_file, what)
    check_identities(identities, manifest.encryption.recipients, what)
    return identities


def open_plain(
    src: BinaryIO | ReadStream, manifest: Manifest, identity_file: Path | None
) -> BinaryIO:
    """The archive's plain bytes: `src` itself, or decrypted with the identity in `identity_file`.

    Kinds read archives through this, so every kind decrypts the same way.
    """
    if manifest.encryption is None:
        return cast(BinaryIO, src)
    identities = identities_for(manifest, identity_file)
    return cast(BinaryIO, OpeningReader(src, identities, f"backup {manifest.backup_id}"))


def check_sealed(archive: Path, manifest: Manifest, progress: ProgressFn = ignore) -> None:
    """Verify an encrypted archive without its private key: size, SHA-256, header, framing.

    This proves the bytes on disk are exactly the bytes written (whose members were hashed from
    the sources while writing) and that the file is a complete age stream for as many recipients
    as the manifest names. Member-level checks need the identity (restore, drills, `verify` on a
    machine that has LIFEOS_ENCRYPTION_IDENTITY_FILE).
    """
    assert manifest.encryption is not None
    report = Progress("verifying", bytes_total=manifest.archive.size)
    with open(archive, "rb") as raw:
        hashed = HashingReader(raw)
        header, _ = read_header(hashed)
        while hashed.read(1 << 20):
            report.bytes_done = hashed.size
            progress(report)
    require_archive_match(manifest, archive.name, hashed.size, hashed.hexdigest())
    if len(header.stanzas) != len(manifest.encryption.recipients):
        raise damaged(
            f"{len(header.stanzas)} recipient stanzas, the manifest names "
            f"{len(manifest.encryption.recipients)}"
        )
    check_framing(header, hashed.size)


# --- Sealed manifests (off-site) ------------------------------------------------------------------


class Readable(Protocol):
    """What a sealed manifest is read from: a file, or an object's body as it downloads."""

    def read(self, size: int = -1) -> bytes: ...


_BLOCK = 16 * CHUNK


def seal_file(src: Path, out: BinaryIO, recipients: Sequence[Recipient]) -> tuple[str, int]:
    """Encrypt the file at `src` into `out` for `recipients` (age v1, like the archives).

    Returns the ciphertext's SHA-256 (hex) and size, so its upload can carry a checksum without a
    second read. Streamed: a manifest of a million files is never held in memory.
    """
    hashed = HashingWriter(out)
    writer = SealingWriter(cast(BinaryIO, hashed), recipients)
    with open(src, "rb") as plain:
        while block := plain.read(_BLOCK):
            writer.write(block)
    writer.close()
    return hashed.hexdigest(), hashed.size


def open_sealed_manifest(
    src: Readable, dest: Path, identity_file: Path | None, what: str
) -> Manifest:
    """Decrypt a sealed manifest from `src` into the file `dest` (0600) and read it from there.

    The plain manifest exists only in the caller's private scratch folder, and its entries stream
    from that file (`Manifest.iter_files`) as for a local one. No key, or a key that is not one of
    the recipients, is a DecryptionKeyError; ciphertext that was altered, truncated or extended
    fails age's authentication and is a VerificationFailed naming `what`, never a partial read.
    """
    identities = identities_from(identity_file, what)
    try:
        reader = OpeningReader(src, identities, what)
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            while block := reader.read(_BLOCK):
                out.write(block)
    except VerificationFailed as exc:
        raise VerificationFailed(
            f"{what} is damaged",
            exc.detail,
            "its sealed copy was altered or cut short; use another backup",
        ) from None
    return read_manifest(dest)
