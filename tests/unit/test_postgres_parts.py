"""The PostgreSQL kind's pure parts: conninfo and secrets, errors, TOC selection, schedule."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from celery.schedules import crontab
from psycopg.conninfo import conninfo_to_dict

from beat_schedule import build_schedule
from lifeos_backup.core.errors import ConfigError, NotFound, SourceUnavailable
from lifeos_backup.core.settings import Settings
from lifeos_backup.kinds.postgres.connect import AuthenticationFailed, classify_connect_error
from lifeos_backup.kinds.postgres.conninfo import PgTarget
from lifeos_backup.kinds.postgres.dump import dump_args
from lifeos_backup.kinds.postgres.tableplan import UnmetDependency, plan_tables
from lifeos_backup.kinds.postgres.toc import (
    TocEntry,
    missing_tables,
    own_post_data,
    parse_toc,
    use_list,
)
from lifeos_backup.kinds.postgres.tools import (
    Tool,
    ToolTooOld,
    parse_version,
    require_dump_not_older,
)

SECRET = "s3cr3t-Pa55"
URL = f"postgresql://lifeos:{SECRET}@db.example:5433/lifeos?sslmode=require"

# `pg_restore --list --verbose` of a small Life-OS-like dump (PostgreSQL 15).
TOC = """\
;
; Archive created at 2026-11-28 06:53:42 UTC
;     dbname: exp
;
; Selected TOC Entries:
;
3363; 0 0 ENCODING - ENCODING
3364; 0 0 STDSTRINGS - STDSTRINGS
3365; 0 0 SEARCHPATH - SEARCHPATH
3366; 1262 16384 DATABASE - exp postgres
215; 1259 16386 TABLE public characters postgres
3367; 0 0 COMMENT public TABLE characters postgres
;\tdepends on: 215
214; 1259 16385 SEQUENCE public characters_id_seq postgres
;\tdepends on: 215
3368; 0 0 SEQUENCE OWNED BY public characters_id_seq postgres
;\tdepends on: 214
217; 1259 16397 TABLE public outfits postgres
216; 1259 16396 SEQUENCE public outfits_id_seq postgres
;\tdepends on: 217
218; 1259 16409 VIEW public v postgres
;\tdepends on: 215 217 215 217
3206; 2604 16389 DEFAULT public characters id postgres
;\tdepends on: 215 214 215
3358; 0 16386 TABLE DATA public characters postgres
;\tdepends on: 215
3360; 0 16397 TABLE DATA public outfits postgres
;\tdepends on: 217
3369; 0 0 SEQUENCE SET public characters_id_seq postgres
;\tdepends on: 214
3370; 0 0 SEQUENCE SET public outfits_id_seq postgres
;\tdepends on: 216
3210; 2606 16394 CONSTRAINT public characters characters_pkey postgres
;\tdepends on: 215
3212; 2606 16403 CONSTRAINT public outfits outfits_pkey postgres
;\tdepends on: 217
3208; 1259 16395 INDEX public characters_name_idx postgres
;\tdepends on: 215
3213; 2606 16404 FK CONSTRAINT public outfits outfits_character_id_fkey postgres
;\tdepends on: 3210 217 215
"""


def test_password_is_split_off_the_url() -> None:
    target = PgTarget.parse(URL)
    assert SECRET not in target.conninfo() and SECRET not in target.describe()
    assert "sslmode=require" in target.conninfo() and "dbname=lifeos" in target.conninfo()
    assert target.env() == {"PGPASSWORD": SECRET}
    assert target.connect_kwargs() == {"password": SECRET}
    assert target.describe() == "lifeos@db.example:5433/lifeos"
    assert target.redact(f"failed for {SECRET}") == "failed for ***"
    assert SECRET not in repr(target)


def test_dump_arguments_never_carry_the_password() -> None:
    target = PgTarget.parse(URL)
    args = dump_args(Tool("/usr/bin/pg_dump", "15.2", 15), target, "00000003-0000001B-1")
    assert not any(SECRET in arg for arg in args)
    assert "--snapshot=00000003-0000001B-1" in args and "--compress=0" in args
    assert "--format=custom" in args and "--no-password" in args


def test_another_database_keeps_the_login_or_takes_a_whole_url() -> None:
    target = PgTarget.parse(URL)
    scratch = target.with_database("scratch")
    assert scratch.params["dbname"] == "scratch" and scratch.env() == {"PGPASSWORD": SECRET}
    other = target.with_database("postgresql://other@elsewhere/restored")
    assert other.params["host"] == "elsewhere" and other.env() == {}


def test_unparsable_url_does_not_echo_it() -> None:
    with pytest.raises(ConfigError) as caught:
        PgTarget.parse(f"host=db password={SECRET} bogus_option=1")
    assert SECRET not in str(caught.value)


def test_sslpassword_is_refused() -> None:
    with pytest.raises(ConfigError, match="sslpassword"):
        PgTarget.parse(f"postgresql://u@h/db?sslpassword={SECRET}")


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        (
            'connection to server at "h", port 5432 failed: FATAL:  password authentication '
            'failed for user "lifeos"',
            AuthenticationFailed,
        ),
        ("fe_sendauth: no password supplied", AuthenticationFailed),
        ('FATAL:  role "nobody" does not exist', AuthenticationFailed),
        ('FATAL:  no pg_hba.conf entry for host "10.0.0.1"', AuthenticationFailed),
        ('FATAL:  database "gone" does not exist', NotFound),
        (
            'connection to server at "h", port 1 failed: Connection refused\n\tIs the server '
            "running on that host and accepting TCP/IP connections?",
            SourceUnavailable,
        ),
        ("FATAL:  the database system is starting up", SourceUnavailable),
        ("timeout expired", SourceUnavailable),
    ],
)
def test_connection_failures_are_classified(message: str, kind: type) -> None:
    error = classify_connect_error(message, PgTarget.parse(URL))
    assert type(error) is kind
    assert "\n" not in str(error) and SECRET not in str(error)


def test_versions_are_parsed_and_an_old_pg_dump_refused() -> None:
    assert parse_version("pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)") == ("15.20", 15)
    assert parse_version("pg_restore (PostgreSQL) 17beta1") == ("17", 17)
    require_dump_not_older(Tool("pg_dump", "16.1", 16), "15.4", 150004)
    too_old = r"pg_dump 14\.9 is older than the PostgreSQL server 15\.4"
    with pytest.raises(ToolTooOld, match=too_old):
        require_dump_not_older(Tool("pg_dump", "14.9", 14), "15.4", 150004)


def test_toc_lists_tables_with_their_data() -> None:
    entries = parse_toc(TOC)
    assert [e.desc for e in entries[:5]] == [
        "ENCODING",
        "STDSTRINGS",
        "SEARCHPATH",
        "DATABASE",
        "TABLE",
    ]
    assert entries[-1].desc == "FK CONSTRAINT" and entries[-1].deps == (3210, 217, 215)
    assert missing_tables(entries, [("public", "characters"), ("public", "outfits")]) == []
    assert missing_tables(entries, [("public", "ghosts"), ("other", "characters")]) == [
        "public.ghosts",
        "other.characters",
    ]


def nothing_there(_entry: TocEntry) -> bool:
    return False


def test_single_table_selection_takes_keys_indexes_and_owned_sequences_only() -> None:
    plan = plan_tables(parse_toc(TOC), [("public", "characters")], nothing_there)
    chosen = plan.entries
    assert [e.dump_id for e in chosen] == [
        3363, 3364, 3365,  # session set-up
        215, 3367, 214, 3368, 3206, 3358, 3369, 3210, 3208,
    ]  # fmt: skip
    # outfits' foreign key and the view need other tables: left out.
    assert use_list(chosen).splitlines()[3] == "215; 1259 16386 TABLE public characters postgres"
    assert plan.kept == [] and plan.left_out == []  # outfits' key is outfits', not restored
    both = plan_tables(
        parse_toc(TOC), [("public", "characters"), ("public", "outfits")], nothing_there
    ).entries
    assert 3213 in {e.dump_id for e in both} and 218 not in {e.dump_id for e in both}
    plan = plan_tables(parse_toc(TOC), [("public", "outfits")], nothing_there)
    assert plan.left_out == [
        "left out foreign key outfits_character_id_fkey of public.outfits: it references "
        "public.characters, not restored"
    ]


# What a table needs, as PostgreSQL 15's pg_dump records it (`pg_restore --list --verbose`):
# an extension, an enum (with a comment), a domain whose CHECK calls a function, a standalone
# sequence and a function in defaults, a CHECK calling a function, a trigger function, a table in
# schema app with a foreign key to users, another table's sequence in a default, a partition.
NEEDS = """3480; 0 0 ENCODING - ENCODING
3482; 0 0 SEARCHPATH - SEARCHPATH
7; 2615 16645 SCHEMA - app postgres
2; 3079 16515 EXTENSION - citext
3484; 0 0 COMMENT - EXTENSION citext
;\tdepends on: 2
913; 1247 16647 TYPE app kind postgres
;\tdepends on: 7
896; 1247 16621 TYPE public mood postgres
3517; 0 0 COMMENT public TYPE mood postgres
;\tdepends on: 896
267; 1255 16638 FUNCTION public is_slug(text) postgres
909; 1247 16640 DOMAIN public slug postgres
;\tdepends on: 267
270; 1255 16677 FUNCTION app touch() postgres
;\tdepends on: 7
269; 1255 16644 FUNCTION public next_code() postgres
268; 1255 16642 FUNCTION public positive(integer) postgres
221; 1259 16663 TABLE app events postgres
;\tdepends on: 269 913 7
220; 1259 16662 SEQUENCE app events_id_seq postgres
;\tdepends on: 221 7
3485; 0 0 SEQUENCE OWNED BY app events_id_seq postgres
;\tdepends on: 220
217; 1259 16643 SEQUENCE public ticket_seq postgres
219; 1259 16652 TABLE public users postgres
;\tdepends on: 217 268 2 2 909 896
218; 1259 16651 SEQUENCE public users_id_seq postgres
;\tdepends on: 219
225; 1259 16698 TABLE public parent postgres
226; 1259 16701 TABLE public part1 postgres
;\tdepends on: 225
227; 1259 16704 TABLE public shares postgres
;\tdepends on: 218
3322; 2604 16666 DEFAULT app events id postgres
;\tdepends on: 221 220 221
3477; 0 16663 TABLE DATA app events postgres
;\tdepends on: 221
3475; 0 16652 TABLE DATA public users postgres
;\tdepends on: 219
3486; 0 0 SEQUENCE SET app events_id_seq postgres
;\tdepends on: 220
3487; 0 0 SEQUENCE SET public ticket_seq postgres
;\tdepends on: 217
3488; 0 0 SEQUENCE SET public users_id_seq postgres
;\tdepends on: 218
3328; 2606 16671 CONSTRAINT app events events_pkey postgres
;\tdepends on: 221
3326; 2606 16661 CONSTRAINT public users users_pkey postgres
;\tdepends on: 219
3330; 2620 16678 TRIGGER app events events_touch postgres
;\tdepends on: 270 221
3329; 2606 16672 FK CONSTRAINT app events events_user_id_fkey postgres
;\tdepends on: 221 3326 219
"""


def ids(entries: list[TocEntry]) -> list[int]:
    return [e.dump_id for e in entries if e.desc not in ("ENCODING", "SEARCHPATH")]


def test_a_table_brings_what_it_needs_and_the_values_of_its_sequences() -> None:
    plan = plan_tables(parse_toc(NEEDS), [("public", "users")], nothing_there)
    assert ids(plan.entries) == [
        2, 3484,  # the extension of its citext column, with the extension's comment
        896, 3517,  # its enum, with the enum's comment
        267, 909,  # the domain and the function its CHECK calls
        268,  # the function of its CHECK constraint
        217, 219, 218, 3475, 3487, 3488, 3326,  # standalone sequence, table, identity, values
    ]  # fmt: skip
    assert plan.kept == [] and plan.left_out == []


def test_what_the_target_has_is_kept_with_what_only_it_needed() -> None:
    has = {"mood", "ticket_seq", "slug", "citext"}
    plan = plan_tables(parse_toc(NEEDS), [("public", "users")], lambda e: e.tag in has)
    # Kept: not restored, nor their comments, values or the function only the domain needed.
    assert ids(plan.entries) == [268, 219, 218, 3475, 3488, 3326]
    assert [e.label for e in plan.kept] == [
        "extension citext",
        "type public.mood",
        "domain public.slug",
        "sequence public.ticket_seq",
    ]


def test_a_table_in_another_schema_brings_its_schema_trigger_function_and_leaves_its_fk_out() -> (
    None
):
    plan = plan_tables(parse_toc(NEEDS), [("app", "events")], nothing_there)
    assert ids(plan.entries) == [
        7, 913, 270, 269, 221, 220, 3485, 3322, 3477, 3486, 3328, 3330,
    ]  # fmt: skip
    assert plan.left_out == [
        "left out foreign key events_user_id_fkey of app.events: it references public.users, "
        "not restored"
    ]
    # The schema is there: its type and functions may still be missing.
    plan = plan_tables(parse_toc(NEEDS), [("app", "events")], lambda e: e.desc == "SCHEMA")
    assert 7 not in ids(plan.entries) and {913, 270} <= set(ids(plan.entries))
    both = plan_tables(parse_toc(NEEDS), [("app", "events"), ("public", "users")], nothing_there)
    assert 3329 in ids(both.entries) and both.left_out == []


def test_a_table_needing_what_belongs_to_another_table_is_refused_a_partition_is_not() -> None:
    with pytest.raises(UnmetDependency) as caught:
        plan_tables(parse_toc(NEEDS), [("public", "shares")], nothing_there)
    assert caught.value.what == (
        "table public.shares needs sequence public.users_id_seq, which needs table public.users"
    )
    plan = plan_tables(  # the target has the sequence: kept
        parse_toc(NEEDS), [("public", "shares")], lambda e: e.tag == "users_id_seq"
    )
    assert ids(plan.entries) == [227] and [e.label for e in plan.kept] == [
        "sequence public.users_id_seq"
    ]
    plan = plan_tables(parse_toc(NEEDS), [("public", "part1")], nothing_there)
    assert ids(plan.entries) == [226] and plan.left_out == [
        "table public.part1 depends on table public.parent, which is neither restored nor in "
        "the target: restored without it"
    ]


def test_entry_names_come_apart_from_schema_and_owner() -> None:
    [fn, ext, fk] = parse_toc(
        "1; 1255 1 FUNCTION public f(integer, public.mood) postgres\n"
        "2; 3079 2 EXTENSION - citext \n"
        "3; 2606 3 FK CONSTRAINT app events events_user_id_fkey postgres\n"
    )
    assert (fn.schema, fn.tag, fn.label) == (
        "public",
        "f(integer, public.mood)",
        "function public.f(integer, public.mood)",
    )
    assert (ext.schema, ext.tag, ext.label) == ("-", "citext", "extension citext")
    assert fk.tag == "events events_user_id_fkey"


def test_a_tables_own_indexes_and_keys_are_those_needing_only_its_rows() -> None:
    extra = """\
230; 1255 16420 FUNCTION public f(integer) postgres
3214; 1259 16410 INDEX public outfits_expr_idx postgres
;\tdepends on: 217 230
3215; 1259 16411 INDEX public outfits_odd_idx postgres
;\tdepends on: 217 999
3216; 2606 16412 CONSTRAINT public outfits outfits_excl postgres
;\tdepends on: 217 3210
3217; 0 0 COMMENT public INDEX outfits_expr_idx postgres
;\tdepends on: 3214
3218; 0 0 COMMENT public INDEX outfits_odd_idx postgres
;\tdepends on: 3215
"""
    entries = parse_toc(TOC + extra)
    assert [e.dump_id for e in own_post_data(entries, "public", "characters")] == [3210, 3208]
    # A function is a definition (restored first); an unknown entry, another table's key, the
    # foreign key: they wait for the end.
    # A comment on an index comes with it (pg_restore gives it the section of the entry before).
    assert [e.dump_id for e in own_post_data(entries, "public", "outfits")] == [3212, 3214, 3217]
    assert own_post_data(entries, "public", "ghosts") == []


def test_postgres_is_scheduled_only_with_a_database(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PGHOST", "PGHOSTADDR", "PGDATABASE", "PGSERVICE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("LIFEOS_DATABASE_URL", raising=False)
    assert "postgres-backup" not in build_schedule(Settings(database_url=None))
    job = build_schedule(Settings(database_url=URL))["postgres-backup"]
    assert job["task"] == "lifeos.backup.start" and job["args"] == ("postgres",)
    assert job["schedule"] == crontab(minute="0", hour="3")
    monkeypatch.setenv("PGDATABASE", "lifeos")
    assert "postgres-backup" in build_schedule(Settings(database_url=None))


def test_postgres_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LIFEOS_RETENTION_POSTGRES", "LIFEOS_RESTORE_JOBS", "LIFEOS_PG_BIN_DIR"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.retention_postgres == "within=30d" and settings.restore_jobs == 2
    assert settings.pg_bin_dir is None and settings.postgres_compression_level == 1


def test_big_tables_are_cut_into_slices_of_about_equal_pages_biggest_first() -> None:
    from lifeos_backup.kinds.postgres.rows import FLOOR, SLICE_MIN, Candidate, plan_slices

    mib = 1 << 20
    tables = [
        Candidate("public", "big", 1000 * mib, 1000, ["a", "b"]),
        Candidate("public", "mid", 100 * mib, 50, ["a"]),
        Candidate("public", "small", FLOOR - 1, 9, ["a"]),
    ]
    slices = plan_slices(tables, 2, 150000)
    # About 1/(4 * 2) of the 1100 MiB to slice: `big` in 8 slices of 125 pages, `mid` whole.
    bounds = [(s.first_page, s.end_page) for s in slices if s.name == "big"]
    assert bounds == [(i * 125, (i + 1) * 125 if i < 7 else None) for i in range(8)]
    assert [s.name for s in slices] == ["big"] * 8 + ["mid"]
    assert slices[0].columns == ["a", "b"]
    # One job: slices of 1100 MiB / 4; PostgreSQL 13 (no TID range scans): one slice per table.
    assert len(plan_slices(tables, 1, 150000)) == 4 + 1
    assert [(s.name, s.end_page) for s in plan_slices(tables, 2, 130000)] == [
        ("big", None),
        ("mid", None),
    ]
    # Never more slices than pages, never smaller than SLICE_MIN.
    tiny = Candidate("public", "wide", 4 * SLICE_MIN, 2, ["a"])
    assert [(s.first_page, s.end_page) for s in plan_slices([tiny], 8, 150000)] == [
        (0, 1),
        (1, None),
    ]
    assert len(plan_slices([Candidate("s", "t", SLICE_MIN, 10_000, ["a"])], 8, 150000)) == 1
    assert plan_slices([], 2, 150000) == []


def test_a_slice_copies_exactly_its_pages_and_columns_whatever_the_names() -> None:
    from lifeos_backup.kinds.postgres.rows import Slice, dump_args, reported_rows

    odd = Slice("My.Schema", 'we"ird*?', ["id", "Naïve col"], 0, 10)
    assert odd.copy_out() == (
        '\\copy (SELECT "id", "Naïve col" FROM ONLY "My.Schema"."we""ird*?"'
        " WHERE ctid < '(10,0)') TO '/dev/stdout' (FORMAT text)"
    )
    middle = Slice("public", "t", ["a"], 10, 20, format="binary")
    assert "WHERE ctid >= '(10,0)' AND ctid < '(20,0)'" in middle.copy_out()
    assert middle.copy_out().startswith('\\copy (SELECT "a" FROM ONLY "public"."t"')
    assert middle.copy_out().endswith("(FORMAT binary)")
    last = Slice("public", "t", ["a"], 20, None)
    assert last.copy_out().endswith("WHERE ctid >= '(20,0)') TO '/dev/stdout' (FORMAT text)")
    assert Slice("public", "t", ["a"], 0, None).copy_out() == (
        '\\copy (SELECT "a" FROM ONLY "public"."t") TO \'/dev/stdout\' (FORMAT text)'
    )
    assert odd.copy_in().as_string(None) == (
        'COPY "My.Schema"."we""ird*?" ("id", "Naïve col") FROM STDIN (FORMAT text)'
    )
    assert middle.copy_in().as_string(None).endswith("FROM STDIN (FORMAT binary)")
    args = dump_args("psql", "host=h dbname=d", "0000-1", "UTF8", middle)
    assert "SET TRANSACTION SNAPSHOT '0000-1'" in args and args[-1] == "COMMIT"
    assert "--dbname=host=h dbname=d" in args and "--no-password" in args
    assert args[args.index(middle.copy_out()) + 2] == "\\warn lifeos-rows :ROW_COUNT"
    assert reported_rows("lifeos-rows 12\n") == 12 and reported_rows("oops\n") is None


def test_char_columns_of_a_binary_slice_are_dumped_without_their_padding() -> None:
    """char(n) is padded to n on input, so a slice need not carry the blanks; a text slice would
    print the bytea, and PostgreSQL 13 has no rtrim(bytea, bytea): both keep the column."""
    from lifeos_backup.kinds.postgres.parts import Part
    from lifeos_backup.kinds.postgres.rows import Candidate, Slice, plan_slices

    table = Candidate("public", "t", 64 << 20, 100, ["id", "Code ", "note"], True, ["Code "])
    (piece,) = plan_slices([table], 1, 150000)
    assert piece.trimmed == ["Code "]
    assert piece.copy_out().startswith(
        '\\copy (SELECT "id", pg_catalog.rtrim(pg_catalog.bpcharsend("Code "),'
        " ' '::pg_catalog.bytea), \"note\" FROM ONLY"
    )
    assert piece.copy_in().as_string(None) == (
        'COPY "public"."t" ("id", "Code ", "note") FROM STDIN (FORMAT binary)'
    )
    fact = Part(0, 1, 1, ["public.t"], piece).as_fact()["copy"]
    assert fact["trimmed"] == ["Code "] and Slice(**fact) == piece
    older = {k: v for k, v in fact.items() if k != "trimmed"}  # an archive from before
    assert Slice(**older).trimmed == []

    text = Candidate("public", "t", 64 << 20, 100, ["id", "Code "], False, ["Code "])
    old = plan_slices([table], 1, 130000) + plan_slices([text], 1, 150000)
    assert [p.trimmed for p in old] == [[], []]
    assert all('"Code "' in p.copy_out() and "rtrim" not in p.copy_out() for p in old)


def test_part_patterns_match_exactly_one_table_whatever_its_name() -> None:
    from lifeos_backup.kinds.postgres.dump import part_args

    first = part_args(["pg_dump"], {("My.Schema", 'we"ird*?'), ("public", "characters")})
    assert first == [
        "pg_dump",
        '--exclude-table-data="My.Schema"."we""ird*?"',
        '--exclude-table-data="public"."characters"',
    ]
    assert part_args(["pg_dump"], set()) == ["pg_dump"]


def test_parts_round_trip_through_the_manifest_facts() -> None:
    from lifeos_backup.formats.manifest import Manifest
    from lifeos_backup.kinds.postgres.parts import Part, parts_of
    from lifeos_backup.kinds.postgres.rows import Slice

    piece = Slice("public", "t", ["a", "b"], 0, 7, rows=42, format="binary")
    parts = [Part(0, 10, 100, ["public.small"]), Part(10, 5, 50, ["public.t"], piece)]
    facts = [p.as_fact() for p in parts]
    assert "copy" not in facts[0] and facts[1]["copy"]["rows"] == 42
    manifest = Manifest.model_construct(facts={"parts": facts})
    assert parts_of(manifest) == parts
    # Slices written before binary ones have no format: they are COPY text.
    del facts[1]["copy"]["format"]
    [_, old] = parts_of(Manifest.model_construct(facts={"parts": facts}))
    assert old.copy is not None and old.copy.format == "text"
    assert old.copy.copy_in().as_string(None).endswith("FROM STDIN (FORMAT text)")


def test_a_window_never_reads_past_its_part() -> None:
    from lifeos_backup.kinds.postgres.parts import Window

    src = io.BytesIO(b"0123456789")
    src.seek(2)
    window = Window(src, 5)  # type: ignore[arg-type]
    assert window.read(3) == b"234" and window.read(100) == b"56" and window.read(1) == b""
    assert src.read() == b"789"
    whole = Window(io.BytesIO(b"abc"), -1)  # type: ignore[arg-type]
    assert whole.read() == b"abc"


def test_only_this_hosts_dead_restore_workspaces_are_removed(tmp_path) -> None:
    import os
    import socket

    from lifeos_backup.kinds.postgres.restore import remove_abandoned

    host = socket.gethostname()
    names = [f"b@{host}-999999999", f"b@{host}-{os.getpid()}", "b@elsewhere-999999999"]
    for name in names:
        (tmp_path / name).mkdir()
    remove_abandoned(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[1:])


def test_a_backup_without_a_configured_database_fails_clearly(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    from lifeos_backup.kinds.postgres.dump import dump_database

    for name in ("PGHOST", "PGHOSTADDR", "PGDATABASE", "PGSERVICE", "LIFEOS_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="no PostgreSQL database is configured"):
        dump_database(Settings(database_url=None), tmp_path / "x.dump.zst", lambda _: None)
    assert list(tmp_path.iterdir()) == []


def test_slices_load_after_the_pg_dump_parts_biggest_table_first() -> None:
    """The biggest table's load and then its index build are the restore's longest chain."""
    from lifeos_backup.kinds.postgres.parts import Part
    from lifeos_backup.kinds.postgres.restore import load_order
    from lifeos_backup.kinds.postgres.rows import Slice

    def piece(name: str, first: int, dump_bytes: int) -> Part:
        return Part(0, 1, dump_bytes, [f"public.{name}"], Slice("public", name, ["a"], first, None))

    parts = [
        Part(0, 1, 10, ["public.small"]),
        piece("mid", 0, 300), piece("mid", 5, 300),  # 600 bytes in all
        piece("big", 0, 200), piece("big", 5, 200), piece("big", 9, 250),  # 650
        Part(0, 1, 10, ["public.other"]),  # a pg_dump part of an archive before slices
        piece("tiny", 0, -1),  # no plain size recorded: its compressed size (1) stands in
    ]  # fmt: skip
    assert load_order(parts) == [0, 6, 3, 4, 5, 1, 2, 7]


def test_an_index_build_beside_other_jobs_asks_the_server_for_one_process() -> None:
    from lifeos_backup.kinds.postgres.restore import ONE_PROCESS, restore_args

    tool = Tool("/usr/bin/pg_restore", "15.20", 15)
    target = PgTarget.parse(URL)
    assert "options" not in restore_args(tool, target)[-1]
    [*_, dbname] = restore_args(tool, target, one_process=True)
    assert dbname.startswith("--dbname=") and SECRET not in dbname
    assert conninfo_to_dict(dbname.removeprefix("--dbname="))["options"] == ONE_PROCESS
    own = target.with_params(options="-c work_mem=64MB")  # the operator's own options stay
    [*_, dbname] = restore_args(tool, own, one_process=True)
    assert conninfo_to_dict(dbname.removeprefix("--dbname="))["options"] == (
        f"-c work_mem=64MB {ONE_PROCESS}"
    )


def test_a_program_is_asked_its_version_once_a_wrapper_every_time(tmp_path: Path) -> None:
    from lifeos_backup.kinds.postgres import tools

    asked = tmp_path / "asked"
    script = "#!/bin/sh\necho x >> {asked}\necho 'pg_dump (PostgreSQL) {version}'\n"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    program = bindir / "pg_dump"
    program.write_text(script.format(asked=asked, version="15.2"))
    program.chmod(0o755)
    settings = Settings(pg_bin_dir=bindir, _env_file=None)  # type: ignore[call-arg]

    assert tools.tool(settings, "pg_dump").version == "15.2"
    assert tools.tool(settings, "pg_dump").version == "15.2"
    assert asked.read_text().count("x") == 1  # asked once per process

    replaced = bindir / "pg_dump.new"  # a package upgrade: a new file under the name
    replaced.write_text(script.format(asked=asked, version="16.1"))
    replaced.chmod(0o755)
    replaced.rename(program)
    assert tools.tool(settings, "pg_dump").version == "16.1"
    assert asked.read_text().count("x") == 2

    wrapped = tmp_path / "wrapped"  # pg_dump -> pg_wrapper: it may pick another version later
    wrapped.mkdir()
    wrapper = tmp_path / "pg_wrapper"
    wrapper.write_text(script.format(asked=asked, version="15.2"))
    wrapper.chmod(0o755)
    (wrapped / "pg_dump").symlink_to(wrapper)
    settings = Settings(pg_bin_dir=wrapped, _env_file=None)  # type: ignore[call-arg]
    tools.tool(settings, "pg_dump")
    tools.tool(settings, "pg_dump")
    assert asked.read_text().count("x") == 4
