"""How `lifeos-backup` answers when a command cannot do its work: never with a traceback.

Three kinds of failure, three answers (README, "Expected failures print one line"):

- A usage error (unknown command or option, missing argument, a value of the wrong type or not
  among the choices): click's short message (`Usage: ...`, `Try '... --help' for help.`,
  `Error: ...`) on stderr, exit 2.
- An expected failure: a LifeosError, or one of the few outside errors that mean the same (Redis
  or the catalog database unreachable, a refused PostgreSQL login, a full disk, a path that does
  not exist or may not be written). One line `error: <what>: <detail> (hint: ...)` on stderr,
  exit 1.
- Anything else is a bug. The operator still gets one `error:` line, naming the file the full
  traceback was written to; `LIFEOS_DEBUG=1` prints the traceback as well. Exit 70 (EX_SOFTWARE),
  so scripts and tests can tell a bug from a refusal.

Typer 0.26 and later carry their own copy of click (`typer._click`) and no longer raise the click
package's exceptions; earlier versions use the click package. `_click_exceptions` finds the
module typer really raises from, so usage errors are recognised whichever typer is installed.

Every line printed here passes `redact`, so a password inside a URL (a database URL given to
`--database`, a Redis URL in an error message) never reaches the terminal or the traceback file.
"""

from __future__ import annotations

import errno
import functools
import importlib
import os
import re
import sys
import tempfile
import traceback
from collections.abc import Callable
from types import ModuleType

import typer

from lifeos_backup.core.errors import LifeosError

EXIT_FAILURE = 1  # an expected failure: the one `error:` line says what and what to do
EXIT_BUG = 70  # sysexits.h EX_SOFTWARE: an unexpected exception, traceback in a file
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT
DEBUG_VARIABLE = "LIFEOS_DEBUG"

# `scheme://user:password@host`: the password is replaced, whatever the scheme.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@")

# OS errors that describe the machine, not the program: a full disk, a missing or read-only
# path. They are expected failures with a hint; any other OSError is reported as a bug.
_OS_HINTS: dict[int, str] = {
    errno.ENOSPC: "free some space there, or choose another place, and try again",
    errno.EDQUOT: "the disk quota is used up: free some space, or choose another place",
    errno.EACCES: "check the permissions of that path, or run as the user owning the backups",
    errno.EPERM: "check the permissions of that path, or run as the user owning the backups",
    errno.EROFS: "that file system is read-only: choose another place",
    errno.ENOENT: "check the path: it, or a folder on the way to it, does not exist",
    errno.ENOTDIR: "check the path: a part of it is a file, not a folder",
    errno.EISDIR: "that path is a folder: give a file",
    errno.EEXIST: "that path exists already: choose another one",
    errno.ENOTEMPTY: "that folder is not empty: choose another one",
    errno.ENAMETOOLONG: "the path is too long: choose a shorter one",
    errno.EIO: "the disk reported an input/output error: check it (dmesg) before trying again",
}

# SQLSTATE classes of PostgreSQL errors that are about the server or the login, not about our
# SQL: connection (08), authorization (28), a missing database (3D), insufficient resources such
# as a full disk (53), operator intervention such as a shutdown (57); 42501: permission denied.
_PG_EXPECTED_CLASSES = ("08", "28", "3D", "53", "57")
_PG_EXPECTED_STATES = ("42501",)


def redact(text: str) -> str:
    """`text` with the password of every URL in it replaced by `***`."""
    return _URL_PASSWORD.sub(r"\g<head>***@", text)


def one_line(text: str) -> str:
    """Multi-line messages (libpq's, tools' stderr) joined into one line for `error:`."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def say(text: str) -> None:
    """Print one redacted `error:` line on stderr."""
    print(f"error: {redact(one_line(text))}", file=sys.stderr, flush=True)


@functools.cache
def _click_exceptions() -> ModuleType:
    """The exceptions module of the click typer uses: typer._click (0.26+) or click's own."""
    return importlib.import_module(typer.BadParameter.__module__)


def is_usage_error(exc: BaseException) -> bool:
    """A click exception: a usage error (exit 2) or click's own file errors (exit 1)."""
    return isinstance(exc, _click_exceptions().ClickException)


def is_abort(exc: BaseException) -> bool:
    """typer.Abort, and click's Abort where typer still uses the click package."""
    aborts = [typer.Abort, getattr(_click_exceptions(), "Abort", typer.Abort)]
    return isinstance(exc, tuple(aborts))


def _redis_error(exc: BaseException) -> LifeosError | None:
    import kombu.exceptions
    import redis.exceptions

    unreachable = (
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
        kombu.exceptions.OperationalError,
    )
    if not isinstance(exc, unreachable):
        return None
    return LifeosError(
        "cannot reach Redis", str(exc), "start it, check LIFEOS_REDIS_URL, or run `up`"
    )


def _catalog_error(exc: BaseException, catalog_url: Callable[[], str]) -> LifeosError | None:
    """The catalog database broke while in use; a broken statement or constraint is a bug."""
    import sqlalchemy.exc

    bugs = (
        sqlalchemy.exc.IntegrityError,
        sqlalchemy.exc.ProgrammingError,
        sqlalchemy.exc.DataError,
    )
    if not isinstance(exc, sqlalchemy.exc.DatabaseError) or isinstance(exc, bugs):
        return None
    from lifeos_backup.storage.catalog.store import unreadable

    try:
        url = catalog_url()
    except LifeosError:
        url = ""
    return unreadable(url, exc)


def _postgres_error(exc: BaseException) -> LifeosError | None:
    """psycopg's errors about the server or the login, as text (never their args tuple)."""
    if type(exc).__module__.split(".")[0] != "psycopg":
        return None
    state = getattr(exc, "sqlstate", None)
    if state is None:  # raised by the client: a lost or refused connection, or a bug
        about_server = type(exc).__name__ in ("OperationalError", "InterfaceError")
    else:
        about_server = state in _PG_EXPECTED_STATES or state[:2] in _PG_EXPECTED_CLASSES
    if not about_server:
        return None
    return LifeosError(
        "PostgreSQL refused the request",
        one_line(str(exc)),
        "check the server, the login in LIFEOS_DATABASE_URL and the database's permissions",
    )


def _os_error(exc: BaseException) -> LifeosError | None:
    if not isinstance(exc, OSError) or exc.errno not in _OS_HINTS:
        return None
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    return LifeosError(exc.strerror or str(exc), " -> ".join(paths), _OS_HINTS[exc.errno])


def expected(exc: BaseException, catalog_url: Callable[[], str]) -> LifeosError | None:
    """The one-line error for an expected failure, or None when `exc` is a bug."""
    if isinstance(exc, LifeosError):
        return exc
    for classify in (_redis_error, _postgres_error, _os_error):
        found = classify(exc)
        if found is not None:
            return found
    return _catalog_error(exc, catalog_url)


def write_traceback(exc: BaseException) -> str:
    """Write the full (redacted) traceback into a new private file; returns its path."""
    from lifeos_backup.version import package_version

    text = "".join(traceback.format_exception(exc))
    header = f"lifeos-backup {package_version()}\ncommand: {' '.join(sys.argv)}\n\n"
    fd, path = tempfile.mkstemp(prefix="lifeos-backup-", suffix=".traceback.txt")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(redact(header + text))
    return path


def report_bug(exc: BaseException) -> None:
    """One `error:` line for an unexpected exception, and where its traceback is."""
    if os.environ.get(DEBUG_VARIABLE, "") not in ("", "0"):
        print(redact("".join(traceback.format_exception(exc))), file=sys.stderr, end="")
    try:
        where = f"the traceback is in {write_traceback(exc)}"
    except OSError as failed:
        where = f"the traceback could not be saved ({failed.strerror})"
    say(
        f"unexpected {type(exc).__name__}: {exc} (hint: this is a bug in lifeos-backup; "
        f"{where}; {DEBUG_VARIABLE}=1 prints it)"
    )


def exit_code(exc: BaseException, catalog_url: Callable[[], str]) -> int:
    """Report `exc` as the README promises and return the process's exit code."""
    if is_usage_error(exc):
        exc.show()  # type: ignore[attr-defined]  # click's ClickException
        return int(exc.exit_code)  # type: ignore[attr-defined]
    if is_abort(exc):
        print("aborted", file=sys.stderr)
        return EXIT_INTERRUPTED
    error = expected(exc, catalog_url)
    if error is None:
        report_bug(exc)
        return EXIT_BUG
    say(str(error))
    return EXIT_FAILURE
