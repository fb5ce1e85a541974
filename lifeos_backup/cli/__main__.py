"""`python -m lifeos_backup.cli ...`: the `lifeos-backup` command, as `up` starts its children."""

from lifeos_backup.cli import main

main()
