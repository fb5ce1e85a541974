"""`lifeos-wal push %p` / `lifeos-wal fetch %f %p`: the archive_command and restore_command.

Exit codes are what PostgreSQL expects:

- push: 0 only once the file is durably archived (or already was, identically); 1 otherwise,
  with one line on stderr. PostgreSQL keeps the segment and retries.
- fetch: 0 when the file was restored and its checksum matched; 1, silently, when the archive
  does not hold it (recovery asks for files past the end of the archive and for history files
  that may not exist: routine, not an error); 126 with one line on stderr when the archive is
  unreadable or the file is corrupt, or when a sealed file's private key is missing or wrong.
  PostgreSQL aborts recovery on an exit status above 125 instead of treating the file as missing,
  which is what we want: a damaged or unreadable segment must stop recovery, not end it early at
  the wrong point.

Encryption is read from the environment (PostgreSQL passes its own to these commands): push seals
for LIFEOS_ENCRYPTION_RECIPIENTS when set, fetch opens sealed files with
LIFEOS_ENCRYPTION_IDENTITY_FILE (lifeos_backup.wal.sealing).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from lifeos_backup.wal import archive as wal
from lifeos_backup.wal import segment
from lifeos_backup.wal.names import BadWalName

EXIT_MISSING = 1
EXIT_ABORT_RECOVERY = 126


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lifeos-wal", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    push = sub.add_parser("push", help="archive one WAL file (archive_command = '... push %%p')")
    push.add_argument("path", help="%%p: the WAL file, relative to the data directory")
    fetch = sub.add_parser("fetch", help="restore one WAL file (restore_command = '... %%f %%p')")
    fetch.add_argument("name", help="%%f: the WAL file name wanted")
    fetch.add_argument("dest", help="%%p: where to write it")
    for command in (push, fetch):
        command.add_argument("--archive-dir", help=f"default ${wal.ENV_ARCHIVE_DIR}")
    return parser


def run_push(path: str, archive_dir: str | None = None) -> int:
    """archive_command body: returns the exit code; never raises."""
    archive: Path | None = None
    try:
        archive = wal.archive_dir_from_env(archive_dir)
        pushed = wal.push(
            Path(path),
            archive,
            level=wal.level_from_env(),
            recipients=os.environ.get(segment.ENV_RECIPIENTS),
        )
    except (wal.WalError, BadWalName, OSError) as exc:
        message = f"lifeos-wal push {path}: {exc}"
        print(message, file=sys.stderr)
        if archive is not None:
            with contextlib.suppress(OSError):  # the archive itself is the problem: see stderr
                wal.record(archive, failure=message)
        return 1
    try:
        wal.record(archive, pushed=pushed)
    except OSError as exc:  # the segment is safe; only the health record failed
        print(f"lifeos-wal push {path}: archived, but status not recorded: {exc}", file=sys.stderr)
    return 0


def run_fetch(name: str, dest: str, archive_dir: str | None = None) -> int:
    """restore_command body: returns the exit code; never raises."""
    try:
        archive = wal.archive_dir_from_env(archive_dir)
        identity = os.environ.get(segment.ENV_IDENTITY)
        wal.fetch(name, Path(dest), archive, identity_file=Path(identity) if identity else None)
    except wal.SegmentMissing:
        return EXIT_MISSING  # routine: no output, PostgreSQL logs nothing either
    except (wal.WalError, BadWalName, OSError) as exc:
        print(f"lifeos-wal fetch {name}: {exc}", file=sys.stderr)
        return EXIT_ABORT_RECOVERY
    return 0


def main(argv: list[str] | None = None) -> None:
    """`lifeos-wal push|fetch ...`."""
    os.umask(0o027)  # archive files readable by the server's group only (see FILE_MODE)
    args = _parser().parse_args(argv)
    if args.command == "push":
        sys.exit(run_push(args.path, args.archive_dir))
    sys.exit(run_fetch(args.name, args.dest, args.archive_dir))


# `lifeos-backup wal-push|wal-fetch`, answered by lifeos_backup.cli.main before the Typer CLI loads.
FAST_COMMANDS = {"wal-push": "push", "wal-fetch": "fetch"}


if __name__ == "__main__":
    main()
