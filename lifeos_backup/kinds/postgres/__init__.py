"""PostgreSQL full backups: pg_dump custom format and COPY slices through zstd, verified,
restorable.

One module per job: `conninfo` (where the database is, password kept apart), `connect` (log in,
classify failures), `tools` (pg_dump/pg_restore and their versions), `snapshot` (facts taken in the
dump's own snapshot), `rows` (big tables as COPY slices), `parts` (the archive's parts), `tochead`
(part 0's header and table of contents), `dump` (write the archive), `toc` (read a dump's table of
contents), `objects` (its schema objects by type and name, for `diff`), `check` (verify an
archive), `tableplan` (what a table restore brings), `present` (what the restore target already
has), `restore` (put it back), `kind` (the glue to the shared backup lifecycle).
docs/postgres.md explains the whole, docs/decisions.md why the format.
"""
