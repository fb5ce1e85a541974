"""Celery workers of lifeos-backup: `celery -A workers worker` finds `app` here."""

from workers.celery_app import app

__all__ = ["app"]
