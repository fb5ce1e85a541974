"""Durable, private file writing: temporary name, fsync, rename; files 0600, folders 0700.

Every file the system publishes goes through here, so a crash never leaves a half-written file
under a name that looks finished.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

FILE_MODE = 0o600
DIR_MODE = 0o700
PARTIAL_SUFFIX = ".partial"


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) as 0700; tighten an existing one."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    os.chmod(path, DIR_MODE)
    return path


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def partial_name(final: Path) -> Path:
    """The hidden temporary name used while `final` is written; never matches a backup pattern."""
    return final.with_name(f".{final.name}{PARTIAL_SUFFIX}")


@contextlib.contextmanager
def atomic_writer(final: Path) -> Iterator[BinaryIO]:
    """Yield a 0600 file at a temporary name; on success fsync and rename it to `final`.

    On any exception the temporary file is removed and `final` is untouched.
    """
    private_dir(final.parent)
    tmp = partial_name(final)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_json_atomic(final: Path, document: Any) -> None:
    """Write a JSON document durably (manifests, reports)."""
    with atomic_writer(final) as handle:
        handle.write(json.dumps(document, indent=2, sort_keys=True).encode() + b"\n")


def remove_quietly(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
