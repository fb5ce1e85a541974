"""One exception root for the whole system.

Every error says what happened, the detail, and a hint for the operator. The two branches tell
Celery what to do: a RetryableError is retried with backoff, a PermanentError fails at once.
"""

from __future__ import annotations


class LifeosError(Exception):
    """Root of every expected failure; the CLI prints it as one line, never as a traceback."""

    def __init__(self, what: str, detail: str = "", hint: str = "") -> None:
        # args kept positional so Celery can rebuild the exception from its JSON form.
        super().__init__(what, detail, hint)
        self.what = what
        self.detail = detail
        self.hint = hint

    def __str__(self) -> str:
        text = self.what
        if self.detail:
            text += f": {self.detail}"
        if self.hint:
            text += f" (hint: {self.hint})"
        return text


class RetryableError(LifeosError):
    """A passing condition (network, a busy service): trying again later may succeed."""


class PermanentError(LifeosError):
    """Trying again will not help until someone changes something."""


class ConfigError(PermanentError):
    """A setting is missing or invalid."""


class NotFound(PermanentError):
    """A backup, file or object that was asked for does not exist."""


class InvalidName(PermanentError):
    """A backup id, archive name or path read from data is not the repository's own pattern."""


class AlreadyRunning(PermanentError):
    """Another job holds the lock for the same kind; this request is skipped, not queued."""


class VerificationFailed(PermanentError):
    """An archive does not match its manifest: the backup is not good."""


class UnsafeArchive(PermanentError):
    """An archive member would escape the restore target or is of a refused type."""


class TargetNotEmpty(PermanentError):
    """A restore target already holds data and --force was not given."""


class CommandFailed(PermanentError):
    """An external command exited non-zero; its stderr is in the detail."""


class CommandTimeout(RetryableError):
    """An external command ran past its time limit and its process group was killed."""


class SourceUnavailable(RetryableError):
    """The data to back up cannot be reached right now (database down, folder unmounted)."""


class TooManyDeliveries(PermanentError):
    """A task message kept killing its worker; it is failed instead of redelivered forever."""


class DecryptionKeyError(PermanentError):
    """An encrypted backup cannot be read: its private key is missing or is not the right one."""


class OffsiteError(RetryableError):
    """Off-site storage cannot be reached or refused a request for a passing reason."""
