"""What the Life-OS app uses: the backup client, feature flags, rollback to JSON, entity restore."""
