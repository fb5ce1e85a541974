"""The backup repository on disk and off-site, and its index: catalog, audit trail, retention."""
