"""What the Celery tasks call above the kinds: the backup lifecycle, locks, leases, redelivery."""
