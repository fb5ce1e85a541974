"""Archive byte formats: streams, tar, age encryption, manifests (no settings, no catalog)."""
