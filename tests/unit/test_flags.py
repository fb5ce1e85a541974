"""Feature flags without Redis: value parsing, bucketing, the decision, and the import budget."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lifeos_backup.app.flags import (
    BUCKETS,
    FlagError,
    bucket,
    evaluate,
    parse_override,
    parse_value,
)


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("true", "true"),
        (" FALSE ", "false"),
        ("10%", "10%"),
        ("12.50%", "12.5%"),
        ("0%", "0%"),
        ("100%", "100%"),
    ],
)
def test_values_are_normalised(text: str, stored: str) -> None:
    assert parse_value(text) == stored


@pytest.mark.parametrize("text", ["yes", "1", "10", "101%", "-1%", "12.345%", "nan%", "%", ""])
def test_invalid_values_are_refused_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(FlagError, match=r"invalid flag value .*accepted: true, false, or a per"):
        parse_value(text)


def test_overrides_are_all_or_nothing() -> None:
    assert parse_override("TRUE") == "true"
    with pytest.raises(FlagError, match="per-user override is true or false"):
        parse_override("50%")


def test_buckets_are_stable_and_per_flag() -> None:
    assert bucket("f", "u1") == bucket("f", "u1")
    assert 0 <= bucket("f", "u1") < BUCKETS
    # Independent across flags: the same 10% of users must not get every experiment.
    first = {u for u in map(str, range(2000)) if bucket("a", u) < 1000}
    second = {u for u in map(str, range(2000)) if bucket("b", u) < 1000}
    assert first != second


def test_decision_order_override_then_value_then_percentage() -> None:
    assert evaluate("f", "false", "true", "u") is True
    assert evaluate("f", "true", "false", "u") is False
    assert evaluate("f", None, None, "u") is False
    assert evaluate("f", "0%", None, "u") is False
    assert evaluate("f", "100%", None, "u") is True
    # No user: a partial rollout cannot pin the caller to a bucket, so it stays off.
    assert evaluate("f", "99.99%", None, None) is False
    assert evaluate("f", "100%", None, None) is True
    assert evaluate("f", "garbage", None, "u") is False  # written behind our back: off


def test_flags_import_only_redis() -> None:
    """The main app imports this module: it must not pull our stack in."""
    code = (
        "import sys, lifeos_backup.app.flags\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('pydantic', 'pydantic_settings', 'sqlalchemy', 'psycopg', 'celery', 'typer', 'rich',"
        " 'alembic', 'zstandard', 'boto3')"
        " or m.startswith('lifeos_backup.')"
        " and m not in ('lifeos_backup.app', 'lifeos_backup.app.flags')]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
