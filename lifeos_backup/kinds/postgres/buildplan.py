"""The order of a big table's own index builds in a restore: keys first, then longest first.

On an index-heavy schema the restore's longest chain is a big table's load followed by its
slowest index build (a GIN index on JSONB builds in one server process, several times slower
than a B-tree on the same rows: docs/decisions.md, "PostgreSQL restore"). So a sliced table's
own post-data is not one pg_restore building everything in archive order, but:

1. its keys (PRIMARY KEY, UNIQUE, CHECK, EXCLUDE: `ALTER TABLE ... ADD CONSTRAINT` takes an
   ACCESS EXCLUSIVE lock that would wait for any index build on the table), in one pg_restore;
2. then each index alone, the expensive access methods first (GIN, GiST, SP-GiST, then B-tree,
   hash, BRIN), so that the slowest build starts first and the other workers take the cheaper
   ones beside it (CREATE INDEX takes a SHARE lock: builds on one table run side by side).

The access method is read from the index's definition, which pg_restore prints from the head of
the dump (`--file=-` of the table's entries: no database involved).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lifeos_backup.core import procs
from lifeos_backup.kinds.postgres.toc import TocEntry
from lifeos_backup.kinds.postgres.tools import Tool

# Relative build cost per access method, per row: the order builds start in (highest first).
_COST = {"gin": 3, "gist": 2, "spgist": 2, "btree": 1, "hash": 1, "brin": 0}
_HEADER = re.compile(r"^-- Name: (.*); Type: (INDEX|CONSTRAINT); Schema: (\S+);", re.MULTILINE)
_USING = re.compile(r"\bUSING (\w+) \(")
_NOTES = frozenset({"COMMENT", "SECURITY LABEL"})


@dataclass(frozen=True)
class Builds:
    """A table's own post-data in build order: `keys` (one pg_restore, may be empty), then each
    of `indexes` alone; every item is a list of TOC entries (an index with its comments)."""

    keys: list[TocEntry]
    indexes: list[list[TocEntry]]


def index_methods(script: str) -> dict[tuple[str, str], str]:
    """(schema, index name) -> access method, from a pg_restore script of INDEX entries."""
    methods: dict[tuple[str, str], str] = {}
    headers = list(_HEADER.finditer(script))
    for number, header in enumerate(headers):
        if header.group(2) != "INDEX":
            continue
        end = headers[number + 1].start() if number + 1 < len(headers) else len(script)
        using = _USING.search(script, header.end(), end)
        methods[(header.group(3), header.group(1))] = using.group(1).lower() if using else "btree"
    return methods


def order_builds(own: Sequence[TocEntry], methods: dict[tuple[str, str], str]) -> Builds:
    """Split a table's own post-data (toc.own_post_data) into its keys and its indexes, the
    indexes most expensive first (archive order among equals), each with its comments."""
    notes: dict[int, list[TocEntry]] = {}
    for entry in own:
        if entry.desc in _NOTES and entry.deps:
            notes.setdefault(entry.deps[0], []).append(entry)
    keys = [e for e in own if e.desc not in _NOTES and e.desc != "INDEX"]
    keys += [n for e in keys for n in notes.get(e.dump_id, [])]
    indexes = [e for e in own if e.desc == "INDEX"]

    def cost(entry: TocEntry) -> int:
        return -_COST.get(methods.get((entry.schema, entry.tag), "btree"), 1)

    ordered = sorted(indexes, key=cost)  # stable: archive order among equals
    return Builds(keys, [[e, *notes.get(e.dump_id, [])] for e in ordered])


def plan_builds(pg_restore: Tool, head: Path, own: Sequence[TocEntry], listed: Path) -> Builds:
    """The build order of a table's own post-data; `listed` is a scratch use-list file."""
    if not any(e.desc == "INDEX" for e in own):
        return Builds(list(own), [])
    listed.write_text("".join(e.line + "\n" for e in own if e.desc == "INDEX"))
    script = procs.run(
        [pg_restore.path, f"--use-list={listed}", "--file=-", str(head)], capture_stdout=True
    ).stdout or b""
    return order_builds(own, index_methods(script.decode(errors="replace")))
