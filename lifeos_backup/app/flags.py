"""Feature flags in Redis, for switching the app's PostgreSQL backend on gradually.

The app imports this module directly, so it needs only `redis` and the standard library: nothing
else of lifeos-backup is imported (a unit test enforces it). Operators change flags with
`lifeos-backup flags ...`, which calls the same functions and also records changes in the catalog.

Values: `true`, `false`, or a rollout percentage `N%` (0-100, up to two decimals). A user's
override (`true`/`false`) wins over the flag's value. A percentage enables a user when the stable
bucket of (flag, user), sha256 -> 0..9999, is below N*100: the same user always lands in the same
bucket, so raising 10% to 50% keeps everyone who already had the feature. Without a user id a
percentage below 100% answers False: a request that cannot be pinned to a bucket must not flip
between backends from one call to the next.

Redis layout (prefix `lifeos:flags`):
    lifeos:flags                   hash  flag -> value
    lifeos:flags:users:<flag>      hash  user -> true|false
    lifeos:flags:history:<flag>    list  JSON change records, newest first, capped at HISTORY_LEN
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

import redis

VALUES_KEY = "lifeos:flags"
USERS_KEY = "lifeos:flags:users:{flag}"
HISTORY_KEY = "lifeos:flags:history:{flag}"
HISTORY_LEN = 1000  # change records kept per flag in Redis (the catalog keeps them all)
BUCKETS = 10_000  # a percentage with two decimals maps exactly onto a bucket boundary
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}")
TRUE, FALSE = "true", "false"


class FlagError(ValueError):
    """An invalid flag name or value; what/detail/hint like every lifeos error."""

    def __init__(self, what: str, detail: str = "", hint: str = "") -> None:
        super().__init__(what, detail, hint)
        self.what, self.detail, self.hint = what, detail, hint

    def __str__(self) -> str:
        text = self.what + (f": {self.detail}" if self.detail else "")
        return text + (f" (hint: {self.hint})" if self.hint else "")


@dataclass(frozen=True)
class Change:
    """One recorded change: what was set, by whom, when, from which value to which."""

    flag: str
    user: str | None  # None: the flag's own value; else that user's override
    old: str | None  # None: was not set
    new: str | None  # None: removed
    actor: str
    at: str  # ISO 8601, UTC

    @property
    def changed(self) -> bool:
        return self.old != self.new

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class FlagState:
    """A flag as stored: its value (None if only overrides exist) and the per-user overrides."""

    name: str
    value: str | None
    overrides: dict[str, str]


def client_from_env() -> redis.Redis:
    """The flags' Redis: LIFEOS_FLAGS_REDIS_URL, else LIFEOS_REDIS_URL (as the app sees them)."""
    url = os.environ.get("LIFEOS_FLAGS_REDIS_URL") or os.environ.get("LIFEOS_REDIS_URL")
    if not url:
        raise FlagError(
            "no Redis for feature flags",
            "neither LIFEOS_FLAGS_REDIS_URL nor LIFEOS_REDIS_URL is set",
            "set one of them to the Redis that holds the flags",
        )
    return redis.Redis.from_url(url, decode_responses=True)


def check_name(name: str) -> str:
    """Flag names become Redis key parts: keep them short and free of spaces and wildcards."""
    if not NAME_RE.fullmatch(name):
        raise FlagError(
            f"invalid flag name {name!r}",
            "use 1-100 letters, digits, '_', '.', ':' or '-', starting with a letter or digit",
            "e.g. use_postgresql_backend",
        )
    return name


def parse_value(text: str) -> str:
    """Normalise a flag value (`true`, `false`, `N%`) or refuse it with the accepted forms."""
    value = text.strip().lower()
    if value in (TRUE, FALSE):
        return value
    if value.endswith("%"):
        percent = _percent(value[:-1])
        if percent is not None:
            return f"{percent.normalize():f}%"
    raise FlagError(
        f"invalid flag value {text!r}",
        "accepted: true, false, or a percentage N% with 0 <= N <= 100 (e.g. 10%, 12.5%)",
        "percentages roll the flag out to that share of users; true/false apply to everyone",
    )


def parse_override(text: str) -> str:
    """A user's override is all or nothing: a percentage of one user means nothing."""
    value = text.strip().lower()
    if value not in (TRUE, FALSE):
        raise FlagError(
            f"invalid override value {text!r}",
            "a per-user override is true or false",
            "to roll out to a share of users set the flag itself to N%",
        )
    return value


def _percent(number: str) -> Decimal | None:
    try:
        percent = Decimal(number) + 0  # + 0 turns -0 into 0
    except InvalidOperation:
        return None
    if not percent.is_finite() or not 0 <= percent <= 100:
        return None
    if percent * 100 != (percent * 100).to_integral_value():  # finer than one bucket
        return None
    return percent


def bucket(flag: str, user_id: str) -> int:
    """The user's stable bucket 0..BUCKETS-1 for this flag (independent across flags)."""
    digest = hashlib.sha256(f"{flag}\x00{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def evaluate(flag: str, value: str | None, override: str | None, user_id: str | None) -> bool:
    """The decision itself, without Redis: override, then true/false, then the percentage."""
    decided = override if override is not None else value
    if decided is None or decided == FALSE:
        return False
    if decided == TRUE:
        return True
    percent = _percent(decided[:-1]) if decided.endswith("%") else None
    if percent is None:  # written behind our back (redis-cli): off rather than a crash in the app
        return False
    threshold = int(percent * 100)
    if user_id is None:
        return threshold >= BUCKETS
    return bucket(flag, str(user_id)) < threshold


def is_enabled(
    flag: str, user_id: str | int | None = None, client: redis.Redis | None = None
) -> bool:
    """Is `flag` on for this user? Unknown flags are off. One round trip to Redis."""
    client = client or client_from_env()
    user = None if user_id is None else str(user_id)
    pipe = client.pipeline(transaction=False)
    pipe.hget(VALUES_KEY, flag)
    if user is not None:
        pipe.hget(USERS_KEY.format(flag=flag), user)
    answers = [_text(a) for a in pipe.execute()]
    value = answers[0]
    override = answers[1] if user is not None else None
    return evaluate(flag, value, override, user)


def default_actor() -> str:
    """Who changes a flag when no --actor is given: the login user."""
    return os.environ.get("USER") or getpass.getuser()


def set_flag(client: redis.Redis, flag: str, value: str, actor: str | None = None) -> Change:
    """Set the flag's value; the change (old -> new) is recorded in the same transaction."""
    check_name(flag)
    return _change(client, flag, None, parse_value(value), actor)


def set_user(
    client: redis.Redis, flag: str, user: str, value: str, actor: str | None = None
) -> Change:
    """Force the flag on or off for one user, whatever the rollout."""
    check_name(flag)
    return _change(client, flag, _check_user(user), parse_override(value), actor)


def unset_user(client: redis.Redis, flag: str, user: str, actor: str | None = None) -> Change:
    """Remove one user's override (a no-op, not recorded, if there was none)."""
    check_name(flag)
    return _change(client, flag, _check_user(user), None, actor)


def get_flag(client: redis.Redis, flag: str) -> FlagState:
    check_name(flag)
    value = _text(client.hget(VALUES_KEY, flag))
    raw = client.hgetall(USERS_KEY.format(flag=flag))
    overrides = {_text(k) or "": _text(v) or "" for k, v in raw.items()}
    return FlagState(flag, value, dict(sorted(overrides.items())))


def list_flags(client: redis.Redis) -> list[FlagState]:
    """Every flag with a value or at least one override, by name."""
    names = {_text(n) or "" for n in client.hkeys(VALUES_KEY)}
    prefix = USERS_KEY.format(flag="")
    for key in client.scan_iter(match=prefix + "*", count=500):
        names.add((_text(key) or "")[len(prefix) :])
    return [get_flag(client, name) for name in sorted(names) if name]


def history(client: redis.Redis, flag: str, limit: int = 20) -> list[Change]:
    """The newest recorded changes of a flag (Redis keeps the last HISTORY_LEN)."""
    check_name(flag)
    raw = client.lrange(HISTORY_KEY.format(flag=flag), 0, limit - 1)
    return [Change(**json.loads(_text(item) or "{}")) for item in raw]


def _check_user(user: str) -> str:
    if not user or len(user) > 256 or any(c in user for c in "\r\n\x00"):
        raise FlagError(f"invalid user id {user!r}", "1-256 characters, no line breaks")
    return user


def _change(
    client: redis.Redis, flag: str, user: str | None, new: str | None, actor: str | None
) -> Change:
    """Read old, write new and append the record atomically (WATCH/MULTI), so two operators
    changing the same flag at once both get a true `old` in their record."""
    key, field = (VALUES_KEY, flag) if user is None else (USERS_KEY.format(flag=flag), user)
    who = actor or default_actor()
    result: list[Change] = []

    def apply(pipe: redis.client.Pipeline) -> None:
        old = _text(pipe.hget(key, field))
        change = Change(flag, user, old, new, who, datetime.now(UTC).isoformat())
        result[:] = [change]
        if not change.changed:
            return
        pipe.multi()
        if new is None:
            pipe.hdel(key, field)
        else:
            pipe.hset(key, field, new)
        history_key = HISTORY_KEY.format(flag=flag)
        pipe.lpush(history_key, change.to_json())
        pipe.ltrim(history_key, 0, HISTORY_LEN - 1)

    client.transaction(apply, key)
    return result[0]


def _text(value: bytes | str | None) -> str | None:
    """Clients may or may not decode responses; accept both."""
    return value.decode() if isinstance(value, bytes) else value
