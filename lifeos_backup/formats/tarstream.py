"""A small streaming tar writer and reader (POSIX ustar, with pax headers when names need them).

Why not `tarfile`: on 50,000 small files it costs ~2x more CPU to write and ~5x more to read
(docs/decisions.md has the figures), and create+verify must beat `tar czf`. The output is plain
tar that GNU tar and `tarfile` read; tests check both directions.
"""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Literal, cast

from lifeos_backup.core.errors import UnsafeArchive, VerificationFailed
from lifeos_backup.formats.streams import ReadAhead, ReadStream

BLOCK = 512
_ZEROS = bytes(BLOCK * 2)
_MAX_USTAR_SIZE = 8**11 - 1
_TYPES: dict[bytes, Literal["file", "dir", "symlink"]] = {
    b"0": "file",
    b"\0": "file",
    b"5": "dir",
    b"2": "symlink",
}
_TYPE_FLAGS = {"file": b"0", "dir": b"5", "symlink": b"2"}

MemberType = Literal["file", "dir", "symlink"]
_OWNER = b"0000000\0" * 2  # uid, gid
_MAGIC = b"ustar\x0000" + bytes(64) + b"0000000\0" * 2  # magic, version, user/group names, dev
_FIXED_SUM = sum(_OWNER) + sum(_MAGIC) + 8 * ord(" ")  # the checksum field counts as spaces


@dataclass(frozen=True, slots=True)
class Member:
    """What an archive says about one entry; paths are relative, '/'-separated, no trailing '/'."""

    path: str
    type: MemberType
    mode: int
    size: int = 0
    mtime: int = 0
    linkname: str = ""


def _split_ustar(name: bytes) -> tuple[bytes, bytes] | None:
    """Split a long name into ustar's prefix/name fields, or None if it cannot be."""
    if len(name) <= 100:
        return b"", name
    cut = name.rfind(b"/", 0, 156)
    if cut > 0 and len(name) - cut - 1 <= 100:
        return name[:cut], name[cut + 1 :]
    return None


def header(member: Member) -> bytes:
    """Header block(s) for `member`: one ustar block, or pax blocks when ustar cannot hold it."""
    name = member.path + ("/" if member.type == "dir" else "")
    raw = name.encode("utf-8", "surrogateescape")
    link = member.linkname.encode("utf-8", "surrogateescape")
    split = _split_ustar(raw) if raw.isascii() and link.isascii() and len(link) <= 100 else None
    if split is None or member.size > _MAX_USTAR_SIZE or not 0 <= member.mtime <= _MAX_USTAR_SIZE:
        info = tarfile.TarInfo(name)
        info.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE}[
            member.type
        ]
        info.mode, info.size, info.mtime, info.linkname = (
            member.mode,
            member.size,
            member.mtime,
            member.linkname,
        )
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    prefix, short = split
    mode = b"%07o\0" % (member.mode & 0o7777)
    size = b"%011o\0" % member.size
    mtime = b"%011o\0" % member.mtime
    flag = _TYPE_FLAGS[member.type]
    # The checksum is the sum of the block's bytes with its own field as spaces: the constant
    # fields' share is precomputed, the rest is summed from the (short) variable fields.
    checksum = _FIXED_SUM + sum(short) + sum(prefix) + sum(link) + sum(mode) + sum(size)
    checksum += sum(mtime) + flag[0]
    return b"".join(
        (
            short.ljust(100, b"\0"),
            mode,
            _OWNER,
            size,
            mtime,
            b"%06o\0 " % checksum,
            flag,
            link.ljust(100, b"\0"),
            _MAGIC,
            prefix.ljust(155, b"\0"),
            _ZEROS[:12],
        )
    )


class TarWriter:
    """Writes members to a binary stream; the caller supplies file content as bytes or chunks."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out

    def add(self, member: Member, data: bytes = b"") -> None:
        """Add a member whose whole content is `data` (small files: one read, one write)."""
        if data:
            self._out.write(b"".join((header(member), data, _ZEROS[: -len(data) % BLOCK])))
        else:
            self._out.write(header(member))

    def add_stream(self, member: Member, chunks: Iterator[bytes]) -> None:
        """Add a member whose content arrives in chunks totalling exactly member.size bytes."""
        self._out.write(header(member))
        written = 0
        for chunk in chunks:
            written += len(chunk)
            self._out.write(chunk)
        if written != member.size:
            raise VerificationFailed(
                f"{member.path} changed size while being read",
                f"expected {member.size} bytes, read {written}",
                "run the backup again when the file is not being written",
            )
        self._pad(written)

    def _pad(self, size: int) -> None:
        pad = -size % BLOCK
        if pad:
            self._out.write(_ZEROS[:pad])

    def close(self) -> None:
        """Write the end-of-archive marker; does not close the underlying stream."""
        self._out.write(_ZEROS)


def _number(field: bytes) -> int:
    if field[:1] in (b"\x80", b"\xff"):  # GNU base-256 for big numbers; 0xff: two's complement
        value = int.from_bytes(field[1:], "big")
        return value - 256 ** (len(field) - 1) if field[:1] == b"\xff" else value
    text = field.rstrip(b"\0 ").strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:  # e.g. a damaged checksum field, which the checksum cannot cover
        raise VerificationFailed(
            "archive header is corrupt", f"bad number field {bytes(field)!r}"
        ) from None


def _parse_pax(data: bytes) -> dict[str, str]:
    records: dict[str, str] = {}
    pos = 0
    try:  # pax data sits outside the header checksum, so damage shows up here
        while pos < len(data):
            space = data.index(b" ", pos)
            length = int(data[pos:space])
            if length <= space - pos or pos + length > len(data):
                raise ValueError(f"bad record length {length}")
            key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
            records[key.decode("utf-8")] = value.decode("utf-8", "surrogateescape")
            pos += length
        if not re.fullmatch(r"[0-9]+", records.get("size", "0")):
            raise ValueError(f"bad size {records['size']!r}")
        if not re.fullmatch(r"-?[0-9]+(\.[0-9]*)?", records.get("mtime", "0")):
            raise ValueError(f"bad mtime {records['mtime']!r}")
    except ValueError as exc:
        raise VerificationFailed("archive header is corrupt", f"bad pax header: {exc}") from None
    return records


class TarReader:
    """Iterates members of a tar stream; content must be read via `chunks()` before moving on."""

    def __init__(self, stream: BinaryIO | ReadStream, chunk_size: int = 1 << 20) -> None:
        self._in = (
            stream
            if hasattr(stream, "peek") or isinstance(stream, ReadAhead)  # these read exactly
            else io.BufferedReader(cast(io.RawIOBase, stream), 1 << 20)
        )
        self._chunk = chunk_size
        self._left = 0
        self._pad = 0
        # Content beyond one chunk is taken as the stream has it (read1: no joining of parts).
        self._read_some = getattr(self._in, "read1", None) or self._in.read

    def _read_part(self, size: int) -> bytes:
        """At most `size` bytes, at least one: a big member's content or its skipped rest."""
        data = self._read_some(size)
        if not data:
            raise VerificationFailed("archive is truncated", f"wanted {size} more bytes, got 0")
        return data

    def _read_exact(self, size: int) -> bytes:
        data = self._in.read(size)
        if len(data) != size:
            raise VerificationFailed(
                "archive is truncated", f"wanted {size} bytes, got {len(data)}"
            )
        return data

    def _skip_rest(self) -> None:
        while self._left:
            self._left -= len(self._read_part(min(self._left, self._chunk)))
        if self._pad:
            self._read_exact(self._pad)
            self._pad = 0

    def chunks(self) -> Iterator[bytes]:
        """Content of the current member, in chunks of at most chunk_size bytes."""
        while self._left:
            if self._left <= self._chunk:  # the rest and its padding in one read
                size, self._left = self._left, 0
                data = self._read_exact(size + self._pad)
                self._pad = 0
                yield data[:size] if len(data) > size else data
                return
            data = self._read_part(self._chunk)
            self._left -= len(data)
            yield data

    def read_all(self) -> bytes:
        """Whole content of the current (small) member."""
        return b"".join(self.chunks())

    def __iter__(self) -> Iterator[Member]:
        pax: dict[str, str] = {}
        long_name = long_link = None
        while True:
            self._skip_rest()
            block = self._read_exact(BLOCK)
            if block == _ZEROS[:BLOCK]:
                return
            stored = _number(block[148:156])
            if stored != sum(block[:148]) + 256 + sum(block[156:]):
                raise VerificationFailed("archive header is corrupt", "header checksum mismatch")
            flag = block[156:157]
            size = _number(block[124:136])
            if flag in (b"x", b"g", b"L", b"K"):
                data = self._read_exact(size + (-size % BLOCK))[:size]
                if flag == b"x":
                    pax = _parse_pax(data)
                elif flag == b"L":
                    long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
                elif flag == b"K":
                    long_link = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
                continue
            if flag not in _TYPES:
                raise UnsafeArchive(
                    "archive holds a refused member type",
                    f"tar type flag {flag!r} (devices, hard links and FIFOs are not restored)",
                )
            name = block[0:100].split(b"\0", 1)[0]
            prefix = block[345:500].split(b"\0", 1)[0] if block[257:262] == b"ustar" else b""
            path = (prefix + b"/" + name if prefix else name).decode("utf-8", "surrogateescape")
            path = pax.get("path", long_name or path)
            link = pax.get(
                "linkpath",
                long_link or block[157:257].split(b"\0", 1)[0].decode("utf-8", "surrogateescape"),
            )
            size = int(pax["size"]) if "size" in pax else size
            mtime = pax.get("mtime")  # pax: times outside the ustar field, or fractional ones
            kind = _TYPES[flag]
            if kind != "file":
                size = 0
            self._left, self._pad = size, -size % BLOCK
            pax, long_name, long_link = {}, None, None
            yield Member(
                path=path.rstrip("/"),
                type=kind,
                mode=_number(block[100:108]) & 0o7777,
                size=size,
                mtime=int(mtime.partition(".")[0]) if mtime else _number(block[136:148]),
                linkname=link,
            )
