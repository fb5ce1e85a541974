"""Tests of the streaming tar writer/reader against `tarfile` and GNU tar, in both directions.

About byte identity with `tarfile` (Python 3.11): for a plain member our ustar block equals
`TarInfo.tobuf(USTAR_FORMAT)` everywhere except the devmajor/devminor fields. `tarfile` leaves them
as NUL bytes for non-device members, we (like GNU tar 1.34 `--format=ustar`) write "0000000\\0".
Both are valid ustar; the checksum differs only because of that. The byte test therefore patches
tarfile's dev fields to ours, recomputes the checksum the way tarfile does and then demands exact
equality of all 512 bytes. For names longer than 100 bytes the two split name/prefix differently
(tarfile takes the shortest prefix that works, we take the longest), so those are compared by
parsing.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lifeos_backup.core.errors import UnsafeArchive, VerificationFailed
from lifeos_backup.formats.tarstream import BLOCK, Member, TarReader, TarWriter, header

TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE}
KIND = {tarfile.REGTYPE: "file", tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink"}
LONG_DIR = "deep/" + "/".join(f"level{i:02d}-" + "n" * 20 for i in range(6))  # 178 chars
VERY_LONG = "/".join(f"seg{i}-" + "v" * 40 for i in range(7)) + "/end.json"  # > 255 chars
UNSPLITTABLE = "u/" + "w" * 120 + ".json"  # total < 255, but the last part alone is > 100
FIVE_MB = 5 * 1024 * 1024


def tarfile_ustar(member: Member) -> bytes:
    info = tarfile.TarInfo(member.path)
    info.type = TYPES[member.type]
    info.mode, info.size, info.mtime = member.mode, member.size, member.mtime
    info.linkname = member.linkname
    assert (info.uid, info.gid, info.uname, info.gname) == (0, 0, "", "")
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")


def parse_block(block: bytes) -> tarfile.TarInfo:
    """tarfile's view of one ustar block; raises if its checksum is wrong."""
    return tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")


def archive_of(members: list[tuple[Member, bytes]]) -> bytes:
    buf = io.BytesIO()
    writer = TarWriter(buf)
    for member, data in members:
        writer.add(member, data)
    writer.close()
    return buf.getvalue()


def read_back(raw: bytes, chunk_size: int = 1 << 20) -> list[tuple[Member, bytes]]:
    reader = TarReader(io.BytesIO(raw), chunk_size)
    return [(member, reader.read_all()) for member in reader]


# -- (a) header() against tarfile ----------------------------------------------------------------

SIMPLE = [
    Member("data/notes.json", "file", 0o644, 1234, 1_700_000_000),
    Member("data/empty.json", "file", 0o600, 0, 0),
    Member("configs/run.sh", "file", 0o4755, 7, 8**11 - 1),
    Member("presets", "dir", 0o755, 0, 1_600_000_000),
    Member("presets/sub", "dir", 0o700, 0, 42),
    Member("data/link", "symlink", 0o777, 0, 1_700_000_001, "../presets/sub"),
    Member("n" * 100, "file", 0o640, 1, 1),  # exactly fills the name field, no NUL
    Member("p" * 120 + "/" + "n" * 50, "file", 0o644, 9, 5),  # only one way to split
]


@pytest.mark.parametrize("member", SIMPLE, ids=lambda m: m.path[:30])
def test_header_matches_tarfile_ustar_byte_for_byte(member: Member) -> None:
    ours, theirs = header(member), tarfile_ustar(member)
    assert len(ours) == BLOCK
    # The one known difference: device numbers of non-device members.
    assert ours[329:345] == b"0000000\x000000000\x00"
    assert theirs[329:345] == bytes(16)
    patched = bytearray(theirs)
    patched[329:345] = ours[329:345]
    patched[148:156] = b"        "
    patched[148:156] = b"%06o\x00 " % tarfile.calc_chksums(bytes(patched))[0]
    assert ours == bytes(patched)
    # ... and tarfile accepts our block as it is (checksum included) with the same fields.
    info = parse_block(ours)
    assert (info.name.rstrip("/"), KIND[info.type]) == (member.path, member.type)
    assert (info.mode, info.size, info.mtime, info.linkname) == (
        member.mode,
        member.size,
        member.mtime,
        member.linkname,
    )
    assert (info.uid, info.gid, info.uname, info.gname) == (0, 0, "", "")


@pytest.mark.parametrize(
    "member",
    [
        Member(LONG_DIR + "/file.json", "file", 0o644, 10, 100),
        Member(LONG_DIR, "dir", 0o755, 0, 100),
        Member(LONG_DIR + "/link", "symlink", 0o777, 0, 100, "file.json"),
    ],
    ids=["file", "dir", "symlink"],
)
def test_long_ustar_names_split_into_prefix_readable_by_tarfile(member: Member) -> None:
    block = header(member)
    assert len(block) == BLOCK, "a name up to 255 bytes must not need a pax header"
    assert block[345] != 0, "prefix field must be used"
    info = parse_block(block)
    assert info.name.rstrip("/") == member.path
    assert (KIND[info.type], info.mode, info.size, info.mtime, info.linkname) == (
        member.type,
        member.mode,
        member.size,
        member.mtime,
        member.linkname,
    )


@pytest.mark.parametrize(
    "member",
    [
        Member(VERY_LONG, "file", 0o644, 3, 7),
        Member(UNSPLITTABLE, "file", 0o644, 3, 7),
        Member("data/Grüße/日本語.json", "file", 0o644, 3, 7),
        Member("data/l", "symlink", 0o777, 0, 7, "t" * 101),
        Member("data/l", "symlink", 0o777, 0, 7, "zielé"),
        Member("data/old", "file", 0o644, 3, -86_400),  # before 1970: GNU tar misreads ustar
        Member("data/future", "file", 0o644, 3, 8**11),  # does not fit the 11 octal digits
    ],
    ids=[
        "over-255",
        "unsplittable",
        "non-ascii",
        "long-link",
        "non-ascii-link",
        "neg-mtime",
        "y2242",
    ],
)
def test_pax_headers_when_ustar_cannot_hold_the_member(member: Member) -> None:
    block = header(member)
    assert len(block) > BLOCK and block[156:157] == tarfile.XHDTYPE
    raw = block + (b"abc" + bytes(BLOCK - 3) if member.type == "file" else b"") + bytes(2 * BLOCK)
    with tarfile.open(fileobj=io.BytesIO(raw)) as archive:
        (info,) = archive.getmembers()
    assert (info.name, KIND[info.type], info.mode, info.size, info.mtime, info.linkname) == (
        member.path,
        member.type,
        member.mode,
        member.size,
        member.mtime,
        member.linkname,
    )
    assert read_back(raw)[0][0] == member


# -- (b) TarWriter output read by tarfile and GNU tar -------------------------------------------


def five_mb_chunks() -> Iterator[bytes]:
    for i in range(5):
        yield hashlib.sha256(b"%d" % i).digest() * (1024 * 1024 // 32)


SHOWCASE: list[tuple[Member, bytes]] = [
    (Member("data", "dir", 0o755, 0, 1_700_000_000), b""),
    (Member("data/a.json", "file", 0o644, 13, 1_700_000_001), b'{"a": "eins"}'),
    (Member("data/empty.json", "file", 0o600, 0, 1_700_000_002), b""),
    (Member("data/private.json", "file", 0o640, 2, 1_700_000_003), b"{}"),
    (Member("data/run.sh", "file", 0o755, 9, 1_700_000_004), b"#!/bin/sh"),
    (Member("data/Grüße", "dir", 0o750, 0, 1_700_000_005), b""),
    (Member("data/Grüße/日本語 ファイル.json", "file", 0o644, 4, 1_700_000_006), b"\xe2\x9c\x93\n"),
    (Member("data/link", "symlink", 0o777, 0, 1_700_000_007, "a.json"), b""),
    (Member("data/dangling", "symlink", 0o777, 0, 1_700_000_008, "../presets/none"), b""),
    (Member("data/ümlaut-link", "symlink", 0o777, 0, 1_700_000_009, "Grüße"), b""),
    (Member("data/empty-dir", "dir", 0o700, 0, 1_700_000_010), b""),
    (Member(LONG_DIR, "dir", 0o755, 0, 1_700_000_011), b""),
    (Member(LONG_DIR + "/f.json", "file", 0o644, 5, 1_700_000_012), b"12345"),
    (Member(VERY_LONG, "file", 0o644, 1000, 1_700_000_013), bytes(range(250)) * 4),
    (Member(UNSPLITTABLE, "file", 0o644, 1, 1_700_000_014), b"x"),
    (Member("data/one-block", "file", 0o644, BLOCK, 1_700_000_015), b"B" * BLOCK),
    (Member("data/old", "file", 0o644, 1, -86_400), b"o"),
]
BIG = Member("data/big.bin", "file", 0o600, FIVE_MB, 1_700_000_100)


@pytest.fixture(scope="module")
def showcase_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("showcase") / "showcase.tar"
    with open(path, "wb") as out:
        writer = TarWriter(out)
        for member, data in SHOWCASE:
            writer.add(member, data)
        writer.add_stream(BIG, five_mb_chunks())
        writer.close()
    return path


def expected_members() -> list[tuple[Member, bytes]]:
    return [*SHOWCASE, (BIG, b"".join(five_mb_chunks()))]


def test_tarfile_reads_what_tarwriter_wrote(showcase_tar: Path) -> None:
    assert showcase_tar.stat().st_size % BLOCK == 0
    with tarfile.open(showcase_tar, "r:") as archive:
        infos = archive.getmembers()
        assert len(infos) == len(expected_members())
        for info, (member, data) in zip(infos, expected_members(), strict=True):
            assert info.name == member.path
            assert KIND[info.type] == member.type
            assert (info.mode, info.size, info.mtime) == (member.mode, member.size, member.mtime)
            assert info.linkname == member.linkname
            assert (info.uid, info.gid) == (0, 0)
            if member.type == "file":
                handle = archive.extractfile(info)
                assert handle is not None
                assert hashlib.sha256(handle.read()).digest() == hashlib.sha256(data).digest()


def test_tarreader_reads_what_tarwriter_wrote(showcase_tar: Path) -> None:
    with open(showcase_tar, "rb") as handle:
        reader = TarReader(handle, chunk_size=100_000)
        got = [(member, hashlib.sha256(reader.read_all()).hexdigest()) for member in reader]
    assert got == [(m, hashlib.sha256(d).hexdigest()) for m, d in expected_members()]


def _gnu_tar(*args: str, stderr: str = "") -> str:
    if shutil.which("tar") is None:
        pytest.fail("GNU tar is needed for this test")
    env = {**os.environ, "LC_ALL": "C.UTF-8", "TZ": "UTC"}
    result = subprocess.run(
        ["tar", *args], capture_output=True, text=True, env=env, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    # Exactly the expected warnings: a time GNU tar misreads gives "obsolescent base-64 headers".
    assert result.stderr == stderr
    return result.stdout


def test_gnu_tar_lists_what_tarwriter_wrote(showcase_tar: Path) -> None:
    assert "GNU tar" in _gnu_tar("--version")
    out = _gnu_tar("--quoting-style=literal", "--full-time", "--utc", "-tvf", str(showcase_tar))
    lines = out.splitlines()
    assert len(lines) == len(expected_members())
    for line, (member, _data) in zip(lines, expected_members(), strict=True):
        perms, owner, size, day, clock, name = line.split(maxsplit=5)
        assert perms == stat.filemode(
            member.mode | {"file": 0o100000, "dir": 0o40000, "symlink": 0o120000}[member.type]
        )
        assert owner == "0/0"
        assert int(size) == member.size
        when = datetime.fromtimestamp(member.mtime, UTC).strftime("%Y-%m-%d %H:%M:%S")
        assert f"{day} {clock}" == when
        if member.type == "symlink":
            assert name == f"{member.path} -> {member.linkname}"
        else:
            assert name == member.path + ("/" if member.type == "dir" else "")


def test_gnu_tar_extracts_what_tarwriter_wrote(showcase_tar: Path, tmp_path: Path) -> None:
    # Extraction warns about the deliberately pre-1970 member; that is tar's opinion, not damage.
    _gnu_tar(
        "--no-same-owner",
        "-xf",
        str(showcase_tar),
        "-C",
        str(tmp_path),
        stderr="tar: data/old: implausibly old time stamp 1969-12-31 00:00:00\n",
    )
    for member, data in expected_members():
        path = tmp_path / member.path
        st = os.lstat(path)
        if member.type == "symlink":
            assert os.readlink(path) == member.linkname
            continue
        assert stat.S_IMODE(st.st_mode) == member.mode
        if member.type == "dir":
            assert stat.S_ISDIR(st.st_mode)
        else:
            assert stat.S_ISREG(st.st_mode)
            assert int(st.st_mtime) == member.mtime
            assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest()


# -- (c) tarfile output read by TarReader -------------------------------------------------------


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_tarreader_reads_tarfile_archives(fmt: int) -> None:
    members = [
        (Member("data", "dir", 0o755, 0, 1_700_000_000), b""),
        (Member("data/a.json", "file", 0o644, 3, 1_700_000_001), b"abc"),
        (Member("data/empty", "file", 0o600, 0, 5), b""),
        (Member(LONG_DIR, "dir", 0o700, 0, 6), b""),
        (Member(LONG_DIR + "/x", "file", 0o640, 600, 7), b"y" * 600),
        (Member("data/l", "symlink", 0o777, 0, 8, "a.json"), b""),
    ]
    if fmt != tarfile.USTAR_FORMAT:  # what only GNU/pax can hold
        members += [
            (Member(VERY_LONG, "file", 0o644, 4, 9), b"long"),
            (Member(UNSPLITTABLE, "file", 0o644, 1, 10), b"u"),
            (Member("data/l2", "symlink", 0o777, 0, 11, "../" + "t" * 150), b""),
            (Member("data/Grüße/日本.json", "file", 0o644, 2, 12), b"{}"),
            (Member("data/neg", "file", 0o644, 1, -5), b"n"),
        ]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8") as archive:
        for member, data in members:
            info = tarfile.TarInfo(member.path)
            info.type = TYPES[member.type]
            info.mode, info.size, info.linkname = member.mode, member.size, member.linkname
            fraction = 0.75 if fmt == tarfile.PAX_FORMAT and member.mtime >= 0 else 0
            info.mtime = member.mtime + fraction
            info.uname, info.gname, info.uid, info.gid = "someone", "staff", 1000, 50
            archive.addfile(info, io.BytesIO(data) if member.type == "file" else None)
    raw = buf.getvalue()
    if fmt == tarfile.GNU_FORMAT:
        assert b"././@LongLink" in raw
    if fmt == tarfile.PAX_FORMAT:
        assert b" mtime=1700000000.75\n" in raw  # fractional times live in the pax record
    assert read_back(raw, chunk_size=128) == members


@pytest.mark.parametrize("fmt", ["gnu", "pax", "ustar"])
def test_tarreader_reads_gnu_tar_archives(fmt: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "data" / "sub").mkdir(parents=True)
    (src / "data" / "sub" / "n.json").write_bytes(b"[1, 2]")
    (src / "data" / "empty").write_bytes(b"")
    os.symlink("sub/n.json", src / "data" / "link")
    os.chmod(src / "data" / "sub" / "n.json", 0o644)
    os.chmod(src / "data" / "empty", 0o640)
    (src / "data" / "Grüße.json").write_bytes(b"{}")
    if fmt != "ustar":
        (src / "data" / ("g" * 120)).write_bytes(b"gg")
    os.utime(src / "data" / "sub" / "n.json", (1_600_000_000.5, 1_600_000_000.5))
    out = tmp_path / "gnu.tar"
    _gnu_tar(f"--format={fmt}", "--sort=name", "-cf", str(out), "-C", str(src), "data")
    want = []
    with tarfile.open(out) as archive:
        for info in archive.getmembers():
            handle = archive.extractfile(info) if info.isfile() else None
            fields = (info.mode, info.size, int(info.mtime), info.linkname)
            member = Member(info.name.rstrip("/"), KIND[info.type], *fields)
            want.append((member, handle.read() if handle else b""))
    got = read_back(out.read_bytes())
    assert got == want
    assert (Member("data/sub/n.json", "file", 0o644, 6, 1_600_000_000), b"[1, 2]") in got


# -- (d) property: writer -> reader round trip ---------------------------------------------------

NAME_CHARS = st.sampled_from("abcxyzABC0129-_.~ äöüßéñ日本語ファイル€")
names = st.text(NAME_CHARS, min_size=1, max_size=60).filter(lambda n: n not in (".", ".."))


@st.composite
def member_lists(draw: st.DrawFn) -> list[tuple[Member, bytes, bool]]:
    paths = draw(
        st.lists(
            st.lists(names, min_size=1, max_size=6).map("/".join),
            min_size=0,
            max_size=12,
            unique=True,
        )
    )
    out = []
    for path in paths:
        kind = draw(st.sampled_from(["file", "file", "dir", "symlink"]))
        mode = draw(st.integers(0, 0o7777))
        mtime = draw(st.one_of(st.integers(0, 2**33 - 1), st.integers(-(2**34), 2**36)))
        data, link, streamed = b"", "", False
        if kind == "file":
            data = draw(st.binary(min_size=0, max_size=3000))
            streamed = draw(st.booleans())
        elif kind == "symlink":
            link = draw(
                st.lists(st.one_of(names, st.just("..")), min_size=1, max_size=5).map("/".join)
            )
        out.append((Member(path, kind, mode, len(data), mtime, link), data, streamed))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(members=member_lists(), chunk_size=st.sampled_from([7, 512, 1 << 20]))
def test_roundtrip_property(members: list[tuple[Member, bytes, bool]], chunk_size: int) -> None:
    buf = io.BytesIO()
    writer = TarWriter(buf)
    for member, data, streamed in members:
        if streamed:
            writer.add_stream(member, iter([data[:100], data[100:1000], data[1000:]]))
        else:
            writer.add(member, data)
    writer.close()
    raw = buf.getvalue()
    assert len(raw) % BLOCK == 0
    assert read_back(raw, chunk_size) == [(m, d) for m, d, _ in members]
    with tarfile.open(fileobj=io.BytesIO(raw)) as archive:  # tarfile agrees on every field
        assert [
            (i.name.rstrip("/"), KIND[i.type], i.mode, i.size, i.mtime, i.linkname)
            for i in archive.getmembers()
        ] == [(m.path, m.type, m.mode, m.size, m.mtime, m.linkname) for m, _, _ in members]


# -- (e) damage and refused member types --------------------------------------------------------

DAMAGE_SET = [
    (Member("data/a.json", "file", 0o644, 3, 5), b"abc"),
    (Member("data/Grüße.json", "file", 0o644, 600, 6), b"g" * 600),  # pax header first
    (Member("data/l", "symlink", 0o777, 0, 7, "a.json"), b""),
]


@pytest.mark.parametrize("flip", [0x01, 0x80, 0xFF])
def test_any_flipped_header_byte_is_reported_corrupt(flip: int) -> None:
    raw = archive_of(DAMAGE_SET)
    # Blocks 0 (ustar header), 2 (pax 'x' header) and 4 (its ustar block) and 7 (symlink header).
    header_offsets = [0, 2 * BLOCK, 4 * BLOCK, 7 * BLOCK]
    assert read_back(raw) == DAMAGE_SET
    for start in header_offsets:
        for pos in range(start, start + BLOCK):
            damaged = bytearray(raw)
            damaged[pos] ^= flip
            with pytest.raises(VerificationFailed, match=r"^archive header is corrupt") as info:
                read_back(bytes(damaged))
            assert info.value.detail, pos


def test_damaged_pax_record_is_reported_corrupt_not_valueerror() -> None:
    raw = archive_of(DAMAGE_SET)
    pax_data = 3 * BLOCK
    assert raw[pax_data : pax_data + 8] == b"26 path="
    # Pax records are data, not covered by the header checksum: the parser must not trust them.
    # "00"/"-1" once looped forever, the others raised a bare ValueError/UnicodeDecodeError.
    bad_records = {
        0: [b"00", b"-1", b"99", b"x6", b"3 "],  # record length
        8: [b"\xff\xfe"],  # value: "path=" keeps surrogateescape, but not in the key
        3: [b"\xff\xfe"],  # key
    }
    for offset, values in bad_records.items():
        for bad in values:
            damaged = bytearray(raw)
            damaged[pax_data + offset : pax_data + offset + 2] = bad
            if offset == 8:  # undecodable path bytes are kept, as tarfile does
                assert read_back(bytes(damaged))[1][0].path.startswith("\udcff\udcfe")
                continue
            with pytest.raises(VerificationFailed, match=r"^archive header is corrupt: bad pax"):
                read_back(bytes(damaged))
    size_record = archive_of([(Member("s", "file", 0o644, 8**11, 1), b"")])[: 2 * BLOCK]
    assert b" size=8589934592\n" in size_record
    for bad_size in (b"size=85899345x2", b"size=-8589934592"[:15]):
        damaged = size_record.replace(b"size=8589934592", bad_size)
        with pytest.raises(VerificationFailed, match=r"^archive header is corrupt: bad pax"):
            read_back(damaged + bytes(2 * BLOCK))


def test_truncated_stream_is_reported_at_every_cut() -> None:
    raw = archive_of(DAMAGE_SET)
    end = len(raw) - 2 * BLOCK  # where the end-of-archive marker starts
    for cut in range(0, end + BLOCK):
        with pytest.raises(VerificationFailed, match=r"^archive is truncated") as info:
            read_back(raw[:cut])
        assert info.value.detail.startswith("wanted ")
    assert read_back(raw[: end + BLOCK]) == DAMAGE_SET  # one zero block already ends it


@pytest.mark.parametrize(
    ("tar_type", "flag"),
    [
        (tarfile.CHRTYPE, b"3"),
        (tarfile.BLKTYPE, b"4"),
        (tarfile.FIFOTYPE, b"6"),
        (tarfile.LNKTYPE, b"1"),
    ],
)
def test_refused_member_types(tar_type: bytes, flag: bytes) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as archive:
        archive.addfile(tarfile.TarInfo("data/ok.json"), io.BytesIO(b""))
        info = tarfile.TarInfo("data/special")
        info.type = tar_type
        info.linkname = "data/ok.json" if tar_type == tarfile.LNKTYPE else ""
        info.devmajor, info.devminor = 1, 3
        archive.addfile(info)
    reader = TarReader(io.BytesIO(buf.getvalue()))
    seen = []
    with pytest.raises(UnsafeArchive, match="refused member type") as excinfo:
        seen.extend(member.path for member in reader)
    assert seen == ["data/ok.json"]
    assert repr(flag) in excinfo.value.detail


# -- (f) add_stream size checks -----------------------------------------------------------------


@pytest.mark.parametrize(
    "chunks", [[b"abc", b"de"], [], [b"abcdef", b"g"]], ids=["short", "none", "long"]
)
def test_add_stream_with_wrong_byte_count_fails(chunks: list[bytes]) -> None:
    writer = TarWriter(io.BytesIO())
    member = Member("data/growing.log", "file", 0o644, 6, 1)
    with pytest.raises(VerificationFailed, match=r"^data/growing\.log changed size") as info:
        writer.add_stream(member, iter(chunks))
    assert re.fullmatch(rf"expected 6 bytes, read {sum(map(len, chunks))}", info.value.detail)


def test_add_stream_exact_size_pads_to_block() -> None:
    buf = io.BytesIO()
    writer = TarWriter(buf)
    writer.add_stream(Member("f", "file", 0o644, 6, 1), iter([b"abc", b"def"]))
    assert len(buf.getvalue()) == 2 * BLOCK
