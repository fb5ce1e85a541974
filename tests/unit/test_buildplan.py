"""A big table's own post-data in build order: keys, then each index alone, the slowest first."""

from __future__ import annotations

from lifeos_backup.kinds.postgres.buildplan import index_methods, order_builds
from lifeos_backup.kinds.postgres.toc import parse_toc

TOC = """\
;
; Archive created at 2026-12-07 10:00:00 UTC
3301; 2606 16400 CONSTRAINT public documents documents_pkey postgres
;\tdepends on: 220
3302; 1259 16410 INDEX public documents_a_idx postgres
;\tdepends on: 220
3303; 1259 16411 INDEX public documents_body_idx postgres
;\tdepends on: 220
3304; 0 0 COMMENT public INDEX documents_body_idx postgres
;\tdepends on: 3303
3305; 1259 16412 INDEX public documents_z_idx postgres
;\tdepends on: 220
3306; 1259 16413 INDEX public documents_where_idx postgres
;\tdepends on: 220
"""

SCRIPT = """\
--
-- Name: documents_a_idx; Type: INDEX; Schema: public; Owner: postgres
--

CREATE INDEX documents_a_idx ON public.documents USING btree (kind);


--
-- Name: documents_body_idx; Type: INDEX; Schema: public; Owner: postgres
--

CREATE INDEX documents_body_idx ON public.documents USING gin (body jsonb_path_ops);


--
-- Name: INDEX documents_body_idx; Type: COMMENT; Schema: public; Owner: postgres
--

COMMENT ON INDEX public.documents_body_idx IS 'USING brin (x) in a comment';


--
-- Name: documents_z_idx; Type: INDEX; Schema: public; Owner: postgres
--

CREATE INDEX documents_z_idx ON public.documents USING gist (area);


--
-- Name: documents_where_idx; Type: INDEX; Schema: public; Owner: postgres
--

CREATE INDEX documents_where_idx ON public.documents USING brin (created_at) WHERE (kind = 'x');
"""


def test_methods_are_read_from_each_index_definition() -> None:
    assert index_methods(SCRIPT) == {
        ("public", "documents_a_idx"): "btree",
        ("public", "documents_body_idx"): "gin",
        ("public", "documents_z_idx"): "gist",
        ("public", "documents_where_idx"): "brin",
    }


def test_keys_first_then_indexes_slowest_first_each_with_its_comment() -> None:
    entries = parse_toc(TOC)
    builds = order_builds(entries, index_methods(SCRIPT))
    assert [e.tag for e in builds.keys] == ["documents documents_pkey"]
    assert [e.desc for e in builds.indexes[0]] == ["INDEX", "COMMENT"]
    assert [step[0].tag for step in builds.indexes] == [
        "documents_body_idx",  # gin
        "documents_z_idx",  # gist
        "documents_a_idx",  # btree
        "documents_where_idx",  # brin
    ]


def test_an_index_whose_method_is_unknown_is_a_btree_in_archive_order() -> None:
    entries = parse_toc(TOC)
    builds = order_builds(entries, {})
    assert [step[0].tag for step in builds.indexes] == [
        "documents_a_idx", "documents_body_idx", "documents_z_idx", "documents_where_idx"
    ]
