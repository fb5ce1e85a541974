"""Per-backup leases: whoever works on a backup's files holds its lease, a file lock (flock).

The kernel drops a file lock the moment its holder dies, SIGKILL included, with no timeout to
wait out. So "this lease is free" proves that no live process is writing, verifying or cleaning
that backup, and the clean-up and the sweeper act only on backups whose lease they took:
they never touch a live backup, and they never wait for a dead one.

The lock file lives at `<backup root>/.state/leases/<backup id>.lock` (an id checked by
lifeos_backup.core.names), holds its holder's description for `status` and error messages, and is
removed by its holder on release, so no file outlives its job. Leases work across hosts exactly as
far as the file system's locks do (local disks; NFSv4 on Linux).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from lifeos_backup.core.errors import AlreadyRunning
from lifeos_backup.core.fsutil import FILE_MODE, private_dir
from lifeos_backup.core.names import check_backup_id

LEASES = Path(".state") / "leases"


class LeaseBusy(AlreadyRunning):
    """Someone alive holds the backup's lease; `holder` says who (its own description)."""

    def __init__(self, what: str, detail: str = "", hint: str = "", *, holder: dict | None = None):
        super().__init__(what, detail, hint)
        self.holder = holder or {}


def lease_path(root: Path, backup_id: str) -> Path:
    return root / LEASES / f"{check_backup_id(backup_id)}.lock"


def _read_holder(fd: int) -> dict[str, object]:
    with contextlib.suppress(OSError, ValueError):
        data = os.pread(fd, 4096, 0)
        found = json.loads(data.decode() or "{}")
        if isinstance(found, dict):
            return found
    return {}


def _open_locked(path: Path, wait: bool) -> int | None:
    """An fd holding the lock on the file now at `path`, or None if someone else holds it.

    A holder removes the file as it releases it, so an fd opened just before that removal may
    lock a file that is no longer at `path`: then it is closed and the open repeated.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            raise
        try:
            now = os.stat(path)
        except FileNotFoundError:
            now = None
        held = os.fstat(fd)
        if now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
            return fd
        os.close(fd)


def holder_of(root: Path, backup_id: str) -> dict[str, object] | None:
    """Who holds the lease now (their description), or None when it is free."""
    path = lease_path(root, backup_id)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd) or {"owner": "?"}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@contextlib.contextmanager
def lease(
    root: Path, backup_id: str, owner: str, what: str, *, wait: bool = False
) -> Iterator[Path]:
    """Hold backup `backup_id`'s lease for the block, or raise LeaseBusy naming the holder.

    `owner` (a task id, or `cli`) and `what` (create, verify, clean-up...) describe the holder.
    """
    path = lease_path(root, backup_id)
    private_dir(path.parent)
    fd = _open_locked(path, wait)
    if fd is None:
        holder = holder_of(root, backup_id) or {}
        raise LeaseBusy(
            f"backup {backup_id} is busy",
            f"{holder.get('what', 'in use')} by {holder.get('owner', '?')} "
            f"(pid {holder.get('pid', '?')} on {holder.get('host', '?')})",
            "wait for it to finish; a holder that dies releases it at once",
            holder=holder,
        )
    try:
        me = {"owner": owner, "what": what, "pid": os.getpid(), "host": socket.gethostname()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # while still locked: a waiter then sees a new file and retries
        os.close(fd)


@contextlib.contextmanager
def try_lease(root: Path, backup_id: str, owner: str, what: str) -> Iterator[bool]:
    """Hold the lease for the block if it is free (True), else do nothing (False)."""
    held = lease(root, backup_id, owner, what)
    try:
        held.__enter__()
    except LeaseBusy:
        yield False
        return
    try:
        yield True
    except BaseException as exc:
        if not held.__exit__(type(exc), exc, exc.__traceback__):
            raise
    else:
        held.__exit__(None, None, None)
