"""A PostgreSQL cluster that archives its WAL through our own `lifeos-wal push`.

The server runs as the `postgres` OS user (we are root), which can neither enter the project's
virtualenv (its interpreter lives under /root) nor, possibly, the checkout. So the hot-path
package (`lifeos_backup/__init__.py` + `lifeos_backup/wal/`, standard library only) is copied into
a folder that user can read and run with the system's python3. That interpreter has no
`zstandard`, so the live path also proves the `zstd`-command fallback; the in-process path is
covered by tests/unit/test_wal_archive.py. Sealed (encrypted) WAL also needs `cryptography`: the
system's when it has one, else the virtualenv's copied beside the package.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cryptography

import lifeos_backup
from tests.support.services import PG_OS_USER, PostgresCluster, _pg_temp_base

SYSTEM_PYTHONS = ("/usr/bin/python3", "/usr/local/bin/python3")
# What sealing WAL imports beyond lifeos_backup/wal (lifeos_backup.wal.sealing).
SEALING_MODULES = (
    "core/agekeys.py", "core/errors.py", "formats/agestream.py", "formats/streams.py"
)
CRYPTO_PROBE = "import cryptography.hazmat.primitives.ciphers.aead"
# `cryptography` and what it loads at run time, as installed in the virtualenv.
CRYPTO_DISTS = ("cryptography", "cffi", "_cffi_backend*")


@dataclass
class ArchivingCluster:
    """A cluster whose archive_command is our wal push into `archive`."""

    cluster: PostgresCluster
    base: Path  # postgres-reachable scratch folder (archive, package copy, restores)
    archive: Path
    wal_command: str  # program part of archive/restore commands, e.g. 'python3 -m ...'

    def stop(self) -> None:
        self.cluster.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def _server_user() -> pwd.struct_passwd | None:
    return pwd.getpwnam(PG_OS_USER) if os.geteuid() == 0 else None


def _runs_as(user: pwd.struct_passwd | None, args: list[str]) -> bool:
    cmd = ["runuser", "-u", user.pw_name, "--", *args] if user else args
    try:
        return subprocess.run(cmd, capture_output=True, timeout=30, check=False).returncode == 0
    except OSError:
        return False


def server_python(user: pwd.struct_passwd | None) -> str:
    """A python3 (3.11+) that the server's OS user can run."""
    probe = "import sys; sys.exit(sys.version_info < (3, 11))"
    for candidate in SYSTEM_PYTHONS:
        if os.access(candidate, os.X_OK) and _runs_as(user, [candidate, "-c", probe]):
            return candidate
    raise RuntimeError(f"no python3 >= 3.11 runnable by {PG_OS_USER} among {SYSTEM_PYTHONS}")


def copy_wal_package(dest: Path) -> Path:
    """Copy the hot path (standard library only, plus what sealing imports lazily) to `dest`;
    returns the PYTHONPATH entry."""
    source = Path(lifeos_backup.__file__).parent
    package = dest / "lifeos_backup"
    (package / "wal").mkdir(parents=True)
    for name in ("__init__.py", *SEALING_MODULES):
        folder = Path(name).parent  # a sub-package: its __init__.py too
        (package / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(source / folder / "__init__.py", package / folder / "__init__.py")
        shutil.copy(source / name, package / name)
    for module in (source / "wal").glob("*.py"):
        shutil.copy(module, package / "wal" / module.name)
    return dest


def ensure_crypto(python: str, pythonpath: Path, user: pwd.struct_passwd | None) -> None:
    """Make `cryptography` importable for the server's python (system package or a copy)."""
    probe = ["env", f"PYTHONPATH={pythonpath}", python, "-c", CRYPTO_PROBE]
    if _runs_as(user, probe):
        return
    site = Path(cryptography.__file__).parents[1]  # the virtualenv's site-packages
    for pattern in CRYPTO_DISTS:
        for found in site.glob(pattern):
            copy = shutil.copytree if found.is_dir() else shutil.copy
            copy(found, pythonpath / found.name)
    _chown_tree(pythonpath, user)
    if not _runs_as(user, probe):
        raise RuntimeError(f"{python} cannot import cryptography, even from a copy in {pythonpath}")


def _chown_tree(root: Path, user: pwd.struct_passwd | None) -> None:
    if user is None:
        return
    for folder, dirs, files in os.walk(root):
        os.chown(folder, user.pw_uid, user.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(folder, name), user.pw_uid, user.pw_gid)


def start_archiving_cluster(
    archive_timeout: int = 1, recipients: str | None = None
) -> ArchivingCluster:
    """initdb + start a cluster with wal_level=replica, archive_mode=on, our archive_command;
    with `recipients` (age public keys) the command seals every segment."""
    user = _server_user()
    base = Path(tempfile.mkdtemp(prefix="lifeos-pitr-", dir=_pg_temp_base(user)))
    base.chmod(0o755)
    try:
        pythonpath = copy_wal_package(base / "pkg")
        archive = base / "archive"
        archive.mkdir(mode=0o750)
        (base / "restores").mkdir(mode=0o755)
        _chown_tree(base, user)
        python = server_python(user)
        wal_command = f"PYTHONPATH={shlex.quote(str(pythonpath))} {python} -m lifeos_backup.wal"
        push = f"{wal_command} push %p --archive-dir {shlex.quote(str(archive))}"
        if recipients:
            ensure_crypto(python, pythonpath, user)
            push = f"LIFEOS_ENCRYPTION_RECIPIENTS={shlex.quote(recipients)} {push}"
        cluster = PostgresCluster(
            conf_lines=[
                "wal_level = replica",
                "archive_mode = on",
                f"archive_command = '{push}'",
                f"archive_timeout = {archive_timeout}",
            ]
        )
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    return ArchivingCluster(cluster, base, archive, wal_command)


def stop_restored(cluster: PostgresCluster, datadir: Path) -> None:
    """Stop a server that `restore pitr --start` started (as the server's OS user)."""
    if (datadir / "postmaster.pid").exists():
        cluster._run(
            [str(cluster.bindir / "pg_ctl"), "-D", str(datadir), "-m", "immediate", "-w", "stop"],
            timeout=60,
        )
