"""The age v1 stream writer/reader: interoperable with pyrage (the reference `age` in Rust),
and every kind of tampering or a wrong key is refused."""

from __future__ import annotations

import io
import os

import pyrage
import pytest

from lifeos_backup.core.errors import ConfigError, DecryptionKeyError, VerificationFailed
from lifeos_backup.formats.crypto import (
    CHUNK,
    SEALED_CHUNK,
    OpeningReader,
    SealingWriter,
    bech32_decode,
    bech32_encode,
    fingerprint,
    generate_identity,
    parse_identity,
    parse_recipient,
    parse_recipients,
    payload_size_ok,
    read_header,
)

SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 3 * CHUNK + 17]


def seal(data: bytes, recipients: list[str], write_size: int = 7000) -> bytes:
    out = io.BytesIO()
    writer = SealingWriter(out, [parse_recipient(r) for r in recipients])
    for start in range(0, len(data), write_size):
        writer.write(data[start : start + write_size])
    writer.close()
    return out.getvalue()


def open_all(sealed: bytes, identity: str) -> bytes:
    reader = OpeningReader(io.BytesIO(sealed), [parse_identity(identity)])
    return reader.read()


@pytest.fixture(scope="module")
def keys() -> tuple[str, str]:
    return generate_identity()


def test_keys_interoperate_with_age(keys: tuple[str, str]) -> None:
    identity, recipient = keys
    assert str(pyrage.x25519.Identity.from_str(identity).to_public()) == recipient
    theirs = pyrage.x25519.Identity.generate()
    assert parse_identity(str(theirs)).recipient.text == str(theirs.to_public())
    hrp, data = bech32_decode(recipient)
    assert hrp == "age" and bech32_encode(hrp, data) == recipient


@pytest.mark.parametrize("size", SIZES)
def test_our_archives_decrypt_with_age_and_age_archives_with_ours(
    keys: tuple[str, str], size: int
) -> None:
    identity, recipient = keys
    data = os.urandom(size)
    sealed = seal(data, [recipient])
    assert pyrage.decrypt(sealed, [pyrage.x25519.Identity.from_str(identity)]) == data
    theirs = pyrage.encrypt(data, [pyrage.x25519.Recipient.from_str(recipient)])
    assert open_all(theirs, identity) == data
    header, _ = read_header(io.BytesIO(sealed))
    assert payload_size_ok(len(sealed) - header.size - 16)


def test_any_of_several_recipients_can_read(keys: tuple[str, str]) -> None:
    other_identity, other_recipient = generate_identity()
    sealed = seal(b"payload" * 1000, [keys[1], other_recipient])
    assert open_all(sealed, keys[0]) == open_all(sealed, other_identity) == b"payload" * 1000


def test_wrong_key_is_one_clear_error(keys: tuple[str, str]) -> None:
    sealed = seal(b"secret", [keys[1]])
    stranger, _ = generate_identity()
    with pytest.raises(DecryptionKeyError, match="no configured identity matches"):
        open_all(sealed, stranger)


@pytest.mark.parametrize(
    "damage",
    ["flip payload byte", "truncate at chunk boundary", "drop last byte", "append", "swap chunks"],
)
def test_tampering_is_detected(keys: tuple[str, str], damage: str) -> None:
    identity, recipient = keys
    data = os.urandom(3 * CHUNK + 100)
    sealed = bytearray(seal(data, [recipient]))
    header, _ = read_header(io.BytesIO(bytes(sealed)))
    start = header.size + 16
    if damage == "flip payload byte":
        sealed[start + CHUNK + 5] ^= 1
    elif damage == "truncate at chunk boundary":
        del sealed[start + 2 * SEALED_CHUNK :]
    elif damage == "drop last byte":
        del sealed[-1]
    elif damage == "append":
        sealed += os.urandom(SEALED_CHUNK)
    else:
        first = sealed[start : start + SEALED_CHUNK]
        second = sealed[start + SEALED_CHUNK : start + 2 * SEALED_CHUNK]
        sealed[start : start + 2 * SEALED_CHUNK] = second + first
    with pytest.raises(VerificationFailed):
        open_all(bytes(sealed), identity)


def test_altered_header_fails_its_mac(keys: tuple[str, str]) -> None:
    identity, recipient = keys
    sealed = seal(b"x" * 100, [recipient])
    # An extra stanza (well-formed, unknown type): the file key still unwraps, the MAC does not.
    version, rest = sealed.split(b"\n", 1)
    forged = version + b"\n-> grease abc\n\n" + rest
    with pytest.raises(VerificationFailed, match="MAC"):
        open_all(forged, identity)


def test_invalid_keys_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="recipient"):
        parse_recipients("age1notakey")
    with pytest.raises(ConfigError, match="identity"):
        parse_identity("AGE-SECRET-KEY-1NOPE")
    identity, recipient = generate_identity()
    with pytest.raises(ConfigError):
        parse_recipient(identity)  # a private key where a public one belongs
    assert [r.text for r in parse_recipients(f" {recipient},\n{recipient} ")] == [recipient] * 2
    assert parse_recipients("") == [] and parse_recipients(None) == []


def test_fingerprint_and_repr_never_show_a_key() -> None:
    identity, recipient = generate_identity()
    parsed = parse_identity(identity)
    assert identity not in repr(parsed) and fingerprint(recipient) in repr(parsed)
    assert recipient not in fingerprint(recipient)


def test_payload_sizes() -> None:
    assert payload_size_ok(16)  # empty plaintext: one empty final chunk
    assert not payload_size_ok(15) and not payload_size_ok(0)
    assert payload_size_ok(SEALED_CHUNK) and payload_size_ok(SEALED_CHUNK + 17)
    assert not payload_size_ok(SEALED_CHUNK + 16)  # an empty final chunk after data
    assert not payload_size_ok(SEALED_CHUNK + 5)
