"""The PostgreSQL client programs (pg_dump, pg_restore) and the version rules between them.

pg_dump refuses, late and with a terse message, to dump a server newer than itself; pg_restore
cannot read archives written by a newer pg_dump. Both are checked before any file or database is
touched, so the operator reads the two versions side by side instead of a half-written backup.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from lifeos_backup.core import procs
from lifeos_backup.core.errors import ConfigError, PermanentError
from lifeos_backup.core.settings import Settings

_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


class ToolTooOld(PermanentError):
    """A PostgreSQL client program is older than what it must work with."""


@dataclass(frozen=True)
class Tool:
    """A client program: its path and the version it reports."""

    path: str
    version: str  # e.g. "15.20"
    major: int


def find_tool(settings: Settings, name: str) -> str:
    """`name` in LIFEOS_PG_BIN_DIR when set, else on PATH; a missing one is a ConfigError."""
    if settings.pg_bin_dir is None:
        return procs.which(name)
    path = settings.pg_bin_dir / name
    if not os.access(path, os.X_OK):
        raise ConfigError(
            f"{name} not found in LIFEOS_PG_BIN_DIR",
            f"{path} is missing or not executable",
            "point LIFEOS_PG_BIN_DIR at the bin folder of a PostgreSQL client installation",
        )
    return str(path)


def parse_version(text: str) -> tuple[str, int]:
    """("15.20", 15) from `pg_dump (PostgreSQL) 15.20 (Debian ...)`."""
    match = _VERSION_RE.search(text)
    if match is None:
        raise ConfigError("cannot tell the PostgreSQL client version", one_line(text)[:200])
    major, minor = match.group(1), match.group(2)
    return (f"{major}.{minor}" if minor else major), int(major)


# Versions already asked in this process, by the program file's identity: a worker asks once per
# program, not once per backup (a `--version` run costs 15-40 ms), and asks again when the file
# at that path is replaced (a package upgrade). Only the program itself is remembered: a wrapper
# under its name (Debian's /usr/bin/pg_dump -> pg_wrapper) may choose another version tomorrow.
_VERSIONS: dict[tuple[str, int, int, int, int], Tool] = {}


def _identity(path: str, name: str) -> tuple[str, int, int, int, int] | None:
    """What `tool` remembers a version by; None when the file is not the program itself."""
    real = os.path.realpath(path)
    if os.path.basename(real) != name:
        return None
    try:
        st = os.stat(real)
    except OSError:
        return None
    return real, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def tool(settings: Settings, name: str) -> Tool:
    """Locate `name` and ask its version (`--version` is instant and needs no server)."""
    path = find_tool(settings, name)
    key = _identity(path, name)
    if key is not None and key in _VERSIONS:
        return _VERSIONS[key]
    done = procs.run([path, "--version"], capture_stdout=True, timeout=30)
    version, major = parse_version((done.stdout or b"").decode(errors="replace"))
    found = Tool(path, version, major)
    if key is not None:
        _VERSIONS[key] = found
    return found


def server_major(server_version_num: int) -> int:
    """Major version from server_version_num (150020 -> 15); pre-10 servers count as 9."""
    return server_version_num // 10000


def require_dump_not_older(pg_dump: Tool, server_version: str, server_version_num: int) -> None:
    """Refuse up front when pg_dump's major version is below the server's."""
    if pg_dump.major < server_major(server_version_num):
        raise ToolTooOld(
            f"pg_dump {pg_dump.version} is older than the PostgreSQL server {server_version}",
            f"{pg_dump.path} cannot dump a server of a newer major version",
            f"install the PostgreSQL {server_major(server_version_num)} client programs and set "
            "LIFEOS_PG_BIN_DIR to their bin folder",
        )


def require_restore_not_older(pg_restore: Tool, dumped_by: str, dumped_major: int) -> None:
    """Refuse up front when pg_restore is older than the pg_dump that wrote the archive."""
    if pg_restore.major < dumped_major:
        raise ToolTooOld(
            f"pg_restore {pg_restore.version} is older than the pg_dump {dumped_by} "
            "that wrote this backup",
            f"{pg_restore.path} cannot read archives of a newer pg_dump",
            f"install the PostgreSQL {dumped_major} (or newer) client programs and set "
            "LIFEOS_PG_BIN_DIR",
        )


def one_line(text: str) -> str:
    return " ".join(text.split())
