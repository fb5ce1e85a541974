"""The age v1 file format with X25519 recipients, as push/pull streams: writer, reader.

The keys themselves (Bech32 text, recipients, identities) are lifeos_backup.core.agekeys.

Split from lifeos_backup.formats.crypto (which adds manifests and archive checks on top) so that it
depends on nothing but the standard library, `cryptography`, lifeos_backup.core (errors, agekeys)
and lifeos_backup.formats.streams (whose zstandard import is lazy): the WAL hot path (`lifeos-wal
push/fetch`, run by PostgreSQL as its own OS user, often with a bare system python3) seals and opens
segments with it without importing pydantic, zstandard or the settings.

Why age: it is a small, audited, documented format (https://age-encryption.org/v1) with public-key
recipients, so the machines that write backups hold only public keys and cannot read old backups;
the private key (an "identity") is needed only to restore and for drills. An operator can always
decrypt an archive with the stock `age -d -i key.txt` or `rage`, without this program.

Why our own writer instead of pyrage: pyrage's streaming API is pull-based
(`encrypt_io(reader, writer)`), while our archives are written push-based (tar -> compressor ->
encryptor -> hash -> file, one pass). Bridging the two needs a pipe and a thread per archive. The
format is simple enough to write directly with `cryptography` (X25519, HKDF-SHA-256,
ChaCha20-Poly1305), and the tests check interoperability with pyrage in both directions, so this is
age, not a look-alike. docs/decisions.md has the measurements.

Format, briefly: a text header (one `X25519` stanza per recipient, each wrapping the random 16-byte
file key; an HMAC over the header), a 16-byte nonce, then the payload in 64 KiB chunks, each sealed
with ChaCha20-Poly1305 under a key derived from file key and nonce; the chunk nonce is an 11-byte
counter plus a final-chunk flag, so reordering, truncation and extension are all detected.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from lifeos_backup.core.agekeys import Identity, Recipient, load_identities
from lifeos_backup.core.errors import ConfigError, DecryptionKeyError, VerificationFailed
from lifeos_backup.formats.streams import ReadStream

SCHEME = "age-encryption.org/v1"
EXTENSION = ".age"
CHUNK = 64 * 1024
TAG = 16
SEALED_CHUNK = CHUNK + TAG
_VERSION_LINE = b"age-encryption.org/v1\n"
_X25519_LABEL = b"age-encryption.org/v1/X25519"
_FILE_KEY_SIZE = 16
PAYLOAD_NONCE = 16
_MAX_HEADER = 64 * 1024
_COLUMNS = 64


class _Readable(Protocol):
    def read(self, size: int = -1) -> bytes: ...


# --- Primitives -----------------------------------------------------------------------------------


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data).rstrip(b"=")


def _unb64(text: bytes) -> bytes:
    if b"=" in text or b"\r" in text:
        raise ValueError("padded or non-canonical base64")
    return base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)


def _chunk_nonce(counter: int, last: bool) -> bytes:
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def _wrap(file_key: bytes, recipient: Recipient) -> bytes:
    ephemeral = X25519PrivateKey.generate()
    share = ephemeral.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient.public))
    key = _hkdf(shared, share + recipient.public, _X25519_LABEL)
    body = ChaCha20Poly1305(key).encrypt(b"\x00" * 12, file_key, None)
    return b"-> X25519 " + _b64(share) + b"\n" + _b64(body) + b"\n"


def _header(file_key: bytes, recipients: Sequence[Recipient]) -> bytes:
    head = _VERSION_LINE + b"".join(_wrap(file_key, r) for r in recipients) + b"---"
    mac = hmac.new(_hkdf(file_key, b"", b"header"), head, hashlib.sha256).digest()
    return head + b" " + _b64(mac) + b"\n"


# --- Writing --------------------------------------------------------------------------------------


class SealingWriter:
    """Encrypts everything written through it into `out` (age v1); `close()` seals the end.

    Memory stays at about one chunk: full chunks are sealed as soon as a byte beyond them arrives
    (the last chunk needs its own flag, so it is held back until close). Closing does not close
    `out`.
    """

    def __init__(self, out: BinaryIO, recipients: Sequence[Recipient]) -> None:
        if not recipients:
            raise ConfigError("encryption needs at least one recipient")
        self._out = out
        file_key = os.urandom(_FILE_KEY_SIZE)
        nonce = os.urandom(PAYLOAD_NONCE)
        out.write(_header(file_key, recipients) + nonce)
        self._aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
        self._buffer = bytearray()
        self._counter = 0
        self._closed = False

    def write(self, data: bytes) -> int:
        self._buffer += data
        if len(self._buffer) > CHUNK:
            whole = (len(self._buffer) - 1) // CHUNK * CHUNK  # keep >= 1 byte for the last chunk
            with memoryview(self._buffer) as view:
                for start in range(0, whole, CHUNK):
                    self._seal(view[start : start + CHUNK], last=False)
            del self._buffer[:whole]
        return len(data)

    def _seal(self, chunk: bytes | memoryview, last: bool) -> None:
        # bytes(): cryptography before 42 (Debian 12's python3-cryptography, which the WAL hot
        # path may run on) accepts nothing else; one 64 KiB copy per chunk.
        plain = bytes(chunk)
        self._out.write(self._aead.encrypt(_chunk_nonce(self._counter, last), plain, None))
        self._counter += 1

    def flush(self) -> None:
        self._out.flush()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._seal(bytes(self._buffer), last=True)
            self._buffer.clear()
            self._out.flush()


# --- Reading --------------------------------------------------------------------------------------


@dataclass
class Header:
    """A parsed age header: its stanzas (type, args, body), the bytes its MAC covers, the MAC."""

    stanzas: list[tuple[str, list[str], bytes]]
    covered: bytes
    mac: bytes
    size: int  # bytes of the header, including its last line


def damaged(detail: str) -> VerificationFailed:
    return VerificationFailed(
        "encrypted archive is damaged", detail, "the backup is not good; use another one"
    )


def read_header(src: _Readable) -> tuple[Header, bytes]:
    """Parse the header from `src`; returns it and the payload bytes read past it."""
    data = b""
    while b"\n---" not in data or not data.split(b"\n---", 1)[1].count(b"\n"):
        block = src.read(4096)
        if not block:
            raise damaged("the age header is incomplete")
        data += block
        if len(data) > _MAX_HEADER:
            raise damaged("the age header is too long")
    if not data.startswith(_VERSION_LINE):
        raise damaged("the file is not in age v1 format")
    end = data.index(b"\n---") + 4
    covered = data[:end]
    mac_line, rest = data[end:].split(b"\n", 1)
    if not mac_line.startswith(b" "):
        raise damaged("malformed age header MAC line")
    lines = covered[len(_VERSION_LINE) : -3].split(b"\n")[:-1]
    stanzas: list[tuple[str, list[str], bytes]] = []
    try:
        mac = _unb64(mac_line[1:])
        index = 0
        while index < len(lines):
            if not lines[index].startswith(b"-> "):
                raise ValueError("expected a stanza")
            kind, *args = lines[index][3:].decode("ascii").split(" ")
            body = b""
            index += 1
            while True:
                line = lines[index]
                index += 1
                body += _unb64(line)
                if len(line) < _COLUMNS:
                    break
            stanzas.append((kind, args, body))
    except (ValueError, IndexError, UnicodeDecodeError) as exc:
        raise damaged(f"malformed age header ({exc})") from None
    return Header(stanzas, covered, mac, len(covered) + len(mac_line) + 1), rest


def _unwrap(header: Header, identities: Sequence[Identity]) -> bytes | None:
    for kind, args, body in header.stanzas:
        if kind != "X25519" or len(args) != 1 or len(body) != _FILE_KEY_SIZE + TAG:
            continue
        try:
            share = _unb64(args[0].encode())
            peer = X25519PublicKey.from_public_bytes(share)
        except ValueError:
            raise damaged("malformed X25519 stanza in the age header") from None
        for identity in identities:
            try:
                shared = identity.private.exchange(peer)
                key = _hkdf(shared, share + identity.recipient.public, _X25519_LABEL)
                return ChaCha20Poly1305(key).decrypt(b"\x00" * 12, body, None)
            except (InvalidTag, ValueError):  # ValueError: low-order point, all-zero secret
                continue
    return None


class OpeningReader(ReadStream):
    """Decrypts an age stream from `src`; every chunk is authenticated before it is returned.

    A wrong key raises DecryptionKeyError; altered, truncated or extended data raises
    VerificationFailed. `drain()` reads (and so authenticates) the rest.
    """

    def __init__(self, src: _Readable, identities: Sequence[Identity], name: str = "") -> None:
        self._src = src
        header, rest = read_header(src)
        file_key = _unwrap(header, identities)
        if file_key is None:
            raise DecryptionKeyError(
                f"cannot decrypt {name or 'the archive'}: no configured identity matches",
                f"identities {', '.join(i.recipient.fingerprint for i in identities)}",
                "set LIFEOS_ENCRYPTION_IDENTITY_FILE to the private key of one of the "
                "recipients it was encrypted for",
            )
        expected = hmac.new(_hkdf(file_key, b"", b"header"), header.covered, hashlib.sha256)
        if not hmac.compare_digest(expected.digest(), header.mac):
            raise damaged("the age header MAC does not match (the header was altered)")
        self._pending = rest
        nonce = self._read_exact(PAYLOAD_NONCE)
        if len(nonce) != PAYLOAD_NONCE:
            raise damaged("the payload nonce is missing")
        self._aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
        self._counter = 0
        self._next = self._read_exact(SEALED_CHUNK)
        self._plain = b""
        self._offset = 0
        self._done = False

    def _read_exact(self, size: int) -> bytes:
        parts = [self._pending[:size]]
        self._pending = self._pending[size:]
        have = len(parts[0])
        while have < size:
            block = self._src.read(size - have)
            if not block:
                break
            parts.append(block)
            have += len(block)
        return b"".join(parts)

    def _open_next(self) -> None:
        sealed = self._next
        self._next = self._read_exact(SEALED_CHUNK) if len(sealed) == SEALED_CHUNK else b""
        last = not self._next
        try:
            plain = self._aead.decrypt(_chunk_nonce(self._counter, last), sealed, None)
        except InvalidTag:
            raise damaged(
                f"chunk {self._counter} failed authentication (altered or truncated)"
            ) from None
        if last and not plain and self._counter:
            raise damaged("empty final chunk after data")
        self._counter += 1
        self._plain, self._offset, self._done = plain, 0, last

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(CHUNK), b""))
        while self._offset >= len(self._plain) and not self._done:
            self._open_next()
        data = self._plain[self._offset : self._offset + size]
        self._offset += len(data)
        return data

    def drain(self) -> None:
        """Read to the end, so every chunk (the final one too) is authenticated."""
        super().drain()
        drain = getattr(self._src, "drain", None)
        if drain is not None:
            drain()


def identities_from(identity_file: Path | None, what: str) -> list[Identity]:
    """The configured identities, or one clear error saying that a key is needed."""
    if identity_file is None:
        raise DecryptionKeyError(
            f"{what} is encrypted and no private key is configured",
            hint="set LIFEOS_ENCRYPTION_IDENTITY_FILE to the age identity file (kept offline)",
        )
    return load_identities(identity_file)


def payload_size_ok(payload: int) -> bool:
    """Whether `payload` bytes (after header and nonce) can be a sequence of sealed chunks."""
    whole, rest = divmod(payload, SEALED_CHUNK)
    if rest == 0:
        return whole > 0
    if rest == TAG:  # an empty final chunk is allowed only as the only chunk
        return whole == 0
    return rest > TAG


def check_framing(header: Header, total: int) -> None:
    """Without a key: `total` bytes of age file must be this header, a nonce, whole chunks."""
    if not payload_size_ok(total - header.size - PAYLOAD_NONCE):
        raise damaged("the payload is not a whole sequence of sealed chunks")
