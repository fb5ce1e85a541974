"""age keys as text: Bech32, X25519 recipients (`age1...`) and identities (`AGE-SECRET-KEY-1...`).

The lowest floor, so that the settings can reject a mistyped recipient when they are read, and
the age format (lifeos_backup.formats.agestream) builds on the same parsing. Standard library,
`cryptography` and lifeos_backup.core.errors only.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from lifeos_backup.core.errors import ConfigError, DecryptionKeyError

RECIPIENT_HRP = "age"
IDENTITY_HRP = "age-secret-key-"


# --- Bech32 (BIP 173), the encoding of age keys ---------------------------------------------------

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _polymod(values: Iterable[int]) -> int:
    check = 1
    for value in values:
        top = check >> 25
        check = (check & 0x1FFFFFF) << 5 ^ value
        for i, gen in enumerate(_GENERATOR):
            check ^= gen if (top >> i) & 1 else 0
    return check


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convert_bits(data: Iterable[int], from_bits: int, to_bits: int, pad: bool) -> list[int]:
    acc = bits = 0
    out: list[int] = []
    maxv = (1 << to_bits) - 1
    for value in data:
        acc = (acc << from_bits) | value
        bits += from_bits
        while bits >= to_bits:
            bits -= to_bits
            out.append((acc >> bits) & maxv)
    if pad and bits:
        out.append((acc << (to_bits - bits)) & maxv)
    elif not pad and (bits >= from_bits or (acc << (to_bits - bits)) & maxv):
        raise ValueError("invalid padding")
    return out


def bech32_encode(hrp: str, data: bytes) -> str:
    words = _convert_bits(data, 8, 5, pad=True)
    check = _polymod([*_hrp_expand(hrp), *words, 0, 0, 0, 0, 0, 0]) ^ 1
    checksum = [(check >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_CHARSET[w] for w in words + checksum)


def bech32_decode(text: str) -> tuple[str, bytes]:
    """(hrp, data) of a Bech32 string; ValueError if it is not one (mixed case, checksum...)."""
    if text.lower() != text and text.upper() != text:
        raise ValueError("mixed case")
    text = text.lower()
    hrp, sep, rest = text.rpartition("1")
    if not sep or not hrp or len(rest) < 6 or any(c not in _CHARSET for c in rest):
        raise ValueError("not bech32")
    words = [_CHARSET.index(c) for c in rest]
    if _polymod([*_hrp_expand(hrp), *words]) != 1:
        raise ValueError("bad checksum")
    return hrp, bytes(_convert_bits(words[:-6], 5, 8, pad=False))


# --- Keys -----------------------------------------------------------------------------------------


def fingerprint(recipient_text: str) -> str:
    """A short, non-secret name for a public key: what manifests record (never a key)."""
    return "sha256:" + hashlib.sha256(recipient_text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Recipient:
    """An age X25519 public key (`age1...`): whoever holds its identity can read the archive."""

    text: str
    public: bytes

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.text)


@dataclass(frozen=True)
class Identity:
    """An age X25519 private key (`AGE-SECRET-KEY-1...`); never logged, never in a manifest."""

    private: X25519PrivateKey
    recipient: Recipient

    def __repr__(self) -> str:  # a key must never reach a log line through repr()
        return f"Identity(recipient={self.recipient.fingerprint})"


def recipient_from_public(public: bytes) -> Recipient:
    return Recipient(bech32_encode(RECIPIENT_HRP, public), public)


def parse_recipient(text: str) -> Recipient:
    try:
        hrp, data = bech32_decode(text.strip())
    except ValueError as exc:
        raise ConfigError(
            "invalid encryption recipient",
            f"{text.strip()[:12]}...: {exc}",
            "LIFEOS_ENCRYPTION_RECIPIENTS takes age public keys (age1...), see `keygen`",
        ) from None
    if hrp != RECIPIENT_HRP or len(data) != 32:
        raise ConfigError(
            "invalid encryption recipient",
            f"{text.strip()[:12]}... is not an age X25519 public key",
            "use the age1... line of `lifeos-backup keygen` or `age-keygen -y`",
        )
    return Recipient(text.strip().lower(), data)


def parse_recipients(text: str | None) -> list[Recipient]:
    """Recipients from a comma- or whitespace-separated list; empty when encryption is off."""
    return [parse_recipient(part) for part in re.split(r"[\s,]+", text or "") if part]


def parse_identity(text: str) -> Identity:
    try:
        hrp, data = bech32_decode(text.strip())
    except ValueError:
        hrp, data = "", b""
    if hrp != IDENTITY_HRP or len(data) != 32:
        raise ConfigError(
            "invalid encryption identity",
            "a line is not an age X25519 secret key (AGE-SECRET-KEY-1...)",
            "LIFEOS_ENCRYPTION_IDENTITY_FILE must name a file written by `keygen` or age-keygen",
        )
    private = X25519PrivateKey.from_private_bytes(data)
    public = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return Identity(private, recipient_from_public(public))


def load_identities(path: Path) -> list[Identity]:
    """The identities of an age key file (comment lines start with '#')."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise DecryptionKeyError(
            f"cannot read the encryption identity file {path}",
            exc.strerror or str(exc),
            "check LIFEOS_ENCRYPTION_IDENTITY_FILE",
        ) from None
    identities = [parse_identity(line) for line in lines if line.strip() and line[0] != "#"]
    if not identities:
        raise DecryptionKeyError(
            f"{path} holds no age identity", hint="check LIFEOS_ENCRYPTION_IDENTITY_FILE"
        )
    return identities


def generate_identity() -> tuple[str, str]:
    """A new key pair: (identity text AGE-SECRET-KEY-1..., recipient text age1...)."""
    secret = X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    text = bech32_encode(IDENTITY_HRP, secret).upper()
    return text, parse_identity(text).recipient.text
