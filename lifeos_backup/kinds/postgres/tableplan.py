"""What a single-table restore brings: the chosen tables, what is theirs, and what they need.

`restore postgres --table T` (and entity restore, which restores tables into a scratch database)
restores each chosen table with

* what is its own: rows, keys, indexes, defaults, owned and identity sequences with their
  values, triggers, rules, policies, comments, grants: pg_dump's entries that depend on it;
* what it and those need: schemas, extensions, types (enum, composite, range), domains,
  functions (of defaults, CHECKs, generated columns, triggers, domains' CHECKs), standalone
  sequences with their current value, collations: found by following each entry's dependency
  list in the dump's table of contents, the list pg_dump wrote and pg_restore orders by.

A needed object the target already has is not restored: the target keeps its own (`present`
answers for the target). An entry of a chosen table that needs a relation that is not restored
(a foreign key to another table) is left out and reported: the target's table of that name, if
any, may not hold the rows it would check. A chosen table that needs a definition that can be
neither brought nor found in the target (another table's sequence in its default) cannot be
created: that is an error before anything is restored. A table it depends on directly (the
partitioned table of a partition, an inheritance parent) is reported and not brought: a
partition's definition stands alone, and for the rest pg_restore names what is missing.

Pure: the target is only asked through `present`, so the rules are tested without a database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from lifeos_backup.core.errors import ConfigError
from lifeos_backup.kinds.postgres.toc import SESSION, TocEntry

# Entries that belong to what they depend on: restored with it when what they need can be had.
FOLLOWERS = frozenset(
    {
        "TABLE DATA", "SEQUENCE", "SEQUENCE OWNED BY", "SEQUENCE SET", "DEFAULT", "CONSTRAINT",
        "CHECK CONSTRAINT", "FK CONSTRAINT", "INDEX", "TRIGGER", "RULE", "POLICY",
        "ROW SECURITY", "COMMENT", "SECURITY LABEL", "ACL", "STATISTICS",
    }
)
# Definitions an entry may need: brought from the dump when the target lacks them.
DEFINITIONS = frozenset(
    {
        "SCHEMA", "EXTENSION", "TYPE", "SHELL TYPE", "DOMAIN", "FUNCTION", "PROCEDURE",
        "AGGREGATE", "SEQUENCE", "COLLATION", "OPERATOR", "OPERATOR CLASS", "OPERATOR FAMILY",
        "CAST", "CONVERSION", "PROCEDURAL LANGUAGE", "TEXT SEARCH CONFIGURATION",
        "TEXT SEARCH DICTIONARY", "TEXT SEARCH PARSER", "TEXT SEARCH TEMPLATE", "TRANSFORM",
        "ACCESS METHOD",
    }
)
# Relations are never brought for another entry's sake: their rows were not asked for.
RELATIONS = frozenset({"TABLE", "VIEW", "MATERIALIZED VIEW", "FOREIGN TABLE"})
# A chosen table's entries whose leaving out is reported, with what messages call them.
_REPORTED = {
    "FK CONSTRAINT": "foreign key", "CONSTRAINT": "constraint",
    "CHECK CONSTRAINT": "check constraint", "TRIGGER": "trigger", "RULE": "rule",
    "POLICY": "policy", "DEFAULT": "default of column", "INDEX": "index",
    "STATISTICS": "statistics",
}
# Entries named "table name" in the table of contents (the others by their own name).
_OF_TABLE = frozenset(_REPORTED) - {"INDEX", "STATISTICS"}

Present = Callable[[TocEntry], bool]


class UnmetDependency(ConfigError):
    """A chosen table needs a relation that is neither restored nor in the target."""


@dataclass
class TablePlan:
    """The entries to restore (archive order, session set-up included), the needed objects the
    target already has (kept as they are), and one line per entry of a chosen table left out."""

    entries: list[TocEntry]
    kept: list[TocEntry] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)


@dataclass
class _Draft:
    """What taking one entry would add: entries to restore, target objects relied on."""

    bring: set[int] = field(default_factory=set)
    keep: set[int] = field(default_factory=set)


class _Planner:
    """The growing selection; a draft is committed only when everything it needs can be had,
    so an entry left out brings nothing along."""

    def __init__(self, entries: Sequence[TocEntry], present: Present) -> None:
        self.by_id = {e.dump_id: e for e in entries}
        self.present = present
        self.restored: set[int] = set()
        self.kept: set[int] = set()

    def belongs(self, entry: TocEntry, draft: _Draft) -> bool:
        """Whether `entry` is part of something restored (a table's key, a type's comment).

        A sequence depends on its schema too: it belongs to a table only when that table owns
        it, otherwise it is a definition of its own (asked for when a default uses it).
        """
        if entry.desc not in FOLLOWERS:
            return False

        def taken(dep: int) -> bool:
            return dep in self.restored or dep in draft.bring

        if entry.desc == "SEQUENCE":
            return any(taken(d) and self.by_id[d].desc in RELATIONS for d in entry.deps)
        return any(taken(d) for d in entry.deps)

    def need(self, dep: int, draft: _Draft, *, own: bool) -> TocEntry | None:
        """Add to `draft` what having entry `dep` takes: None when it can be had, else the entry
        that cannot. `own`: asked by a table's own entry (a key, a trigger), which may not rely on
        a relation that is not restored."""
        if dep in self.restored or dep in self.kept or dep in draft.bring or dep in draft.keep:
            return None
        entry = self.by_id.get(dep)
        if entry is None:
            return None  # not in the archive: nothing pg_restore could restore either
        if self.belongs(entry, draft):
            return self.take(entry, draft)
        if entry.desc in RELATIONS and own:
            return entry
        if self.present(entry):
            draft.keep.add(dep)
            return None
        if entry.desc not in DEFINITIONS:
            return entry
        draft.bring.add(dep)
        return self.need_all(entry.deps, draft, own=False)

    def take(self, entry: TocEntry, draft: _Draft) -> TocEntry | None:
        """`entry` itself and what it needs."""
        draft.bring.add(entry.dump_id)
        return self.need_all(entry.deps, draft, own=True)

    def need_all(self, deps: Iterable[int], draft: _Draft, *, own: bool) -> TocEntry | None:
        for dep in deps:
            missing = self.need(dep, draft, own=own)
            if missing is not None:
                return missing
        return None

    def commit(self, draft: _Draft) -> None:
        self.restored |= draft.bring
        self.kept |= draft.keep


def plan_tables(
    entries: Sequence[TocEntry], tables: Iterable[tuple[str, str]], present: Present
) -> TablePlan:
    """The entries restoring `tables` with what is theirs and what they need (see above)."""
    wanted_names = list(tables)
    wanted = [
        e for e in entries if any(e.names("TABLE", schema, name) for schema, name in wanted_names)
    ]
    planner = _Planner(entries, present)
    planner.restored = {e.dump_id for e in wanted}
    notes = [line for table in wanted for line in _take_needs(planner, table)]
    _grow(planner, entries)
    return TablePlan(
        [e for e in entries if e.dump_id in planner.restored or e.desc in SESSION],
        [e for e in entries if e.dump_id in planner.kept],
        notes + _left_out(planner, entries, wanted),
    )


def _take_needs(planner: _Planner, table: TocEntry) -> list[str]:
    """Take what a chosen table's definition needs; a line per table it depends on that is not
    there, UnmetDependency for anything else that cannot be had, naming the way to it."""
    notes = []
    for dep in dict.fromkeys(table.deps):
        draft = _Draft()
        missing = planner.need(dep, draft, own=False)
        if missing is None:
            planner.commit(draft)
            continue
        via = planner.by_id[dep]
        if via is missing and via.desc in RELATIONS:
            notes.append(
                f"table {table.schema}.{table.tag} depends on {via.label}, which is neither "
                "restored nor in the target: restored without it"
            )
            continue
        chain = missing.label if via is missing else f"{via.label}, which needs {missing.label}"
        raise UnmetDependency(
            f"table {table.schema}.{table.tag} needs {chain}",
            "that is neither in the target database nor restored with the table",
            "restore the table it belongs to as well (another --table), or create it in the "
            "target first",
        )
    return notes


def _grow(planner: _Planner, entries: Sequence[TocEntry]) -> None:
    """Take every entry belonging to what is restored whose needs can be had, until none is
    left (a sequence's value follows the sequence, which follows its table)."""
    grew = True
    while grew:
        grew = False
        for entry in entries:
            if entry.dump_id in planner.restored or not planner.belongs(entry, _Draft()):
                continue
            draft = _Draft()
            if planner.take(entry, draft) is None:
                planner.commit(draft)
                grew = True


def _left_out(
    planner: _Planner, entries: Sequence[TocEntry], wanted: Sequence[TocEntry]
) -> list[str]:
    """One line per entry of a chosen table that is not restored, saying what it lacks."""
    lines = []
    for entry in entries:
        table = _owner(entry, wanted)
        if entry.dump_id in planner.restored or table is None:
            continue
        missing = planner.take(entry, _Draft())
        if missing is None:  # cannot happen after _grow; nothing to say if it does
            continue
        name = entry.tag.removeprefix(f"{table.tag} ") if entry.desc in _OF_TABLE else entry.tag
        what = f"{_REPORTED[entry.desc]} {name} of {table.schema}.{table.tag}"
        if entry.desc == "FK CONSTRAINT":
            others = [
                f"{e.schema}.{e.tag}"
                for d in entry.deps
                if (e := planner.by_id.get(d)) is not None
                and e.desc in RELATIONS
                and d not in planner.restored
            ]
            if others:
                lines.append(f"left out {what}: it references {', '.join(others)}, not restored")
                continue
        lines.append(f"left out {what}: it needs {missing.label}, not restored")
    return lines


def _owner(entry: TocEntry, wanted: Sequence[TocEntry]) -> TocEntry | None:
    """The chosen table `entry` is a reported part of (a key, a trigger, an index), if any."""
    if entry.desc not in _REPORTED:
        return None
    if entry.desc in _OF_TABLE:  # "schema table name owner": the longest table name that fits
        fits = [t for t in wanted if entry.rest.startswith(f"{t.schema} {t.tag} ")]
        return max(fits, key=lambda t: len(t.tag), default=None)
    return next((t for t in wanted if t.dump_id in entry.deps), None)
