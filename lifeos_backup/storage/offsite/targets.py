"""The configured off-site targets, and a store for each (its provider's SDK loaded only then).

`configured(settings)` is every target: LIFEOS_S3_* as `s3` first, then LIFEOS_OFFSITE_TARGETS
(lifeos_backup.core.targets parses them). `connect(target, settings)` imports the one provider
module the target needs, so a machine with S3 targets alone never loads the GCS or Azure SDK.
"""

from __future__ import annotations

from lifeos_backup.core.errors import ConfigError
from lifeos_backup.core.settings import Settings
from lifeos_backup.core.targets import LEGACY_NAME, Target, bad, legacy, parse_targets
from lifeos_backup.storage.offsite.store import ObjectStore


def legacy_target(settings: Settings) -> Target | None:
    """LIFEOS_S3_* as the target `s3` (credentials from the AWS chain), or None."""
    if not settings.s3_bucket:
        return None
    return legacy(
        settings.s3_bucket, settings.s3_prefix, settings.s3_endpoint_url, settings.s3_region
    )


def configured(settings: Settings) -> list[Target]:
    """Every target, LIFEOS_S3_*'s first; [] when off-site copies are off."""
    listed = parse_targets(settings.offsite_targets or "")
    legacy = legacy_target(settings)
    if legacy is None:
        return listed
    if any(t.name == LEGACY_NAME for t in listed):
        raise bad(
            f"a target is named {LEGACY_NAME!r} and LIFEOS_S3_BUCKET is set",
            f"LIFEOS_S3_* is the target {LEGACY_NAME!r}; rename the other",
        )
    return [legacy, *listed]


def require_targets(settings: Settings) -> list[Target]:
    """The targets, or a clear error for commands that need off-site storage."""
    targets = configured(settings)
    if not targets:
        raise ConfigError(
            "off-site storage is not configured",
            "neither LIFEOS_S3_BUCKET nor LIFEOS_OFFSITE_TARGETS is set",
            "set LIFEOS_S3_BUCKET (and LIFEOS_S3_ENDPOINT_URL for MinIO or another S3 service), "
            "or LIFEOS_OFFSITE_TARGETS",
        )
    return targets


def named(settings: Settings, name: str) -> Target:
    """The configured target called `name`; ConfigError naming the others."""
    targets = configured(settings)
    for target in targets:
        if target.name == name:
            return target
    raise ConfigError(
        f"no off-site target named {name!r}",
        "configured: " + (", ".join(t.name for t in targets) or "none"),
        "use one of them, or `offsite` for the first healthy target holding the backup",
    )


def bandwidth(target: Target, settings: Settings) -> float | None:
    """The target's upload limit in MB/s: its own, else LIFEOS_S3_BANDWIDTH_LIMIT."""
    return target.bandwidth_limit or settings.s3_bandwidth_limit


def retention(target: Target, settings: Settings) -> str:
    """The target's remote retention policy: its own, else LIFEOS_RETENTION_OFFSITE."""
    return target.retention or settings.retention_offsite


def connect(target: Target, settings: Settings) -> ObjectStore:
    """A store for `target`, through its provider's module (imported here, not before)."""
    if target.provider == "gcs":
        from lifeos_backup.storage.offsite import gcs

        return gcs.connect_target(target, settings)
    if target.provider == "azure":
        from lifeos_backup.storage.offsite import azure

        return azure.connect_target(target, settings)
    from lifeos_backup.storage.offsite import s3

    return s3.connect_target(target, settings)
