"""`python -m lifeos_backup.wal push|fetch ...`, for hosts where only a plain python3 can run it."""

from lifeos_backup.wal.cli import main

main()
