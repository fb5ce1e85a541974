"""Celery task definitions: thin wrappers that call lifeos_backup functions."""
