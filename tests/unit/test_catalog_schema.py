"""The catalog's schema check: Alembic only when the schema is behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory

from lifeos_backup.storage.catalog.store import HEAD, MIGRATIONS, Catalog


def test_head_is_the_newest_migration() -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_heads() == [HEAD]


def test_a_new_catalog_is_migrated_and_an_upgraded_one_opens_without_alembic(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'catalog.sqlite3'}"
    assert Catalog(url).revision() == HEAD
    probe = (
        "import sys; from lifeos_backup.storage.catalog.store import Catalog;"
        f" c = Catalog({url!r}); c.list();"
        " print(c.revision(), 'alembic' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [HEAD, "False"]
