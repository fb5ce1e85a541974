"""Off-site targets: the buckets (or containers) every verified backup is copied to.

`LIFEOS_OFFSITE_TARGETS` names any number of them, either inline as a JSON array or as the path
of a TOML file with one `[[target]]` table each (docs/decisions.md "Off-site targets"):

    [[target]]
    name = "azure-weu"                      # [a-z0-9-], shown by list, status and health
    provider = "azure"                      # s3 | gcs | azure
    bucket = "lifeos"                       # the bucket; on Azure the container
    endpoint = "https://acct.blob.core.windows.net"  # S3 endpoint, GCS API or Azure account URL
    region = "westeurope"                   # S3 region (optional)
    prefix = "lifeos-backup"                # key prefix inside the bucket
    credentials = { account_key = "AZURE_WEU_KEY" }  # names of environment variables
    retention = "within=30d"                # this target's remote retention (optional)
    bandwidth_limit = 20                    # MB/s for this target's uploads (optional)

Credentials are only ever the names of environment variables that hold them: a value that does
not look like a variable name is refused, so a secret pasted into the file stops the worker at
start instead of sitting in a file and in error messages. The existing `LIFEOS_S3_*` settings
are one more target named `s3`, listed first (lifeos_backup.storage.offsite.targets). Nothing
here imports a provider's SDK.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lifeos_backup.core.errors import ConfigError

PROVIDERS = ("s3", "gcs", "azure")
LEGACY_NAME = "s3"  # the target made of LIFEOS_S3_*
# What each provider reads from the environment, by the variable names a target gives.
CREDENTIAL_FIELDS: dict[str, tuple[str, ...]] = {
    "s3": ("access_key_id", "secret_access_key", "session_token"),
    "gcs": ("service_account_file",),  # the variable holds the path of a service-account key
    "azure": ("connection_string", "account_key", "sas_token"),
}
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_FIELDS = {
    "name",
    "provider",
    "bucket",
    "container",
    "endpoint",
    "region",
    "prefix",
    "credentials",
    "retention",
    "bandwidth_limit",
}


@dataclass(frozen=True)
class Target:
    """One bucket of one provider, and how copies go there."""

    name: str
    provider: str
    bucket: str
    prefix: str = "lifeos-backup"
    endpoint: str | None = None
    region: str | None = None
    credentials: Mapping[str, str] = field(default_factory=dict)  # field -> variable name
    retention: str | None = None  # None: LIFEOS_RETENTION_OFFSITE
    bandwidth_limit: float | None = None  # MB/s; None: LIFEOS_S3_BANDWIDTH_LIMIT
    legacy: bool = False  # made of LIFEOS_S3_* (storage class, SSE, Object Lock apply)

    @property
    def where(self) -> str:
        """Provider, bucket and endpoint for messages; never a credential."""
        scheme = {"s3": "s3", "gcs": "gs", "azure": "azure"}[self.provider]
        at = f" at {self.endpoint}" if self.endpoint else ""
        return f"{self.name}: {scheme}://{self.bucket}{at}"


def bad(what: str, detail: str) -> ConfigError:
    return ConfigError(
        f"LIFEOS_OFFSITE_TARGETS: {what}",
        detail,
        'see docs/decisions.md "Off-site targets" and README "Several off-site targets"',
    )


def _target(raw: object, index: int) -> Target:
    if not isinstance(raw, dict):
        raise bad(f"target {index + 1} is not a table", repr(raw)[:80])
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise bad(f"target {index + 1} has unknown fields", ", ".join(unknown))
    name = str(raw.get("name", ""))
    if not _NAME.match(name):
        raise bad(f"target {index + 1} needs a name of [a-z0-9-] (32 at most)", repr(name))
    provider = str(raw.get("provider", ""))
    if provider not in PROVIDERS:
        raise bad(f"target {name}: unknown provider {provider!r}", f"one of {', '.join(PROVIDERS)}")
    bucket = str(raw.get("bucket") or raw.get("container") or "")
    if not bucket:
        raise bad(f"target {name} needs a bucket (on Azure: container)", "")
    credentials = raw.get("credentials") or {}
    if not isinstance(credentials, dict):
        raise bad(f"target {name}: credentials must be a table of variable names", "")
    for key, var in credentials.items():
        if key not in CREDENTIAL_FIELDS[provider]:
            raise bad(
                f"target {name}: {provider} takes no credential {key!r}",
                f"it takes {', '.join(CREDENTIAL_FIELDS[provider])}",
            )
        if not isinstance(var, str) or not _ENV_NAME.match(var):
            # Never echo the value: it may be the secret itself.
            raise bad(
                f"target {name}: credentials.{key} must name an environment variable",
                "the value is not a variable name (a secret never goes in the targets)",
            )
    limit = raw.get("bandwidth_limit")
    if limit is not None and (not isinstance(limit, int | float) or limit <= 0):
        raise bad(f"target {name}: bandwidth_limit must be a positive number of MB/s", "")
    if provider == "azure" and not (raw.get("endpoint") or "connection_string" in credentials):
        raise bad(f"target {name}: Azure needs an endpoint (account URL) or connection_string", "")
    return Target(
        name=name,
        provider=provider,
        bucket=bucket,
        prefix=str(raw.get("prefix", "lifeos-backup")).strip("/"),
        endpoint=str(raw["endpoint"]) if raw.get("endpoint") else None,
        region=str(raw["region"]) if raw.get("region") else None,
        credentials=dict(credentials),
        retention=str(raw["retention"]) if raw.get("retention") else None,
        bandwidth_limit=float(limit) if limit is not None else None,
    )


def parse_targets(text: str) -> list[Target]:
    """The targets of LIFEOS_OFFSITE_TARGETS: a JSON array, or the path of a TOML file."""
    text = text.strip()
    if not text:
        return []
    raw: Any
    if text.startswith("["):
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise bad("not a valid JSON array", str(exc)) from None
    else:
        path = Path(text).expanduser()
        try:
            raw = tomllib.loads(path.read_text()).get("target", [])
        except OSError as exc:
            raise bad(f"cannot read {path}", exc.strerror or str(exc)) from None
        except tomllib.TOMLDecodeError as exc:
            raise bad(f"{path} is not valid TOML", str(exc)) from None
    if not isinstance(raw, list):
        raise bad("must be a list of targets", type(raw).__name__)
    targets = [_target(item, i) for i, item in enumerate(raw)]
    names = [t.name for t in targets]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise bad("target names must differ", ", ".join(twice))
    return targets


def legacy(bucket: str, prefix: str, endpoint: str | None, region: str | None) -> Target:
    """LIFEOS_S3_BUCKET and its LIFEOS_S3_* settings as the target `s3` (the AWS chain's
    credentials)."""
    return Target(
        name=LEGACY_NAME,
        provider="s3",
        bucket=bucket,
        prefix=prefix.strip("/"),
        endpoint=endpoint,
        region=region,
        legacy=True,
    )


def credential(target: Target, field: str) -> str | None:
    """A credential from the environment variable the target names (never from a file), or None
    when the target names none for `field`; ConfigError when the variable is unset."""
    var = target.credentials.get(field)
    if var is None:
        return None
    value = os.environ.get(var)
    if not value:
        raise ConfigError(
            f"off-site target {target.name}: no credentials",
            f"the environment variable {var} (credentials.{field}) is not set",
            f"set {var} in the workers' environment",
        )
    return value
