"""WAL archiving hot path: `lifeos-wal push` (archive_command) and `fetch` (restore_command).

PostgreSQL runs these once per 16 MB segment, as its own OS user, and waits for them. So this
package imports only the standard library (and `zstandard` when it is installed, else it runs the
`zstd` command): no settings object, no catalog, no Redis. Sealing segments for age recipients
(`sealing.py`) adds `cryptography`, imported only when encryption is used. Everything heavier
about point-in-time recovery (base backups, restore, retention, health) lives in
`lifeos_backup.kinds.basebackup`.
"""
