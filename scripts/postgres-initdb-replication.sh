#!/bin/sh
# Run once by the postgres image's entrypoint at first initdb (docker-entrypoint-initdb.d).
# pg_hba.conf's "all" does not cover replication connections, which pg_basebackup (the worker's
# base backups for point-in-time recovery, docs/pitr.md) needs; allow them with a password.
set -eu
echo "host replication all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
