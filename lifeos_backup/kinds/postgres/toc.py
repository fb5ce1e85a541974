"""Reading a dump's table of contents (`pg_restore --list --verbose`), and picking entries from it.

`list_toc` asks pg_restore for it (an archive's head is enough). Verify uses it to prove every
table of the manifest is in the archive (definition and data). Single-table restore
(tableplan.py) walks the dependencies recorded here to build its `--use-list` file. The restore
also picks each big table's own indexes and keys, to build them as soon as its rows are in.
`diff` compares two backups' schema objects by name from it (objects.py).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lifeos_backup.core import procs

if TYPE_CHECKING:
    from lifeos_backup.kinds.postgres.tools import Tool

_ENTRY_RE = re.compile(r"^(\d+); \d+ \d+ (.*)$")
_DEPENDS = ";\tdepends on:"

# Entry types (pg_dump's "desc") that name one; the longest match wins (TABLE DATA over TABLE).
_DESCS = sorted(
    [
        "ACCESS METHOD", "ACL", "AGGREGATE", "BLOB", "BLOB METADATA", "BLOBS", "CAST",
        "CHECK CONSTRAINT", "COLLATION", "COMMENT", "CONSTRAINT", "CONVERSION", "DATABASE",
        "DATABASE PROPERTIES", "DEFAULT", "DEFAULT ACL", "DOMAIN", "ENCODING", "EVENT TRIGGER",
        "EXTENSION", "FK CONSTRAINT", "FOREIGN DATA WRAPPER", "FOREIGN SERVER", "FOREIGN TABLE",
        "FUNCTION", "INDEX", "INDEX ATTACH", "LARGE OBJECT", "MATERIALIZED VIEW",
        "MATERIALIZED VIEW DATA", "OPERATOR", "OPERATOR CLASS", "OPERATOR FAMILY", "POLICY",
        "PROCEDURAL LANGUAGE", "PROCEDURE", "PUBLICATION", "PUBLICATION TABLE",
        "PUBLICATION TABLES IN SCHEMA", "ROW SECURITY", "RULE", "SCHEMA", "SEARCHPATH",
        "SECURITY LABEL", "SEQUENCE", "SEQUENCE OWNED BY", "SEQUENCE SET", "SERVER",
        "SHELL TYPE", "STATISTICS", "STDSTRINGS", "SUBSCRIPTION", "SUBSCRIPTION TABLE", "TABLE",
        "TABLE ATTACH", "TABLE DATA", "TEXT SEARCH CONFIGURATION", "TEXT SEARCH DICTIONARY",
        "TEXT SEARCH PARSER", "TEXT SEARCH TEMPLATE", "TRANSFORM", "TRIGGER", "TYPE",
        "USER MAPPING", "VIEW",
    ],
    key=len,
    reverse=True,
)
# Session set-up entries every restore needs.
SESSION = frozenset({"ENCODING", "STDSTRINGS", "SEARCHPATH"})
# Entries a table's rows must precede (pg_restore waits for TABLE DATA before them, too): other
# relations, data, and the post-data section.
_AFTER_DATA = frozenset(
    {
        "TABLE", "MATERIALIZED VIEW", "FOREIGN TABLE", "TABLE DATA", "MATERIALIZED VIEW DATA",
        "SEQUENCE SET", "BLOB", "BLOBS", "BLOB METADATA", "LARGE OBJECT", "INDEX",
        "INDEX ATTACH", "STATISTICS", "CONSTRAINT", "CHECK CONSTRAINT", "FK CONSTRAINT",
        "TRIGGER", "EVENT TRIGGER", "RULE", "POLICY", "PUBLICATION", "PUBLICATION TABLE",
        "PUBLICATION TABLES IN SCHEMA", "SUBSCRIPTION", "SUBSCRIPTION TABLE",
    }
)
# What a table's own post-data entries can be: built from its rows alone; and what follows them.
_OWN_POST_DATA = frozenset({"INDEX", "CONSTRAINT", "CHECK CONSTRAINT"})
_NOTES = frozenset({"COMMENT", "SECURITY LABEL"})


@dataclass(frozen=True)
class TocEntry:
    """One archive entry: its dump id, type, "schema name owner" text, line and dependencies."""

    dump_id: int
    desc: str
    rest: str
    line: str
    deps: tuple[int, ...] = ()

    def names(self, desc: str, schema: str, name: str) -> bool:
        """True if this is the `desc` entry of schema.name (the owner follows the name)."""
        return self.desc == desc and self.rest.startswith(f"{schema} {name} ")

    @property
    def schema(self) -> str:
        """The entry's schema, `-` for objects outside schemas (schemas, extensions)."""
        return self.rest.split(" ", 1)[0]

    @property
    def tag(self) -> str:
        """The entry's name: between the schema and the owner (the owner is the last word, empty
        for an extension); a function's is `name(argument types)`, a constraint's or trigger's
        `table name`."""
        _, _, after = self.rest.partition(" ")
        return after.rsplit(" ", 1)[0]

    @property
    def label(self) -> str:
        """What a message calls the entry: `type public.mood`, `extension citext`."""
        name = self.tag if self.schema == "-" else f"{self.schema}.{self.tag}"
        return f"{self.desc.lower()} {name}"


def _split_desc(text: str) -> tuple[str, str]:
    for desc in _DESCS:
        if text.startswith(desc + " "):
            return desc, text[len(desc) + 1 :]
    first, _, rest = text.partition(" ")
    return first, rest


def parse_toc(text: str) -> list[TocEntry]:
    """Entries of `pg_restore --list --verbose` output, in archive order."""
    entries: list[TocEntry] = []
    for line in text.splitlines():
        if line.startswith(_DEPENDS) and entries:
            deps = tuple(int(part) for part in line[len(_DEPENDS) :].split())
            last = entries[-1]
            entries[-1] = TocEntry(last.dump_id, last.desc, last.rest, last.line, deps)
            continue
        match = _ENTRY_RE.match(line)
        if match:
            desc, rest = _split_desc(match.group(2))
            entries.append(TocEntry(int(match.group(1)), desc, rest, line))
    return entries


def list_toc(pg_restore: Tool, dump: Path) -> list[TocEntry]:
    """The table of contents of a pg_dump archive (its head is enough), with dependencies."""
    listed = procs.run(
        [pg_restore.path, "--list", "--verbose", str(dump)], capture_stdout=True
    ).stdout or b""
    return parse_toc(listed.decode(errors="replace"))


def missing_tables(
    entries: Sequence[TocEntry],
    tables: Iterable[tuple[str, str]],
    sliced: Collection[tuple[str, str]] = (),
) -> list[str]:
    """schema.name of every table lacking its definition or its data entry in the archive
    (the data of a `sliced` table is in COPY slices, not in an entry)."""
    missing = []
    for schema, name in tables:
        found = {e.desc for e in entries if e.rest.startswith(f"{schema} {name} ")}
        if (schema, name) in sliced:
            found.add("TABLE DATA")
        if not {"TABLE", "TABLE DATA"} <= found:
            missing.append(f"{schema}.{name}")
    return missing


def own_post_data(entries: Sequence[TocEntry], schema: str, name: str) -> list[TocEntry]:
    """The indexes and keys of schema.name that need nothing but its rows and the definitions
    (pre-data), with their comments: they can be built while other tables still load. A foreign
    key, or an index depending on another table or on anything of the post-data, waits for the
    end.

    The comments must come along: pg_restore gives a comment the section of the entry before it
    in the list, and without its index before it, it would fall out of the post-data section.
    """
    by_id = {e.dump_id: e for e in entries}
    table = next((e.dump_id for e in entries if e.names("TABLE", schema, name)), None)
    if table is None:
        return []

    def ready(dep: int) -> bool:
        found = by_id.get(dep)
        return dep == table or (found is not None and found.desc not in _AFTER_DATA)

    own = {
        e.dump_id
        for e in entries
        if e.desc in _OWN_POST_DATA and table in e.deps and all(ready(d) for d in e.deps)
    }
    notes = {e.dump_id for e in entries if e.desc in _NOTES and e.deps and set(e.deps) <= own}
    return [e for e in entries if e.dump_id in own | notes]


def use_list(entries: Iterable[TocEntry]) -> str:
    """The text of a `pg_restore --use-list` file (pg_restore reads the leading ids, in order)."""
    return "".join(entry.line + "\n" for entry in entries)
