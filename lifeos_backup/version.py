"""The installed version of lifeos-backup, read from the package metadata.

pyproject.toml holds the one version number; installing the package copies it into the metadata,
and everything that reports a version (`lifeos-backup --version`, the `tool_version` of every
manifest) reads it from there, so no second copy in the code can fall behind.
"""

from __future__ import annotations

import functools

DISTRIBUTION = "lifeos-backup"
UNKNOWN = "0+unknown"  # a source tree used without being installed


@functools.cache
def package_version() -> str:
    """The installed distribution's version; UNKNOWN when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return UNKNOWN
