"""PostgreSQL WAL file names and LSNs: parsing, ordering and segment arithmetic.

The archive holds only files whose names PostgreSQL itself produces; everything else is refused, so
a crafted `%f` can never name a path outside the archive.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SEGMENT = re.compile(r"^[0-9A-F]{24}$")
# PostgreSQL names: segments, timeline history, backup history and promotion leftovers.
ARCHIVABLE = re.compile(
    r"^(?:[0-9A-F]{24}(?:\.partial|\.[0-9A-F]{8}\.backup)?|[0-9A-F]{8}\.history)$"
)
XLOG_SPAN = 0x1_0000_0000  # bytes per "log id" (the middle 8 hex digits)


class BadWalName(ValueError):
    """A name that PostgreSQL would never archive or request."""


def check_name(name: str) -> str:
    """Return `name` if it is a WAL archive file name, else raise BadWalName."""
    if not ARCHIVABLE.match(name):
        raise BadWalName(f"{name!r} is not a PostgreSQL WAL file name")
    return name


def is_history(name: str) -> bool:
    return name.endswith(".history")


def segment_part(name: str) -> str:
    """The log/segment digits (timeline dropped): the order pg_archivecleanup uses."""
    return name[8:24]


def timeline_of(name: str) -> int:
    return int(name[:8], 16)


def parse_lsn(text: str) -> int:
    """'0/2000028' -> integer byte position."""
    high, _, low = text.strip().partition("/")
    if not low:
        raise ValueError(f"{text!r} is not an LSN (expected X/Y in hex)")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


@dataclass(frozen=True, order=True)
class SegmentNo:
    """A segment position: timeline plus segment number counted from LSN 0."""

    timeline: int
    number: int

    def name(self, segment_size: int) -> str:
        per_id = XLOG_SPAN // segment_size
        return f"{self.timeline:08X}{self.number // per_id:08X}{self.number % per_id:08X}"


def segment_of_lsn(lsn: int, timeline: int, segment_size: int) -> SegmentNo:
    """The segment holding byte `lsn` on `timeline`."""
    return SegmentNo(timeline, lsn // segment_size)


def segment_of_name(name: str, segment_size: int) -> SegmentNo:
    if not SEGMENT.match(name[:24]):
        raise BadWalName(f"{name!r} is not a WAL segment name")
    per_id = XLOG_SPAN // segment_size
    return SegmentNo(int(name[:8], 16), int(name[8:16], 16) * per_id + int(name[16:24], 16))


def segment_range(first: str, last_lsn: int, segment_size: int) -> list[str]:
    """Names of every segment from `first` up to the one holding `last_lsn`, same timeline.

    A stop LSN exactly on a segment boundary ends in the previous segment (nothing of the new one
    is needed), as PostgreSQL computes it for backup end.
    """
    start = segment_of_name(first, segment_size)
    end = max((last_lsn - 1) // segment_size, start.number)
    return [SegmentNo(start.timeline, n).name(segment_size) for n in range(start.number, end + 1)]
