"""The repository's naming rules, and the one place where a name read from data is checked.

Backup ids, archive names and kind folders end up in paths (restore staging, rebuild, off-site
keys, drills, leases). A manifest, a catalog row or a bucket listing is data, and data can be
hostile or damaged, so every such name passes `check_backup_id` / `check_archive_name` before any
use: `Manifest` runs both when it is read, and so refuses a manifest whose id or archive name is
not the repository's own pattern. Nothing here touches the disk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from lifeos_backup.core.errors import ConfigError, InvalidName


@dataclass(frozen=True)
class KindLayout:
    """Where a kind's backups live and how their files are named."""

    folder: str  # relative to the backup root
    prefix: str  # of the backup id
    suffixes: tuple[str, ...]  # every archive name is <id><one of these>


def _sealed(*suffixes: str) -> tuple[str, ...]:
    """Each suffix plain and encrypted (age adds `.age`)."""
    return tuple(s for suffix in suffixes for s in (suffix, suffix + ".age"))


# Names follow the old scripts' layout (operators' habits).
LAYOUTS: dict[str, KindLayout] = {
    "json": KindLayout("json", "json_backup_", _sealed(".tar.zst", ".tar.gz")),
    "postgres": KindLayout("postgresql/full", "postgres_full_", _sealed(".dump.zst")),
    "basebackup": KindLayout("postgresql/base", "base_backup_", _sealed(".tar.zst")),
}
STAMP = "%Y%m%d_%H%M%S"
_ID = re.compile(
    "(?P<prefix>" + "|".join(re.escape(lay.prefix) for lay in LAYOUTS.values()) + r")"
    r"(?P<stamp>[0-9]{8}_[0-9]{6})"
)


def layout(kind: str) -> KindLayout:
    try:
        return LAYOUTS[kind]
    except KeyError:
        raise ConfigError(
            f"unknown backup kind {kind!r}", hint=f"use one of: {', '.join(sorted(LAYOUTS))}"
        ) from None


def new_backup_id(kind: str, when: datetime) -> str:
    return layout(kind).prefix + when.astimezone(UTC).strftime(STAMP)


def is_backup_id(text: str) -> bool:
    return isinstance(text, str) and _ID.fullmatch(text) is not None


def check_backup_id(backup_id: str, kind: str | None = None) -> str:
    """`backup_id` if it is one of this repository's ids (of `kind`, when given)."""
    match = _ID.fullmatch(backup_id) if isinstance(backup_id, str) else None
    if match is None:
        raise InvalidName(
            f"{backup_id!r} is not a backup id",
            "ids look like json_backup_20260101_020000 (a kind's prefix and a UTC time)",
            "see `lifeos-backup list`",
        )
    if kind is not None and match["prefix"] != layout(kind).prefix:
        raise InvalidName(
            f"backup id {backup_id!r} does not belong to kind {kind!r}",
            f"{kind} ids start with {layout(kind).prefix}",
        )
    return backup_id


def kind_of_id(backup_id: str) -> str:
    """The kind a (valid) backup id belongs to."""
    check_backup_id(backup_id)
    return next(kind for kind, lay in LAYOUTS.items() if backup_id.startswith(lay.prefix))


def created_at_of_id(backup_id: str) -> datetime:
    """The UTC second the id was taken at (the backup's start)."""
    stamp = check_backup_id(backup_id)[-len("YYYYmmdd_HHMMSS") :]
    try:
        return datetime.strptime(stamp, STAMP).replace(tzinfo=UTC)
    except ValueError:
        raise InvalidName(f"{backup_id!r} does not hold a valid time") from None


def check_archive_name(backup_id: str, kind: str, name: str) -> str:
    """`name` if it is `<backup_id><a suffix of kind>`: a plain file name, never a path."""
    check_backup_id(backup_id, kind)
    suffix = name[len(backup_id) :] if isinstance(name, str) else ""
    if not (isinstance(name, str) and name.startswith(backup_id)) or suffix not in (
        layout(kind).suffixes
    ):
        raise InvalidName(
            f"archive name {name!r} is not one of backup {backup_id}'s",
            f"expected {backup_id} followed by one of {', '.join(layout(kind).suffixes)}",
        )
    return name


def split_file_name(name: str) -> tuple[str, str] | None:
    """(backup id, rest) of a file in a kind folder, e.g. `.json_backup_X.tar.zst.partial` ->
    ("json_backup_X", ".tar.zst.partial"); None when the name holds no backup id."""
    match = _ID.match(name.removeprefix("."))
    if match is None:
        return None
    return match[0], name.removeprefix(".")[match.end() :]


# --- Paths inside a backup, as operators name them (`ls`, `find`, `restore json --include`) ------

_GLOB_CHARS = frozenset("*?[")


class PathPattern:
    """A path or glob naming files inside a backup, checked once where it enters.

    Relative, `/`-separated, without `.`, `..` or empty parts, backslashes or NUL: a pattern
    that could only name something outside a backup is refused, not silently matched against
    nothing. `*` and `?` match within one part, `[...]` one character of a set (`[!...]` not
    of it), `**` any number of parts. A path matches when the pattern matches it or one of its
    folders, so `data/characters` names that folder and everything below it.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        stripped = text.rstrip("/") if isinstance(text, str) else ""
        if not stripped:
            raise InvalidName(f"{text!r} is not a path inside a backup", "it is empty")
        if stripped.startswith("/"):
            raise InvalidName(
                f"{text!r} is not a path inside a backup",
                "it is absolute; backups hold relative paths such as data/characters/*.json",
            )
        if "\\" in stripped or "\0" in stripped:
            raise InvalidName(f"{text!r} is not a path inside a backup", "backslash or NUL")
        if any(part in ("", ".", "..") for part in stripped.split("/")):
            raise InvalidName(
                f"{text!r} is not a path inside a backup",
                "'.', '..' and empty parts name nothing inside a backup",
            )
        self.is_glob = any(c in _GLOB_CHARS for c in stripped)
        self._regex = re.compile(_glob_regex(text, stripped), re.DOTALL)

    def matches(self, path: str) -> bool:
        """The pattern names `path` or one of its folders."""
        full = self._regex.fullmatch
        if full(path):
            return True
        cut = path.find("/")
        while cut > 0:
            if full(path, 0, cut):
                return True
            cut = path.find("/", cut + 1)
        return False

    def __repr__(self) -> str:
        return f"PathPattern({self.text!r})"


def _glob_regex(text: str, glob: str) -> str:
    out: list[str] = []
    i, n = 0, len(glob)
    while i < n:
        c = glob[i]
        if glob.startswith("**", i):
            i += 2
            if glob.startswith("/", i):  # `**/`: any number of folders, none included
                out.append("(?:[^/]+/)*")
                i += 1
            else:
                out.append(".*")
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            start = i + 1
            if glob[start : start + 1] in ("!", "^"):
                start += 1
            end = glob.find("]", start + 1)  # a `]` right after `[` or `[!` is a member
            members = glob[start:end] if end > 0 else ""
            if end < 0 or "/" in members:
                raise InvalidName(
                    f"{text!r} is not a valid glob", "a '[' without its ']' in the same part"
                )
            negate = start > i + 1
            body = members.replace("\\", "\\\\").replace("[", "\\[")
            if not negate and body.startswith("^"):
                body = "\\" + body
            out.append(f"[{'^/' if negate else ''}{body}]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    regex = "".join(out)
    try:
        re.compile(regex)
    except re.error as exc:
        raise InvalidName(f"{text!r} is not a valid glob", str(exc)) from None
    return regex
