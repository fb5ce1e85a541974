"""Tests of retention: policy parsing and the keep/delete plan.

Expected ids are worked out by hand from the calendar, not by re-running the algorithm, so a
bucketing mistake shows up as a failure rather than being copied into the expectation.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lifeos_backup.core.errors import ConfigError
from lifeos_backup.storage.retention import (
    CREATED,
    DELETED,
    DELETING,
    FAILED,
    RUNNING,
    STATUSES,
    VERIFIED,
    Candidate,
    Decision,
    Duration,
    Plan,
    Policy,
    parse_policy,
    plan,
)

GRACE = timedelta(hours=24)


def at(text: str) -> datetime:
    """A UTC time from 'YYYY-MM-DDTHH' or a full ISO string."""
    if len(text) == 13:
        text += ":00"
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def verified(*stamps: str) -> list[Candidate]:
    """Verified backups whose id is their timestamp, so expectations read like a calendar."""
    return [Candidate(s, at(s), VERIFIED) for s in stamps]


def ids(decisions: list[Decision]) -> list[str]:
    return [d.id for d in decisions]


def reasons(result: Plan) -> dict[str, list[str]]:
    return {d.id: d.reasons for d in result.keep + result.delete}


# --- parsing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("last=30", Policy(last=30)),
        ("within=30d", Policy(within=Duration(30, "d"))),
        ("within=36h", Policy(within=Duration(36, "h"))),
        ("within=4w", Policy(within=Duration(4, "w"))),
        (
            "last=7,daily=7,weekly=4,monthly=12",
            Policy(last=7, daily=7, weekly=4, monthly=12),
        ),
        ("within=36h,last=3", Policy(last=3, within=Duration(36, "h"))),
        ("yearly=5", Policy(yearly=5)),
        (" last = 3 , Daily=2 ", Policy(last=3, daily=2)),
        ("WITHIN=2W", Policy(within=Duration(2, "w"))),
    ],
)
def test_parse_valid(text: str, expected: Policy) -> None:
    assert parse_policy(text) == expected


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("last=30", "last=30"),
        ("within=30d", "within=30d"),
        ("last=7,daily=7,weekly=4,monthly=12", "last=7,daily=7,weekly=4,monthly=12"),
        ("within=36h,last=3", "last=3,within=36h"),
        (
            "yearly=2,monthly=3,weekly=4,daily=5,within=1w,last=6",
            "last=6,within=1w,daily=5,weekly=4,monthly=3,yearly=2",
        ),
        (" Last = 3 ", "last=3"),
    ],
)
def test_canonical_str_round_trips(text: str, canonical: str) -> None:
    policy = parse_policy(text)
    assert str(policy) == canonical
    assert parse_policy(str(policy)) == policy


def test_within_duration_is_kept_as_written() -> None:
    # 7d and 1w last as long, but the reason should echo what the operator wrote.
    assert str(parse_policy("within=7d")) == "within=7d"
    assert parse_policy("within=7d").within.delta == parse_policy("within=1w").within.delta


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("last", "'last' is not of the form key=value"),
        ("last:3", "'last:3' is not of the form key=value"),
        ("keep=3", "unknown key 'keep'"),
        ("last=3,hourly=2", "unknown key 'hourly'"),
        ("last=0", "'last=0'"),
        ("daily=-1", "'daily=-1'"),
        ("weekly=1.5", "'weekly=1.5'"),
        ("monthly=abc", "'monthly=abc'"),
        ("yearly=", "'yearly='"),
        ("last=+3", "'last=+3'"),
        ("within=3m", "'within=3m'"),
        ("within=30", "'within=30'"),
        ("within=d", "'within=d'"),
        ("within=0d", "'within=0d'"),
        ("within=1.5d", "'within=1.5d'"),
        ("within=99999999999999w", "too long"),
        ("last=3,last=4", "'last' is given more than once"),
        ("within=1d,within=2d", "'within' is given more than once"),
        ("last=3,", "empty rule"),
        (",last=3", "empty rule"),
        ("last=3,,daily=2", "empty rule"),
    ],
)
def test_parse_invalid_names_the_bad_part_and_the_form(text: str, named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_policy(text)
    message = str(caught.value)
    assert named in message
    # Every refusal shows the valid form, so the operator can fix it from the message alone.
    assert "last=7,daily=7,weekly=4,monthly=12" in caught.value.hint
    assert "h, d or w" in message or "30d" in caught.value.hint


def test_count_error_says_positive_whole_number() -> None:
    with pytest.raises(ConfigError, match="positive whole number"):
        parse_policy("last=0")


def test_duration_error_names_the_units() -> None:
    with pytest.raises(ConfigError, match="followed by h, d or w"):
        parse_policy("within=3m")


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"last": 0}, {"daily": -2}, {"last": True}, {"weekly": 1.5}],
)
def test_policy_built_in_code_is_checked_too(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        Policy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("amount", "unit"), [(0, "d"), (3, "m"), (-1, "h")])
def test_duration_built_in_code_is_checked(amount: int, unit: str) -> None:
    with pytest.raises(ConfigError):
        Duration(amount, unit)


def test_policy_is_frozen() -> None:
    policy = parse_policy("last=3")
    with pytest.raises(AttributeError):
        policy.last = 4  # type: ignore[misc]


# --- candidates --------------------------------------------------------------------------------


def test_candidate_refuses_naive_time_and_unknown_status() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        Candidate("a", datetime(2026, 1, 1), VERIFIED)
    with pytest.raises(ValueError, match="unknown status"):
        Candidate("a", at("2026-01-01T00"), "ok")


def test_plan_refuses_naive_now() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        plan(verified("2026-01-01T00"), Policy(last=1), datetime(2026, 1, 2), GRACE)


# --- keep rules --------------------------------------------------------------------------------


def test_keep_last() -> None:
    backups = verified(*(f"2026-03-{day:02d}T02" for day in range(1, 11)))
    result = plan(backups, parse_policy("last=3"), at("2026-03-11T00"), GRACE)
    assert ids(result.keep) == ["2026-03-10T02", "2026-03-09T02", "2026-03-08T02"]
    assert ids(result.delete) == [f"2026-03-{day:02d}T02" for day in range(7, 0, -1)]
    assert reasons(result)["2026-03-10T02"] == ["newest verified", "last 3"]
    assert reasons(result)["2026-03-08T02"] == ["last 3"]
    assert reasons(result)["2026-03-07T02"] == ["not kept by policy last=3"]


def test_keep_last_more_than_there_are() -> None:
    backups = verified("2026-03-01T02", "2026-03-02T02")
    result = plan(backups, parse_policy("last=30"), at("2026-03-03T00"), GRACE)
    assert ids(result.keep) == ["2026-03-02T02", "2026-03-01T02"]
    assert result.delete == []


def test_within_is_relative_to_now_and_inclusive() -> None:
    now = at("2026-03-10T12")
    backups = verified("2026-03-10T00", "2026-03-09T00", "2026-03-08T12", "2026-03-08T11")
    result = plan(backups, parse_policy("within=2d"), now, GRACE)
    # 2026-03-08T12 is exactly two days old: still within 2d.
    assert ids(result.keep) == ["2026-03-10T00", "2026-03-09T00", "2026-03-08T12"]
    assert ids(result.delete) == ["2026-03-08T11"]
    assert reasons(result)["2026-03-09T00"] == ["within 2d"]


def test_within_hours_and_weeks() -> None:
    now = at("2026-03-10T12")
    backups = verified("2026-03-09T01", "2026-03-08T23", "2026-03-03T13", "2026-03-03T11")
    hours = plan(backups, parse_policy("within=36h"), now, GRACE)
    assert ids(hours.keep) == ["2026-03-09T01"]
    weeks = plan(backups, parse_policy("within=1w"), now, GRACE)
    assert ids(weeks.keep) == ["2026-03-09T01", "2026-03-08T23", "2026-03-03T13"]
    assert reasons(weeks)["2026-03-03T13"] == ["within 1w"]


def test_daily_weekly_monthly_every_six_hours_for_100_days() -> None:
    """400 backups from 2025-09-25 to 2026-01-02 (a Friday), across months and the ISO year.

    ISO week 2026-W01 runs Monday 2025-12-29 to Sunday 2026-01-04, so the week that holds New
    Year is labelled 2026 while its first days are in December.
    """
    start = at("2025-09-25T00")
    backups = [
        Candidate(
            (start + i * timedelta(hours=6)).strftime("%Y-%m-%dT%H"),
            start + i * timedelta(hours=6),
            VERIFIED,
        )
        for i in range(400)
    ]
    assert backups[-1].id == "2026-01-02T18"
    random.Random(7).shuffle(backups)  # input order must not matter

    result = plan(backups, parse_policy("daily=7,weekly=4,monthly=3"), at("2026-01-03T01"), GRACE)

    daily = [
        "2026-01-02T18",
        "2026-01-01T18",
        "2025-12-31T18",
        "2025-12-30T18",
        "2025-12-29T18",
        "2025-12-28T18",
        "2025-12-27T18",
    ]
    weekly_only = ["2025-12-21T18", "2025-12-14T18"]  # 2025-W51, 2025-W50 (Sundays)
    monthly_only = ["2025-11-30T18"]
    assert ids(result.keep) == daily + weekly_only + monthly_only
    assert len(result.delete) == 400 - 10

    why = reasons(result)
    assert why["2026-01-02T18"] == [
        "newest verified",
        "daily 2026-01-02",
        "weekly 2026-W01",
        "monthly 2026-01",
    ]
    assert why["2025-12-31T18"] == ["daily 2025-12-31", "monthly 2025-12"]
    assert why["2025-12-29T18"] == ["daily 2025-12-29"]  # same ISO week as 2026-01-02
    assert why["2025-12-28T18"] == ["daily 2025-12-28", "weekly 2025-W52"]
    assert why["2025-12-21T18"] == ["weekly 2025-W51"]
    assert why["2025-12-14T18"] == ["weekly 2025-W50"]
    assert why["2025-11-30T18"] == ["monthly 2025-11"]


def test_weekly_and_yearly_across_an_iso_year_boundary() -> None:
    # 2020 has 53 ISO weeks: Fri 2021-01-01 and Sun 2021-01-03 are in 2020-W53.
    backups = verified("2020-12-31T10", "2021-01-01T10", "2021-01-03T10", "2021-01-04T10")
    now = at("2021-01-05T00")

    weekly = plan(backups, parse_policy("weekly=2"), now, GRACE)
    assert ids(weekly.keep) == ["2021-01-04T10", "2021-01-03T10"]
    assert reasons(weekly)["2021-01-03T10"] == ["weekly 2020-W53"]
    assert reasons(weekly)["2021-01-04T10"] == ["newest verified", "weekly 2021-W01"]

    # Yearly buckets are calendar years, not ISO years.
    yearly = plan(backups, parse_policy("yearly=2"), now, GRACE)
    assert ids(yearly.keep) == ["2021-01-04T10", "2020-12-31T10"]
    assert reasons(yearly)["2020-12-31T10"] == ["yearly 2020"]


def test_iso_week_of_late_december_belongs_to_next_year() -> None:
    backups = verified("2024-12-30T10", "2024-12-29T10")
    result = plan(backups, parse_policy("weekly=2"), at("2025-01-01T00"), GRACE)
    assert reasons(result) == {
        "2024-12-30T10": ["newest verified", "weekly 2025-W01"],
        "2024-12-29T10": ["weekly 2024-W52"],
    }


def test_buckets_count_only_periods_that_have_backups() -> None:
    # As restic: daily=3 keeps three days with backups, however far apart.
    backups = verified(
        "2026-02-01T05", "2026-02-01T09", "2026-02-10T05", "2026-02-20T05", "2026-02-20T07"
    )
    result = plan(backups, parse_policy("daily=3"), at("2026-03-01T00"), GRACE)
    assert ids(result.keep) == ["2026-02-20T07", "2026-02-10T05", "2026-02-01T09"]
    assert ids(result.delete) == ["2026-02-20T05", "2026-02-01T05"]


def test_monthly_across_a_year_boundary() -> None:
    backups = verified("2025-11-15T00", "2025-12-01T00", "2025-12-31T23", "2026-01-01T00")
    result = plan(backups, parse_policy("monthly=3"), at("2026-01-02T00"), GRACE)
    assert reasons(result) == {
        "2026-01-01T00": ["newest verified", "monthly 2026-01"],
        "2025-12-31T23": ["monthly 2025-12"],
        "2025-11-15T00": ["monthly 2025-11"],
        "2025-12-01T00": ["not kept by policy monthly=3"],
    }


def test_buckets_are_counted_in_utc() -> None:
    # 01:00 at +02:00 on 1 March is 23:00 UTC on 28 February.
    plus_two = timezone(timedelta(hours=2))
    backups = [Candidate("a", datetime(2026, 3, 1, 1, tzinfo=plus_two), VERIFIED)]
    result = plan(backups, parse_policy("monthly=1"), at("2026-03-02T00"), GRACE)
    assert result.keep[0].reasons == ["newest verified", "monthly 2026-02"]


def test_union_of_rules_lists_every_reason() -> None:
    now = at("2026-05-10T12")
    backups = verified(
        "2026-05-10T06",
        "2026-05-10T00",
        "2026-05-09T18",
        "2026-05-08T06",
        "2026-04-30T06",
        "2026-04-01T06",
    )
    result = plan(backups, parse_policy("within=36h,last=2,monthly=2"), now, GRACE)
    assert reasons(result) == {
        "2026-05-10T06": ["newest verified", "last 2", "within 36h", "monthly 2026-05"],
        "2026-05-10T00": ["last 2", "within 36h"],
        "2026-05-09T18": ["within 36h"],
        "2026-04-30T06": ["monthly 2026-04"],
        "2026-05-08T06": ["not kept by policy last=2,within=36h,monthly=2"],
        "2026-04-01T06": ["not kept by policy last=2,within=36h,monthly=2"],
    }
    assert ids(result.keep) == ["2026-05-10T06", "2026-05-10T00", "2026-05-09T18", "2026-04-30T06"]


# --- the newest verified backup ----------------------------------------------------------------


def test_newest_verified_kept_with_last_1_despite_newer_unfinished_ones() -> None:
    now = at("2026-06-10T12")
    backups = [
        Candidate("failed-new", at("2026-06-10T06"), FAILED),
        Candidate("created-new", at("2026-06-10T05"), CREATED),
        Candidate("running-new", at("2026-06-10T04"), RUNNING),
        Candidate("good", at("2026-06-09T02"), VERIFIED),
        Candidate("good-older", at("2026-06-08T02"), VERIFIED),
    ]
    result = plan(backups, parse_policy("last=1"), now, GRACE)
    assert reasons(result)["good"] == ["newest verified", "last 1"]
    assert ids(result.delete) == ["good-older"]
    # Only verified backups count for `last`: the unfinished ones did not use up the one slot.
    assert "last 1" not in reasons(result)["failed-new"]


def test_newest_verified_kept_even_when_the_policy_keeps_nothing() -> None:
    backups = verified("2026-01-01T00", "2026-01-02T00", "2026-01-03T00")
    result = plan(backups, parse_policy("within=1d"), at("2026-06-01T00"), GRACE)
    assert ids(result.keep) == ["2026-01-03T00"]
    assert result.keep[0].reasons == ["newest verified"]
    assert ids(result.delete) == ["2026-01-02T00", "2026-01-01T00"]


def test_newest_verified_is_the_newest_by_time_not_by_input_order() -> None:
    backups = verified("2026-01-03T00", "2026-01-01T00", "2026-01-02T00")
    result = plan(backups, parse_policy("within=1d"), at("2026-06-01T00"), GRACE)
    assert ids(result.keep) == ["2026-01-03T00"]


def test_no_verified_backup_at_all() -> None:
    backups = [Candidate("f", at("2026-01-01T00"), FAILED)]
    result = plan(backups, parse_policy("last=3"), at("2026-02-01T00"), GRACE)
    assert result.keep == []
    assert ids(result.delete) == ["f"]


def test_empty_input() -> None:
    assert plan([], parse_policy("last=3"), at("2026-02-01T00"), GRACE) == Plan(keep=[], delete=[])


# --- grace period ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (FAILED, "failed, older than grace"),
        (CREATED, "unverified, older than grace"),
        (RUNNING, "stale running, older than grace"),
    ],
)
def test_unfinished_backups_go_only_after_grace(status: str, reason: str) -> None:
    now = at("2026-07-10T12")
    backups = [
        Candidate("old", now - GRACE - timedelta(seconds=1), status),
        Candidate("edge", now - GRACE, status),  # exactly at grace: not older, kept
        Candidate("young", now - timedelta(minutes=5), status),
        Candidate("good", at("2026-07-01T00"), VERIFIED),
    ]
    result = plan(backups, parse_policy("last=1"), now, GRACE)
    assert ids(result.delete) == ["old"]
    assert result.delete[0].reasons == [reason]
    assert ids(result.keep) == ["young", "edge", "good"]
    assert reasons(result)["young"] == ["within grace period"]
    assert reasons(result)["edge"] == ["within grace period"]


def test_unfinished_backups_never_take_a_keep_rule() -> None:
    # A failed backup inside the `within` window is still judged by grace alone.
    now = at("2026-07-10T12")
    backups = [
        Candidate("failed", at("2026-07-08T00"), FAILED),
        Candidate("good", at("2026-07-09T00"), VERIFIED),
    ]
    result = plan(backups, parse_policy("within=30d,last=5"), now, GRACE)
    assert ids(result.delete) == ["failed"]
    assert result.delete[0].reasons == ["failed, older than grace"]


def test_deleted_candidates_are_ignored() -> None:
    now = at("2026-07-10T12")
    backups = [
        Candidate("gone", at("2026-07-10T00"), DELETED),
        Candidate("gone-old", at("2020-01-01T00"), DELETED),
        Candidate("good", at("2026-07-09T00"), VERIFIED),
    ]
    result = plan(backups, parse_policy("last=1"), now, GRACE)
    assert ids(result.keep) == ["good"]
    assert result.keep[0].reasons == ["newest verified", "last 1"]
    assert result.delete == []


def test_output_sorted_newest_first_ties_broken_by_id() -> None:
    now = at("2026-07-10T12")
    same = at("2026-07-10T00")
    backups = [
        Candidate("b", same, VERIFIED),
        Candidate("c", same, FAILED),
        Candidate("a", same, VERIFIED),
        Candidate("z", at("2026-07-01T00"), VERIFIED),
    ]
    result = plan(backups, parse_policy("last=2"), now, GRACE)
    assert ids(result.keep) == ["c", "b", "a"]
    assert reasons(result)["b"] == ["newest verified", "last 2"]
    assert plan(list(reversed(backups)), parse_policy("last=2"), now, GRACE) == result


# --- properties --------------------------------------------------------------------------------

BASE = datetime(2024, 1, 1, tzinfo=UTC)

counts = st.none() | st.integers(min_value=1, max_value=12)
durations = st.none() | st.builds(
    Duration, st.integers(min_value=1, max_value=400), st.sampled_from(["h", "d", "w"])
)


@st.composite
def valid_policies(draw: st.DrawFn) -> Policy:
    values = {
        "last": draw(counts),
        "within": draw(durations),
        "daily": draw(counts),
        "weekly": draw(counts),
        "monthly": draw(counts),
        "yearly": draw(counts),
    }
    if all(v is None for v in values.values()):
        values["last"] = draw(st.integers(min_value=1, max_value=12))
    return Policy(**values)  # type: ignore[arg-type]


@st.composite
def candidate_sets(draw: st.DrawFn) -> list[Candidate]:
    # Hours across two-plus years, so days, weeks, months and years all have several buckets;
    # a narrow range of times is also drawn now and then so equal timestamps occur.
    span = draw(st.sampled_from([6, 24 * 800]))
    offsets = draw(st.lists(st.integers(min_value=0, max_value=span), max_size=60))
    statuses = draw(
        st.lists(st.sampled_from(sorted(STATUSES)), min_size=len(offsets), max_size=len(offsets))
    )
    return [
        Candidate(f"b{i:03d}", BASE + timedelta(hours=h), s)
        for i, (h, s) in enumerate(zip(offsets, statuses, strict=True))
    ]


@settings(max_examples=300, deadline=None)
@given(
    candidates=candidate_sets(),
    policy=valid_policies(),
    now_offset=st.integers(min_value=-48, max_value=24 * 900),
    grace_hours=st.integers(min_value=0, max_value=24 * 30),
    seed=st.integers(),
)
def test_plan_properties(
    candidates: list[Candidate], policy: Policy, now_offset: int, grace_hours: int, seed: int
) -> None:
    now = BASE + timedelta(hours=now_offset)
    grace = timedelta(hours=grace_hours)
    result = plan(candidates, policy, now, grace)

    keep_ids, delete_ids = set(ids(result.keep)), set(ids(result.delete))
    live = {c.id for c in candidates if c.status not in (DELETED, DELETING)}
    assert keep_ids.isdisjoint(delete_ids)
    assert keep_ids | delete_ids == live
    assert len(result.keep) + len(result.delete) == len(live)

    good = [c for c in candidates if c.status == VERIFIED]
    if good:
        newest = max(good, key=lambda c: (c.created_at, c.id))
        assert newest.id in keep_ids
        assert "newest verified" in reasons(result)[newest.id]

    by_id = {c.id: c for c in candidates}
    for d in result.keep + result.delete:
        assert d.reasons, d
        if by_id[d.id].status != VERIFIED and now - d.created_at <= grace:
            assert d.id in keep_ids  # nothing unfinished is deleted inside the grace period

    for decisions in (result.keep, result.delete):
        order = [(d.created_at, d.id) for d in decisions]
        assert order == sorted(order, reverse=True)

    shuffled = list(candidates)
    random.Random(seed).shuffle(shuffled)
    assert plan(shuffled, policy, now, grace) == result


@given(policy=valid_policies())
def test_canonical_str_round_trips_for_any_policy(policy: Policy) -> None:
    assert parse_policy(str(policy)) == policy
