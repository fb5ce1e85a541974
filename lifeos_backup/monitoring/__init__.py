"""Proving and watching the backups: restore drills, self-test, health, alerts, status, metrics.

One module per job, each a set of plain functions the thin Celery tasks (tasks/monitor.py) and the
CLI (lifeos_backup/cli/monitoring.py) call: `records` (drill rows in the catalog), `drill`,
`selftest`, `health` (conditions from the catalog and the disk), `alerts` (apprise, state in
Redis), `checkup` (the hourly task's work: health, self-healing, alerts), `status`, `metrics`.
docs/monitoring.md explains the whole.
"""
