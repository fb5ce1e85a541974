"""lifeos-backup: backup and recovery for Life-OS, run as Celery workers.

Kept import-free on purpose: `lifeos_backup.client` must load with only celery and redis installed.
"""

__version__ = "0.1.0"
