"""Which backups to keep and which to delete, in the manner of `restic forget`.

Pure functions, no I/O: the rotation task reads the catalog, asks `plan()` and then deletes. Keeping
the decision apart from the deleting lets it be tested exhaustively and shown in a dry run.

A backup is kept when ANY rule of the policy keeps it, and every kept backup says which rules kept
it, so an operator can tell why something survived. Only verified backups count for the rules: an
unverified archive is no backup to rely on. Two guards sit above the policy:

* the newest verified backup is always kept, so no policy (or clock error) can leave zero good
  backups;
* failed, unverified and running backups are only removed once older than a grace period, so a
  backup in progress, or one about to be verified, is never pulled from under its task;
* backups a catalog rebuild could not prove (`unverified`: listed from a trusted manifest;
  `incomplete`: an archive without its manifest) are never removed by rotation: they may be the
  only copy of something, and only a person (or `verify`) decides what they are.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta

from lifeos_backup.core.errors import ConfigError

RUNNING = "running"
CREATED = "created"
VERIFIED = "verified"
FAILED = "failed"
DELETED = "deleted"
DELETING = "deleting"  # being removed by `forget`; neither kept nor planned, as `deleted`
UNVERIFIED = "unverified"
INCOMPLETE = "incomplete"
STATUSES = frozenset(
    {RUNNING, CREATED, VERIFIED, FAILED, DELETING, DELETED, UNVERIFIED, INCOMPLETE}
)

# Why a non-verified backup older than the grace period goes.
_GRACE_DELETE_REASONS = {
    FAILED: "failed, older than grace",
    CREATED: "unverified, older than grace",
    RUNNING: "stale running, older than grace",
}
# Why a backup that rotation never removes is kept.
_NEVER_DELETE_REASONS = {
    UNVERIFIED: "unverified since a catalog rebuild: check it with `lifeos-backup verify`",
    INCOMPLETE: "incomplete (no manifest): kept for inspection",
}

_FORM_HINT = (
    "write comma-separated key=value rules, e.g. 'last=7,daily=7,weekly=4,monthly=12' or "
    "'within=36h,last=3'; keys: last, within, daily, weekly, monthly, yearly; counts are "
    "positive whole numbers; within takes a duration such as 36h, 30d or 4w"
)

_DURATION_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}
_COUNT_RE = re.compile(r"[0-9]+")
_DURATION_RE = re.compile(r"([0-9]+)([a-z]+)")
_KEYS = ("last", "within", "daily", "weekly", "monthly", "yearly")  # canonical order
_COUNT_KEYS = tuple(k for k in _KEYS if k != "within")


@dataclass(frozen=True)
class Duration:
    """A `within` duration, kept as written (`30d` stays `30d`) so reasons echo the policy."""

    amount: int
    unit: str  # one of h, d, w

    def __post_init__(self) -> None:
        if self.unit not in _DURATION_UNITS:
            raise ConfigError(
                "invalid retention duration",
                f"unit {self.unit!r} is not one of h, d, w",
                _FORM_HINT,
            )
        _require_positive("within", self.amount)

    @property
    def delta(self) -> timedelta:
        return self.amount * _DURATION_UNITS[self.unit]

    def __str__(self) -> str:
        return f"{self.amount}{self.unit}"


@dataclass(frozen=True)
class Policy:
    """One retention policy; a field is None when its rule is absent.

    Field order is the canonical order of `str(policy)`, which `parse_policy` reads back.
    """

    last: int | None = None
    within: Duration | None = None
    daily: int | None = None
    weekly: int | None = None
    monthly: int | None = None
    yearly: int | None = None

    def __post_init__(self) -> None:
        # Checked here as well as in parse_policy so a Policy built in code is just as safe.
        for name in _COUNT_KEYS:
            value = getattr(self, name)
            if value is not None:
                _require_positive(name, value)
        if all(getattr(self, f.name) is None for f in fields(self)):
            raise ConfigError(
                "invalid retention policy", "it has no rule, so it would keep nothing", _FORM_HINT
            )

    def __str__(self) -> str:
        return ",".join(
            f"{f.name}={getattr(self, f.name)}"
            for f in fields(self)
            if getattr(self, f.name) is not None
        )


def _require_positive(key: str, value: object) -> None:
    # bool is an int subclass; last=True is a bug, not a count of one.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            "invalid retention policy",
            f"{key}={value}: the count must be a positive whole number",
            _FORM_HINT,
        )


def parse_policy(text: str) -> Policy:
    """Read a policy string such as `"last=7,daily=7,weekly=4,monthly=12"`.

    Spaces around rules and `=` are tolerated and keys are case-insensitive, since these strings
    are typed by hand into an environment file; anything else wrong is refused, naming the part
    at fault, rather than guessed at: a mistyped policy must not silently delete backups.
    """
    if not text or not text.strip():
        raise ConfigError("invalid retention policy", "the policy is empty", _FORM_HINT)
    what = f"invalid retention policy {text!r}"
    values: dict[str, int | Duration] = {}
    for raw_part in text.split(","):
        part = raw_part.strip()
        if not part:
            raise ConfigError(what, "empty rule (a stray comma?)", _FORM_HINT)
        key, sep, raw_value = part.partition("=")
        key, value = key.strip().lower(), raw_value.strip()
        if not sep:
            raise ConfigError(what, f"{part!r} is not of the form key=value", _FORM_HINT)
        if key not in _KEYS:
            raise ConfigError(what, f"unknown key {key!r} in {part!r}", _FORM_HINT)
        if key in values:
            raise ConfigError(what, f"{key!r} is given more than once", _FORM_HINT)
        values[key] = (
            _parse_duration(what, part, value)
            if key == "within"
            else _parse_count(what, part, value)
        )
    return Policy(**values)  # type: ignore[arg-type]  # keys and types checked above


def _parse_count(what: str, part: str, value: str) -> int:
    if not _COUNT_RE.fullmatch(value) or int(value) < 1:
        raise ConfigError(what, f"{part!r}: the count must be a positive whole number", _FORM_HINT)
    return int(value)


def _parse_duration(what: str, part: str, value: str) -> Duration:
    match = _DURATION_RE.fullmatch(value.lower())
    if match is None or match.group(2) not in _DURATION_UNITS or int(match.group(1)) < 1:
        raise ConfigError(
            what,
            f"{part!r}: the duration must be a positive whole number followed by h, d or w",
            _FORM_HINT,
        )
    duration = Duration(int(match.group(1)), match.group(2))
    try:
        duration.delta  # noqa: B018  # fail here, not at rotation time, on an absurd duration
    except OverflowError:
        raise ConfigError(what, f"{part!r}: the duration is too long", _FORM_HINT) from None
    return duration


@dataclass(frozen=True)
class Candidate:
    """A backup as the catalog knows it, reduced to what retention needs."""

    id: str
    created_at: datetime  # timezone-aware; buckets are counted in UTC
    status: str  # one of STATUSES

    def __post_init__(self) -> None:
        # Programming errors, not configuration: a naive time would shift buckets by hours.
        if self.created_at.tzinfo is None or self.created_at.utcoffset() is None:
            raise ValueError(f"backup {self.id}: created_at must be timezone-aware")
        if self.status not in STATUSES:
            raise ValueError(f"backup {self.id}: unknown status {self.status!r}")


@dataclass(frozen=True)
class Decision:
    """What happens to one backup, and every reason for it."""

    id: str
    created_at: datetime
    status: str
    reasons: list[str]


@dataclass(frozen=True)
class Plan:
    """The outcome of `plan()`: both lists newest first."""

    keep: list[Decision]
    delete: list[Decision]


def _bucket_day(t: datetime) -> str:
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}"


def _bucket_week(t: datetime) -> str:
    # ISO weeks: the last days of December may belong to week 1 of the next year.
    iso = t.isocalendar()
    return f"{iso.year:04d}-W{iso.week:02d}"


def _bucket_month(t: datetime) -> str:
    return f"{t.year:04d}-{t.month:02d}"


def _bucket_year(t: datetime) -> str:
    return f"{t.year:04d}"


_BUCKETS: tuple[tuple[str, Callable[[datetime], str]], ...] = (
    ("daily", _bucket_day),
    ("weekly", _bucket_week),
    ("monthly", _bucket_month),
    ("yearly", _bucket_year),
)


def _newest_first(candidates: Iterable[Candidate]) -> list[Candidate]:
    # The id breaks ties in time so equal timestamps still give one answer whatever the input order.
    return sorted(candidates, key=lambda c: (c.created_at, c.id), reverse=True)


def _rule_reasons(verified: Sequence[Candidate], policy: Policy, now: datetime) -> list[list[str]]:
    """Reasons each verified backup (newest first) is kept by the policy; empty if none keeps it."""
    reasons: list[list[str]] = [[] for _ in verified]
    if policy.last is not None:
        for i in range(min(policy.last, len(verified))):
            reasons[i].append(f"last {policy.last}")
    if policy.within is not None:
        limit = policy.within.delta
        for i, c in enumerate(verified):
            # Inclusive, like the grace period: exactly 30 days old is still within 30d.
            if now - c.created_at <= limit:
                reasons[i].append(f"within {policy.within}")
    for name, bucket_of in _BUCKETS:
        count: int | None = getattr(policy, name)
        if count is None:
            continue
        # As restic: walking newest first, the first backup met in each new bucket is that
        # bucket's newest; stop after `count` buckets that have backups (empty ones don't count).
        last_bucket: str | None = None
        for i, c in enumerate(verified):
            if count == 0:
                break
            bucket = bucket_of(c.created_at.astimezone(UTC))
            if bucket != last_bucket:
                reasons[i].append(f"{name} {bucket}")
                last_bucket = bucket
                count -= 1
    return reasons


def plan(candidates: Iterable[Candidate], policy: Policy, now: datetime, grace: timedelta) -> Plan:
    """Split backups into keep and delete, each with its reasons, newest first.

    `deleted` and `deleting` candidates are (being) gone and appear in neither list. Every other
    candidate is in exactly one of them.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    live = _newest_first(c for c in candidates if c.status not in (DELETED, DELETING))
    verified = [c for c in live if c.status == VERIFIED]
    rule_reasons = iter(_rule_reasons(verified, policy, now))  # same order as verified in live

    keep: list[Decision] = []
    delete: list[Decision] = []
    for c in live:
        if c.status == VERIFIED:
            reasons = next(rule_reasons)
            if c is verified[0]:
                reasons.insert(0, "newest verified")
            if reasons:
                keep.append(Decision(c.id, c.created_at, c.status, reasons))
            else:
                reason = f"not kept by policy {policy}"
                delete.append(Decision(c.id, c.created_at, c.status, [reason]))
        elif c.status in _NEVER_DELETE_REASONS:
            keep.append(Decision(c.id, c.created_at, c.status, [_NEVER_DELETE_REASONS[c.status]]))
        elif now - c.created_at > grace:
            delete.append(Decision(c.id, c.created_at, c.status, [_GRACE_DELETE_REASONS[c.status]]))
        else:
            keep.append(Decision(c.id, c.created_at, c.status, ["within grace period"]))
    return Plan(keep=keep, delete=delete)
