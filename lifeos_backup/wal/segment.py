"""What every WAL module shares: the archived file's header format, the errors, the environment.

The lowest module of lifeos_backup.wal: lifeos_backup.wal.archive (push, fetch, status) and
lifeos_backup.wal.sealing (age-encrypted segments) both build on it. Standard library only.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import BinaryIO

# The header: a zstd skippable frame holding the text below (lifeos_backup.wal.archive).
TEXT_LEN = 104
HEADER_LEN = 8 + TEXT_LEN
SEALED_TEXT_LEN = TEXT_LEN + 4
SEALED_HEADER_LEN = 8 + SEALED_TEXT_LEN
_MAGIC = struct.pack("<II", 0x184D2A5E, TEXT_LEN)
_SEALED_MAGIC = struct.pack("<II", 0x184D2A5E, SEALED_TEXT_LEN)
_TEXT = "LIFEOS-WAL v1 sha256={} size={:012d}"
_PLAIN_END = "\n"
_SEALED_END = " age\n"
ENV_RECIPIENTS = "LIFEOS_ENCRYPTION_RECIPIENTS"  # set: push seals (age public keys, age1...)
ENV_IDENTITY = "LIFEOS_ENCRYPTION_IDENTITY_FILE"  # fetch opens sealed files with this key file


class WalError(Exception):
    """A WAL archive operation failed; what happened, detail and hint, as LifeosError has."""

    def __init__(self, what: str, detail: str = "", hint: str = "") -> None:
        super().__init__(what, detail, hint)
        self.what, self.detail, self.hint = what, detail, hint

    def __str__(self) -> str:
        text = self.what + (f": {self.detail}" if self.detail else "")
        return text + (f" (hint: {self.hint})" if self.hint else "")


class SegmentMissing(WalError):
    """The archive does not hold the requested file: normal at the end of recovery."""


class ArchiveConflict(WalError):
    """The archive already holds this name with different content: never overwritten."""


class CorruptSegment(WalError):
    """An archived file does not match its own checksum."""


class KeyUnavailable(WalError):
    """A sealed file cannot be opened: no private key configured, or not the right one.

    Not "missing" (exit 1) for restore_command: recovery must stop, not end early and promote.
    """


@dataclass(frozen=True)
class Header:
    """SHA-256 and size of the WAL file itself; equal content is equal, sealed or not."""

    sha256: str
    size: int
    sealed: bool = field(default=False, compare=False)

    @property
    def length(self) -> int:
        return SEALED_HEADER_LEN if self.sealed else HEADER_LEN

    def encode(self) -> bytes:
        magic, end = (_SEALED_MAGIC, _SEALED_END) if self.sealed else (_MAGIC, _PLAIN_END)
        return magic + (_TEXT.format(self.sha256, self.size) + end).encode("ascii")


def read_header(handle: BinaryIO, where: str) -> Header:
    """Parse the header at the start of an archived file; CorruptSegment if it is not ours."""
    magic = handle.read(8)
    sealed = magic == _SEALED_MAGIC
    length = SEALED_TEXT_LEN if sealed else TEXT_LEN
    raw = handle.read(length) if sealed or magic == _MAGIC else b""
    text = raw.decode("ascii", errors="replace")
    ok = (
        len(raw) == length
        and text.startswith("LIFEOS-WAL v1 sha256=")
        and text[103:] == (_SEALED_END if sealed else _PLAIN_END)
    )
    if ok:
        try:
            return Header(text[21:85], int(text[91:103]), sealed)
        except ValueError:
            pass
    raise CorruptSegment(f"{where} is not a lifeos WAL archive file", "bad header")
