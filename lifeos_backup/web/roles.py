"""The dashboard's roles, each allowed what the one before is, and more (import-free, so the
command tree can name them without loading the web stack):

- viewer: reads every page;
- operator: requests backups, verifications, restore drills and off-site syncs, and restores
  into a new database or folder;
- admin: restores over production (with a second admin's approval).
"""

from __future__ import annotations

VIEWER, OPERATOR, ADMIN = "viewer", "operator", "admin"
ROLES = (VIEWER, OPERATOR, ADMIN)
RANK = {role: number for number, role in enumerate(ROLES)}
