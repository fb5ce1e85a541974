"""A stand-in for the Life-OS database: the reference schema, seed rows, table content hashes."""

from __future__ import annotations

from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

SCHEMA = Path(__file__).resolve().parents[2].parent / "shared/lifeos/schema.sql"
TABLES = ("characters", "clothing_items", "outfits", "compositions", "board_games", "favorites")


def load_schema(url: str) -> None:
    """The reference schema of ../shared/lifeos/schema.sql (several statements, one execute)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SCHEMA.read_text())  # type: ignore[arg-type]  # no parameters: simple query


def seed(url: str) -> None:
    """A few rows per table, with what breaks naive exporters: non-ASCII text, NULLs, nested
    JSONB, arrays, microsecond timestamps in several offsets, a large text value."""
    with psycopg.connect(url) as conn:
        conn.execute("SET TIME ZONE 'Europe/Berlin'")  # rows must come out in UTC anyway
        for cid, user, name, description in [
            ("c-1", "u-1", "Zoë Ångström", 'Käpt\'n 🚀 "quoted"\nline two'),
            ("c-2", "u-1", "Bob", None),
            ("c-3", "u-2", "東京 Tarō", "x" * 100_000),
        ]:
            conn.execute(
                "INSERT INTO characters VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    cid,
                    user,
                    name,
                    description,
                    Jsonb({"hair": {"color": "red", "len": 3}, "eyes": ["green", None], "n": 1.5}),
                    ["hero", "ünïcode"] if cid != "c-2" else [],
                    "2025-10-23 07:13:27.123456+02",
                    "2025-10-24 00:00:00-05",
                ),
            )
        conn.execute(
            "INSERT INTO clothing_items VALUES"
            " ('i-1', 'u-1', 'Scarf', 'accessory', NULL, '{\"wool\": true}', NULL, now()),"
            " ('i-2', 'u-2', 'Boots', 'shoes', 'braun', '{}', '/img/b.png', now())"
        )
        conn.execute(
            "INSERT INTO outfits VALUES"
            " ('o-1', 'c-1', 'Winter', '{i-1,i-2}', '{\"season\": \"winter\"}', now()),"
            " ('o-2', 'c-1', 'Summer', '{}', '{}', now()),"
            " ('o-3', 'c-2', 'Work', '{i-2}', '{\"a\": [1, 2, {\"b\": null}]}', now())"
        )
        conn.execute(
            "INSERT INTO compositions VALUES"
            " ('p-1', 'c-1', 'o-1', 'Snow day', 'a prompt', '{\"steps\": 30}', now()),"
            " ('p-2', 'c-1', NULL, 'Portrait', NULL, '{}', now()),"
            " ('p-3', 'c-2', 'o-2', 'Borrowed outfit', NULL, '{}', now()),"
            " ('p-4', NULL, NULL, 'Landscape', NULL, '{}', now())"
        )
        conn.execute(
            "INSERT INTO board_games VALUES"
            " ('g-1', 'Catan', 'Kosmos', 3, 4, 13, '{\"tags\": [\"trade\"]}'),"
            " ('g-2', 'Solo Quest', NULL, 1, NULL, NULL, '{}')"
        )
        conn.execute(
            "INSERT INTO favorites (user_id, entity_type, entity_id, created_at) VALUES"
            " ('u-1', 'character', 'c-1', '2025-01-01 10:00+00'),"
            " ('u-1', 'board_game', 'g-1', '2025-01-02 10:00+00'),"
            " ('u-2', 'outfit', 'o-3', '2025-01-03 10:00+00')"
        )


def table_hash(conn: psycopg.Connection[tuple[object, ...]], table: str) -> str:
    """md5 of every row's text form, in a fixed order: equal hashes mean equal content."""
    row = conn.execute(
        sql.SQL(
            "SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) FROM {} t"
        ).format(sql.Identifier(table))
    ).fetchone()
    assert row is not None
    return str(row[0])


def table_hashes(url: str) -> dict[str, str]:
    with psycopg.connect(url) as conn:
        return {table: table_hash(conn, table) for table in TABLES}
