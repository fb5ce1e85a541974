"""Sealed WAL files: archived segments encrypted for age recipients, opened with an identity.

Imported by lifeos_backup.wal.archive only when a push has LIFEOS_ENCRYPTION_RECIPIENTS or a
fetched file is sealed, so the unencrypted hot path keeps to the standard library. This loads
lifeos_backup.formats.agestream (the age format on `cryptography`, the same writer and reader the
backup archives use) and turns its errors into the WAL archive's own, whose exit codes PostgreSQL
acts on: a missing or wrong key must abort recovery (126), never read as "segment missing" (1).

What a sealed file keeps in the clear: our header (the segment's name, size and SHA-256, needed to
compare a re-pushed segment on a machine that holds only public keys). The segment's content is
age-encrypted, the zstd frame inside it. The same trade-off as the manifests' member lists.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from lifeos_backup.wal.segment import (
    ENV_IDENTITY,
    ENV_RECIPIENTS,
    CorruptSegment,
    KeyUnavailable,
    WalError,
    read_header,
)


def _age() -> Any:
    """lifeos_backup.formats.agestream, or a clear WalError when this Python lacks
    `cryptography`."""
    try:
        from lifeos_backup.formats import agestream
    except ImportError as exc:
        raise WalError(
            "WAL encryption needs the Python package `cryptography`",
            f"{sys.executable} cannot import it ({exc})",
            f"install it for the server's python3 (Debian: python3-cryptography), or unset "
            f"{ENV_RECIPIENTS} in archive_command's environment",
        ) from None
    return agestream


@contextlib.contextmanager
def age_errors(where: str = "") -> Iterator[None]:
    """The age layer's LifeosErrors as WalErrors (prefixed with `where`), so the CLI's exit
    codes stay right."""
    from lifeos_backup.core.errors import ConfigError, DecryptionKeyError, VerificationFailed

    prefix = f"{where}: " if where else ""
    try:
        yield
    except DecryptionKeyError as exc:
        raise KeyUnavailable(prefix + exc.what, exc.detail, exc.hint) from None
    except VerificationFailed as exc:
        raise CorruptSegment(prefix + exc.what, exc.detail, exc.hint) from None
    except ConfigError as exc:
        raise WalError(prefix + exc.what, exc.detail, exc.hint) from None


def parse_recipients(text: str) -> list[Any]:
    """The age recipients of LIFEOS_ENCRYPTION_RECIPIENTS; WalError when one does not parse."""
    _age()  # a clear WalError when this Python lacks `cryptography`
    from lifeos_backup.core import agekeys

    with age_errors(ENV_RECIPIENTS):
        return list(agekeys.parse_recipients(text))


def sealer(out: BinaryIO, recipients: Sequence[Any]) -> Any:
    """An age writer into `out`; close it to seal the final chunk (`out` stays open)."""
    return _age().SealingWriter(out, recipients)


class _Opened:
    """An age reader whose errors are WalErrors (it is read inside zstd and the feeder thread)."""

    def __init__(self, reader: Any, where: str) -> None:
        self._reader, self._where = reader, where

    def read(self, size: int = -1, /) -> bytes:
        with age_errors(self._where):
            return bytes(self._reader.read(size))

    def drain(self) -> None:
        with age_errors(self._where):
            self._reader.drain()


def opener(handle: BinaryIO, where: str, identity_file: Path | None) -> _Opened:
    """The plain zstd frame of a sealed file (`handle` positioned after our header)."""
    age = _age()
    what = f"sealed WAL file {where}"
    with age_errors():  # the messages name `what`
        if identity_file is None:
            raise KeyUnavailable(
                f"{what} needs the private key to be read",
                f"{ENV_IDENTITY} is not set in restore_command's environment",
                f"set {ENV_IDENTITY} to the age identity file (readable by the server's OS user)",
            )
        identities = age.load_identities(identity_file)
        return _Opened(age.OpeningReader(handle, identities, what), what)


def check_without_key(path: Path) -> None:
    """What a holder of public keys only can check: our header, the age header, whole chunks."""
    age = _age()
    with open(path, "rb") as handle, age_errors(path.name):
        ours = read_header(handle, path.name)
        header, _ = age.read_header(handle)
        age.check_framing(header, os.fstat(handle.fileno()).st_size - ours.length)
