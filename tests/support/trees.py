"""Small Life-OS-like JSON trees for tests (the big ones live in benchmarks/)."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = ["red", "blue", "tall", "hat", "coat", "boot", "happy", "board", "game", "übung", "日本"]


def make_tree(app_dir: Path, files: int = 30, size: int = 1500, seed: int = 1) -> int:
    """Write `files` JSON files of about `size` bytes across data/, presets/, configs/."""
    rnd = random.Random(seed)
    total = 0
    for i in range(files):
        top = ("data/characters", "presets/style/deep", "configs")[i % 3]
        folder = app_dir / top
        folder.mkdir(parents=True, exist_ok=True)
        items = [{"w": rnd.choice(WORDS), "n": rnd.random()} for _ in range(max(1, size // 60))]
        doc = {"id": f"id-{i:05d}", "items": items}
        text = json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        (folder / f"item-{i:05d}.json").write_text(text)
        total += len(text.encode())
    return total
