"""JSON backups: the app's JSON files in one tar archive; `backup` writes it, `restore` reads it."""
