"""lifeos-backup: backup and recovery for Life-OS, run as Celery workers.

Kept import-free on purpose: `lifeos_backup.app.client` must load with only celery and redis
installed, and `lifeos-wal` must start fast, so `__version__` is looked up only when asked for.
"""


def __getattr__(name: str) -> str:
    """`lifeos_backup.__version__`: the installed version (lifeos_backup.version)."""
    if name == "__version__":
        from lifeos_backup.version import package_version

        return package_version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
