"""The backup kinds: what differs between a JSON, a PostgreSQL and a base backup.

`base` (what a kind is), `registry` (the kinds by name), one package per kind: `json`,
`postgres`, `basebackup` (point-in-time recovery with the WAL archive of lifeos_backup.wal).
"""
