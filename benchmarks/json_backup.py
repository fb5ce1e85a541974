"""Benchmark: JSON backup (create + verify + restore) of a Life-OS-like tree vs tar.

    .venv/bin/python benchmarks/json_backup.py [--files 50000] [--repeat 3] [--keep DIR]
    .venv/bin/python benchmarks/json_backup.py --files 50k,200k,1m --only ours,tar-zstd --repeat 1

Generates a deterministic tree of small JSON files (data/<entity>/<id>.json, nested presets/,
configs/), reads it once so every contender sees a warm page cache, then runs each contender
`--repeat` times in its own child process (round robin, so drift hits all of them alike) and
prints the medians. Ours also restores the backup (timed apart from create+verify), and
`tar -I 'zstd -T0' -cf` is followed by `tar -xf` of its archive, so every size ends with one line
of wall times and peak RSS beside tar. With several `--files` sizes and `--keep DIR`, each tree
is kept in DIR/<files>. See benchmarks/README.md for what is measured and the recorded figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # the folder is not a package; sys.path is set above
    clean_env,
    facts_block,
    git_revision,
    load_average,
    machine_facts,
    markdown_table,
    median,
    run_callable,
    run_measured,
    tool_version,
)

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("data", "presets", "configs")
GENERATOR_VERSION = 1
MARKER = ".lifeos-bench-tree.json"
MIN_SIZE, MAX_SIZE = 1024, 4096

# Share of the files per folder; data/ entities first, then presets/ and configs/.
SHARES: dict[str, float] = {
    "data/characters": 0.12,
    "data/clothing_items": 0.36,
    "data/outfits": 0.18,
    "data/compositions": 0.14,
    "data/board_games": 0.06,
    "data/favorites": 0.04,
    "presets": 0.09,
    "configs": 0.01,
}

_WORD_TEXT = """
amber anchor apricot arch atlas autumn azure balcony bamboo basil beacon birch blossom bluebell
bolt bramble breeze bronze brook canyon canvas cardinal cedar chalk charcoal cherry chestnut
cinder citrus clay clover cobalt comet copper coral cotton crescent crimson crystal cypress dawn
denim desert dune dusk ember emerald fable falcon fern fig flint forest fossil garnet ginger
glacier granite harbor hazel heather hollow honey horizon indigo iris ivory jade jasmine juniper
kelp lagoon lantern larch lavender leather lemon lilac linen lotus lumen maple marble meadow
merino midnight mint mist moss nectar nickel oak oasis ochre olive onyx opal orchard pebble
pepper pewter pine plum poplar prairie quartz quill rain raven reed ridge river rose rust saffron
sage sand sapphire satin scarlet shadow shale silk silver slate smoke spruce stone storm suede
summit sunset swallow tangerine teal thistle thunder tide timber topaz tundra twilight umber
valley velvet violet walnut willow wind winter wool yarrow zephyr casual formal vintage modern
relaxed tailored layered cropped oversized fitted pleated striped checked plain woven knitted
bright muted warm cool soft bold quiet playful elegant rugged cozy crisp light heavy
"""
WORDS = _WORD_TEXT.split()
SPECIES = ["human", "elf", "android", "fox", "dragon", "cat", "robot", "dwarf"]
CATEGORIES = ["top", "bottom", "dress", "outerwear", "shoes", "accessory", "hat", "bag"]
MATERIALS = ["cotton", "linen", "wool", "silk", "denim", "leather", "polyester", "cashmere"]
SEASONS = ["spring", "summer", "autumn", "winter"]
MECHANICS = [
    "deck building",
    "worker placement",
    "area control",
    "tile placement",
    "set collection",
    "cooperative",
    "drafting",
    "dice rolling",
    "engine building",
    "hand management",
]
PRESET_GROUPS = {
    "styles": ["painterly", "photo", "anime", "sketch", "watercolor", "noir"],
    "poses": ["standing", "sitting", "action", "portrait", "group"],
    "palettes": ["warm", "cool", "pastel", "mono", "earth"],
    "lighting": ["studio", "golden-hour", "night", "overcast"],
    "scenes": ["city", "forest", "interior", "beach", "space", "market"],
}
CONFIG_AREAS = ["ui", "sync", "export", "notifications", "plugins", "integrations"]
EPOCH = datetime(2022, 1, 1, tzinfo=UTC)


# --------------------------------------------------------------------------- tree generation


def _allocate(total: int) -> dict[str, int]:
    """Split `total` files over SHARES exactly (largest remainder)."""
    raw = {k: total * v for k, v in SHARES.items()}
    counts = {k: int(v) for k, v in raw.items()}
    for key in sorted(raw, key=lambda k: raw[k] - counts[k], reverse=True)[
        : total - sum(counts.values())
    ]:
        counts[key] += 1
    return counts


class _Gen:
    """Deterministic realistic-looking records from one seeded random generator."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def uid(self) -> str:
        h = f"{self.rng.getrandbits(128):032x}"
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{h[16:20]}-{h[20:]}"

    def words(self, n: int) -> str:
        return " ".join(self.rng.choice(WORDS) for _ in range(n))

    def name(self) -> str:
        return self.words(self.rng.randint(1, 3)).title()

    def sentence(self) -> str:
        text = self.words(self.rng.randint(6, 16))
        return text[0].upper() + text[1:] + "."

    def stamp(self) -> str:
        moment = EPOCH + timedelta(seconds=self.rng.randint(0, 3 * 365 * 86_400))
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")

    def tags(self, lo: int = 1, hi: int = 5) -> list[str]:
        return sorted({self.rng.choice(WORDS) for _ in range(self.rng.randint(lo, hi))})

    def timestamps(self) -> dict[str, Any]:
        created = self.stamp()
        return {"created_at": created, "updated_at": max(created, self.stamp())}

    # One builder per folder; each returns (record, name of the free-text field to pad).

    def character(self, rid: str) -> tuple[dict[str, Any], str]:
        rng = self.rng
        return {
            "id": rid,
            "name": self.name(),
            "species": rng.choice(SPECIES),
            "age": rng.randint(16, 90),
            "pronouns": rng.choice(["she/her", "he/him", "they/them"]),
            "appearance": {
                "eyes": rng.choice(WORDS),
                "hair": {"color": rng.choice(WORDS), "length": rng.choice(["short", "long"])},
                "height_cm": rng.randint(140, 210),
            },
            "traits": self.tags(2, 6),
            "tags": self.tags(),
            "favorite": rng.random() < 0.2,
            "version": rng.randint(1, 12),
            "bio": "",
            **self.timestamps(),
        }, "bio"

    def clothing_item(self, rid: str) -> tuple[dict[str, Any], str]:
        rng = self.rng
        return {
            "id": rid,
            "name": self.name(),
            "category": rng.choice(CATEGORIES),
            "colors": self.tags(1, 3),
            "material": rng.choice(MATERIALS),
            "brand": self.name(),
            "size": rng.choice(["XS", "S", "M", "L", "XL"]),
            "price": {"amount": round(rng.uniform(5, 400), 2), "currency": "EUR"},
            "seasons": sorted(rng.sample(SEASONS, rng.randint(1, 4))),
            "image": {
                "path": f"images/clothing/{rid}.webp",
                "width": rng.choice([512, 768, 1024]),
                "height": rng.choice([512, 768, 1024]),
            },
            "tags": self.tags(),
            "description": "",
            **self.timestamps(),
        }, "description"

    def outfit(self, rid: str) -> tuple[dict[str, Any], str]:
        rng = self.rng
        return {
            "id": rid,
            "name": self.name(),
            "character_id": self.uid(),
            "items": [
                {"clothing_item_id": self.uid(), "layer": layer}
                for layer in range(rng.randint(2, 6))
            ],
            "occasion": rng.choice(["work", "party", "travel", "home", "sport", "wedding"]),
            "rating": rng.randint(1, 5),
            "notes": "",
            **self.timestamps(),
        }, "notes"

    def composition(self, rid: str) -> tuple[dict[str, Any], str]:
        rng = self.rng
        return {
            "id": rid,
            "title": self.name(),
            "character_ids": [self.uid() for _ in range(rng.randint(1, 3))],
            "outfit_id": self.uid(),
            "scene": {
                "location": self.name(),
                "lighting": rng.choice(list(PRESET_GROUPS["lighting"])),
                "time_of_day": rng.choice(["morning", "noon", "evening", "night"]),
            },
            "camera": {
                "angle": rng.choice(["low", "eye", "high"]),
                "focal_mm": rng.randint(18, 135),
            },
            "generation": {
                "cfg_scale": round(rng.uniform(3, 12), 1),
                "seed": rng.getrandbits(32),
                "steps": rng.choice([20, 25, 30, 40, 50]),
            },
            "prompt": "",
            **self.timestamps(),
        }, "prompt"

    def board_game(self, rid: str) -> tuple[dict[str, Any], str]:
        rng = self.rng
        low = rng.randint(1, 4)
        return {
            "id": rid,
            "name": self.name(),
            "publisher": self.name(),
            "year": rng.randint(1980, 2025),
            "players": {"min": low, "max": low + rng.randint(0, 4)},
            "playtime_min": rng.choice([20, 30, 45, 60, 90, 120, 180]),
            "weight": round(rng.uniform(1, 5), 2),
            "mechanics": sorted(rng.sample(MECHANICS, rng.randint(1, 4))),
            "plays": [
                {
                    "date": self.stamp()[:10],
                    "players": rng.randint(2, 5),
                    "score": rng.randint(20, 180),
                }
                for _ in range(rng.randint(0, 5))
            ],
            "notes": "",
            **self.timestamps(),
        }, "notes"

    def favorite(self, rid: str) -> tuple[dict[str, Any], str]:
        rng = self.rng
        return {
            "id": rid,
            "entity": rng.choice(["characters", "outfits", "compositions", "board_games"]),
            "entity_id": self.uid(),
            "order": rng.randint(0, 500),
            "pinned": rng.random() < 0.1,
            "added_at": self.stamp(),
            "note": "",
        }, "note"

    def preset(self, rid: str, group: str, sub: str) -> tuple[dict[str, Any], str]:
        rng = self.rng
        return {
            "id": rid,
            "name": self.name(),
            "group": group,
            "subgroup": sub,
            "parameters": {
                "strength": round(rng.uniform(0, 1), 3),
                "keywords": self.tags(3, 8),
                "negative": self.tags(0, 4),
                "weights": {w: round(rng.uniform(0.2, 1.5), 2) for w in self.tags(2, 5)},
            },
            "version": rng.randint(1, 5),
            "description": "",
            **self.timestamps(),
        }, "description"

    def config(self, rid: str, area: str) -> tuple[dict[str, Any], str]:
        rng = self.rng
        return {
            "id": rid,
            "area": area,
            "enabled": rng.random() < 0.8,
            "flags": {w: rng.random() < 0.5 for w in self.tags(3, 8)},
            "limits": {"max_items": rng.choice([50, 100, 500]), "timeout_s": rng.randint(5, 120)},
            "theme": {"accent": rng.choice(WORDS), "density": rng.choice(["compact", "cozy"])},
            "comment": "",
            **self.timestamps(),
        }, "comment"

    def render(self, record: dict[str, Any], text_key: str) -> bytes:
        """Serialise like the app does, padding the free-text field to a size of 1-4 KB."""
        target = self.rng.randint(MIN_SIZE, MAX_SIZE)
        base = len(json.dumps(record, indent=2, sort_keys=True))
        parts: list[str] = []
        length = 0
        while base + length < target:
            sentence = self.sentence()
            parts.append(sentence)
            length += len(sentence) + 1
        text = " ".join(parts)
        if base + len(text) > MAX_SIZE:
            text = text[: MAX_SIZE - base].rstrip()
        record[text_key] = text
        data = (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()
        assert MIN_SIZE <= len(data) <= MAX_SIZE + 1, len(data)
        return data


def generate_tree(root: Path, files: int, seed: int) -> None:
    """Write `files` JSON files under root/{data,presets,configs}."""
    gen = _Gen(seed)
    counts = _allocate(files)
    for name in SOURCES:  # all three exist even when a tiny --files leaves one empty
        (root / name).mkdir(parents=True, exist_ok=True)
    builders: dict[str, Callable[[str], tuple[dict[str, Any], str]]] = {
        "characters": gen.character,
        "clothing_items": gen.clothing_item,
        "outfits": gen.outfit,
        "compositions": gen.composition,
        "board_games": gen.board_game,
        "favorites": gen.favorite,
    }
    for folder, count in counts.items():
        top = root / folder
        for i in range(count):
            rid = gen.uid()
            if folder.startswith("data/"):
                record, key = builders[folder.split("/", 1)[1]](rid)
                path = top / f"{rid}.json"
            elif folder == "presets":
                group = list(PRESET_GROUPS)[i % len(PRESET_GROUPS)]
                sub = gen.rng.choice(PRESET_GROUPS[group])
                record, key = gen.preset(rid, group, sub)
                path = top / group / sub / f"{gen.name().lower().replace(' ', '-')}-{i}.json"
            else:
                area = CONFIG_AREAS[i % len(CONFIG_AREAS)]
                record, key = gen.config(rid, area)
                path = top / area / f"{gen.rng.choice(WORDS)}-{i}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(gen.render(record, key))


def prepare_tree(root: Path, files: int, seed: int) -> str:
    """Reuse root's tree if it was generated with the same parameters, else (re)generate it."""
    wanted = {"generator": GENERATOR_VERSION, "files": files, "seed": seed}
    marker = root / MARKER
    if marker.exists():
        if json.loads(marker.read_text()) == wanted:
            return "reused"
        for name in SOURCES:
            shutil.rmtree(root / name, ignore_errors=True)
        marker.unlink()
    elif root.exists() and any(root.iterdir()):
        raise SystemExit(f"{root} is not empty and was not made by this benchmark; refusing")
    root.mkdir(parents=True, exist_ok=True)
    generate_tree(root, files, seed)
    marker.write_text(json.dumps(wanted) + "\n")
    return "generated"


def warm_and_count(root: Path) -> tuple[int, int]:
    """Read every file once (warms the page cache for all contenders); return files, bytes.

    Not `tar cf /dev/null`: GNU tar notices an archive on /dev/null and skips reading contents.
    """
    files = size = 0
    for name in SOURCES:
        for folder, _dirs, names in os.walk(root / name):
            for entry in names:
                with open(os.path.join(folder, entry), "rb") as handle:
                    size += len(handle.read())
                files += 1
    return files, size


# --------------------------------------------------------------------------- contenders


def ours_child(app_dir: str, work_dir: str) -> dict[str, Any]:
    """Runs in a fresh interpreter: create_backup, verify_backup, restore_archive, timed apart.

    Peak RSS is that of this process (`ru_maxrss`) after each step: the last one covers all three.
    """
    import resource

    from lifeos_backup.core.progress import ignore
    from lifeos_backup.core.settings import Settings
    from lifeos_backup.jobs.backups import create_backup, locate, verify_backup
    from lifeos_backup.kinds.json.restore import restore_archive
    from lifeos_backup.storage.catalog.store import Catalog

    def cpu() -> float:  # user + system of every thread of this process (zstd workers too)
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime + ru.ru_stime

    settings = Settings(backup_root=Path(work_dir) / "backups", app_dir=Path(app_dir))
    catalog = Catalog(settings.effective_catalog_url)  # schema set-up is not timed
    c0, t0 = cpu(), time.perf_counter()
    manifest = create_backup("json", settings, catalog, reason="benchmark")
    c1, t1 = cpu(), time.perf_counter()
    create_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    verified = verify_backup(manifest.backup_id, settings, catalog)
    c2, t2 = cpu(), time.perf_counter()
    verify_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _row, archive, mpath = locate(settings, catalog, manifest.backup_id)
    assert verified.verified_at is not None
    restored = restore_archive(archive, verified, Path(work_dir) / "restored", False, ignore)
    c3, t3 = cpu(), time.perf_counter()
    return {
        "create_s": t1 - t0,
        "verify_s": t2 - t1,
        "total_s": t2 - t0,
        "restore_s": t3 - t2,
        "create_cpu_s": c1 - c0,
        "verify_cpu_s": c2 - c1,
        "total_cpu_s": c2 - c0,
        "restore_cpu_s": c3 - c2,
        "restored": restored,
        "create_maxrss_kb": create_rss,
        "verify_maxrss_kb": verify_rss,
        "archive_bytes": archive.stat().st_size,
        "manifest_bytes": mpath.stat().st_size,
        "algorithm": manifest.compression.algorithm,
        "level": manifest.compression.level,
        "files": sum(1 for f in manifest.iter_files() if f.type == "file"),
        "self_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


@dataclass
class Sample:
    seconds: float  # the figure compared (create+verify for ours, whole command for tar)
    cpu_s: float  # user + system seconds of the same span
    process_s: float  # wall time of the child process as seen from the parent
    archive_bytes: int
    rss_kb: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Contender:
    key: str
    label: str
    run: Callable[[Path, Path], Sample]
    samples: list[Sample] = field(default_factory=list)


def _ours(extra_env: dict[str, str]) -> Callable[[Path, Path], Sample]:
    def run(tree: Path, out: Path) -> Sample:
        env = clean_env(drop_prefixes=("LIFEOS_",), **extra_env)
        m = run_callable(ours_child, str(tree), str(out), cwd=out, env=env)
        r = m.result
        return Sample(
            r["total_s"], r["total_cpu_s"], m.seconds, r["archive_bytes"], m.peak_rss_kb, r
        )

    return run


def _tar(args: list[str], name: str, extract: bool = False) -> Callable[[Path, Path], Sample]:
    def run(tree: Path, out: Path) -> Sample:
        archive = out / name
        m = run_measured(["tar", *args, str(archive), *SOURCES], cwd=tree)
        extra: dict[str, Any] = {}
        if extract:  # `tar -xf` of the same archive, beside our restore
            target = out / "extracted"
            target.mkdir()
            x = run_measured(["tar", "-I", "zstd -T0", "-xf", str(archive)], cwd=target)
            extra = {"extract_s": x.seconds, "extract_rss_kb": x.peak_rss_kb}
        size = archive.stat().st_size
        return Sample(m.seconds, m.cpu_seconds, m.seconds, size, m.peak_rss_kb, extra)

    return run


def contenders(extra_levels: list[int]) -> list[Contender]:
    found = [
        Contender("ours", "lifeos create+verify (zstd, default level)", _ours({})),
        Contender(
            "ours-gzip",
            "lifeos create+verify (LIFEOS_COMPRESSION=gzip)",
            _ours({"LIFEOS_COMPRESSION": "gzip"}),
        ),
    ]
    for level in extra_levels:
        found.append(
            Contender(
                f"ours-zstd{level}",
                f"lifeos create+verify (LIFEOS_COMPRESSION_LEVEL={level})",
                _ours({"LIFEOS_COMPRESSION_LEVEL": str(level)}),
            )
        )
    found += [
        Contender("tar-gz", "tar czf", _tar(["czf"], "out.tgz")),
        Contender(
            "tar-zstd",
            "tar -I 'zstd -T0' -cf",
            _tar(["-I", "zstd -T0", "-cf"], "out.tar.zst", extract=True),
        ),
        Contender(
            "tar-zstd7",
            "tar -I 'zstd -T0 -7' -cf (reference)",
            _tar(["-I", "zstd -T0 -7", "-cf"], "out7.tar.zst"),
        ),
    ]
    return found


# --------------------------------------------------------------------------- report

HEADERS = [
    "contender",
    "seconds",
    "min s",
    "CPU s",
    "process s",
    "MB/s",
    "files/s",
    "archive bytes",
    "time vs tar czf",
    "size vs tar czf",
    "peak RSS MiB",
]


@dataclass
class Figures:
    """Medians (and the best run) of one contender, or of one part of ours."""

    label: str
    secs: float
    best: float
    cpu: float
    proc: float | None = None
    size: int | None = None
    rss_kb: float | None = None


def _figures(c: Contender) -> Figures:
    return Figures(
        c.label,
        median([s.seconds for s in c.samples]),
        min(s.seconds for s in c.samples),
        median([s.cpu_s for s in c.samples]),
        median([s.process_s for s in c.samples]),
        int(median([s.archive_bytes for s in c.samples])),
        median([s.rss_kb for s in c.samples]),
    )


def _part(c: Contender, part: str) -> Figures:
    values = [s.extra[f"{part}_s"] for s in c.samples]
    return Figures(
        f"  └ {part} only",
        median(values),
        min(values),
        median([s.extra[f"{part}_cpu_s"] for s in c.samples]),
    )


def _row(f: Figures, files: int, nbytes: int, base: Figures) -> list[str]:
    dash = "—"
    assert base.size
    return [
        f.label,
        f"{f.secs:.2f}",
        f"{f.best:.2f}",
        f"{f.cpu:.2f}",
        f"{f.proc:.2f}" if f.proc is not None else dash,
        f"{nbytes / 1e6 / f.secs:.1f}",
        f"{files / f.secs:,.0f}",
        f"{f.size:,}" if f.size is not None else dash,
        f"{f.secs / base.secs:.2f}x",
        f"{f.size / base.size:.3f}x" if f.size is not None else dash,
        f"{f.rss_kb / 1024:.0f}" if f.rss_kb is not None else dash,
    ]


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base else "n/a"


def report(found: list[Contender], files: int, nbytes: int) -> tuple[str, list[str], list[str]]:
    """The table, the PASS/FAIL lines and notes (CPU, manifest size) about ours vs tar czf."""
    by_key = {c.key: c for c in found}
    base = _figures(by_key["tar-gz"])
    rows = []
    for c in found:
        rows.append(_row(_figures(c), files, nbytes, base))
        if c.key.startswith("ours"):
            rows.extend(_row(_part(c, p), files, nbytes, base) for p in ("create", "verify"))

    ours_c = by_key["ours"]
    ours = _figures(ours_c)
    assert ours.size is not None and base.size is not None
    level = ours_c.samples[0].extra["level"]
    verdicts = [
        f"{'PASS' if ours.secs <= base.secs else 'FAIL'}  time: lifeos create+verify "
        f"(zstd {level}) {ours.secs:.2f} s vs tar czf {base.secs:.2f} s "
        f"({ours.secs / base.secs:.2f}x, median wall)",
        f"{'PASS' if ours.size <= base.size else 'FAIL'}  size: lifeos archive {ours.size:,} B "
        f"vs tar czf {base.size:,} B ({ours.size / base.size:.3f}x)",
    ]
    manifest = int(median([s.extra["manifest_bytes"] for s in ours_c.samples]))
    create_rss = median([s.extra["create_maxrss_kb"] for s in ours_c.samples]) / 1024
    notes = [
        f"CPU: lifeos create+verify {ours.cpu:.2f} s vs tar czf {base.cpu:.2f} s "
        f"({_ratio(ours.cpu, base.cpu)}); best wall {ours.best:.2f} s vs {base.best:.2f} s",
        f"manifest beside the lifeos archive (not in 'archive bytes'): {manifest:,} B; "
        f"archive + manifest = {ours.size + manifest:,} B "
        f"({(ours.size + manifest) / base.size:.3f}x tar czf)",
        f"lifeos peak RSS after create {create_rss:.0f} MiB, after verify "
        f"{(ours.rss_kb or 0) / 1024:.0f} MiB",
    ]
    return markdown_table(HEADERS, rows), verdicts, notes


SCALE_HEADERS = [
    "files",
    "create s",
    "verify s",
    "create+verify s",
    "restore s",
    "peak RSS MiB create/verify/restore",
    "tar -cf s",
    "tar -xf s",
    "tar RSS MiB",
    "c+v vs tar -cf",
    "restore vs tar -xf",
]


def scale_row(found: list[Contender], files: int) -> list[str]:
    """One line per size: our three steps and peak RSS beside `tar -I 'zstd -T0'` -cf and -xf."""
    by_key = {c.key: c for c in found}
    ours, tar = by_key["ours"].samples, by_key["tar-zstd"].samples

    def med(samples: list[Sample], key: str) -> float:
        return median([x.extra[key] for x in samples])

    create, verify, restore = (med(ours, k) for k in ("create_s", "verify_s", "restore_s"))
    rss = [med(ours, k) / 1024 for k in ("create_maxrss_kb", "verify_maxrss_kb")]
    rss.append(median([x.rss_kb for x in ours]) / 1024)
    tar_c, tar_x = median([x.seconds for x in tar]), med(tar, "extract_s")
    tar_rss = max(median([x.rss_kb for x in tar]), med(tar, "extract_rss_kb")) / 1024
    return [
        f"{files:,}",
        f"{create:.2f}",
        f"{verify:.2f}",
        f"{create + verify:.2f}",
        f"{restore:.2f}",
        "/".join(f"{r:.0f}" for r in rss),
        f"{tar_c:.2f}",
        f"{tar_x:.2f}",
        f"{tar_rss:.0f}",
        f"{(create + verify) / tar_c:.2f}x",
        f"{restore / tar_x:.2f}x",
    ]


def _count(text: str) -> int:
    """50000, 50k, 1m -> a file count."""
    text = text.strip().lower()
    factor = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(float(text.rstrip("km")) * factor)


def run_size(
    files_wanted: int, tree: Path, scratch: Path, args: argparse.Namespace, levels: list[int]
) -> tuple[list[str] | None, bool]:
    """Every contender at one tree size: prints its runs and report; the scale row and PASS."""
    t0 = time.perf_counter()
    how = prepare_tree(tree, files_wanted, args.seed)
    print(f"tree {tree}: {how} in {time.perf_counter() - t0:.1f} s", flush=True)
    files, nbytes = warm_and_count(tree)
    print(f"input: {files:,} files, {nbytes:,} bytes ({nbytes / 1e6:.1f} MB); cache warmed")
    load_before = load_average()

    found = contenders(levels)
    if args.only:
        wanted = {k.strip() for k in args.only.split(",")}
        found = [c for c in found if c.key in wanted]
    for rep in range(args.repeat):
        for c in found:
            out = scratch / f"out-{files}-{c.key}-{rep}"
            out.mkdir()
            sample = c.run(tree, out)
            c.samples.append(sample)
            shutil.rmtree(out)
            print(
                f"  run {rep + 1}/{args.repeat} {c.label}: {sample.seconds:.2f} s "
                f"(CPU {sample.cpu_s:.2f} s), {sample.archive_bytes:,} B, "
                f"{sample.rss_kb / 1024:.0f} MiB"
                + (
                    f", restore {sample.extra['restore_s']:.2f} s"
                    if "restore_s" in sample.extra
                    else ""
                )
                + (
                    f", tar -xf {sample.extra['extract_s']:.2f} s"
                    if "extract_s" in sample.extra
                    else ""
                ),
                flush=True,
            )
    keys = {c.key for c in found}
    ours_c = next((c for c in found if c.key == "ours"), None)
    if ours_c is not None:
        ours_files = ours_c.samples[0].extra["files"]
        if ours_files != files or ours_c.samples[0].extra["restored"] != files:
            print(f"WARNING: lifeos archived {ours_files} files, the tree has {files}")

    import zstandard

    facts = machine_facts(
        {
            "zstandard (python)": zstandard.__version__,
            "zstd": tool_version(["zstd", "--version"]),
            "gzip": tool_version(["gzip", "--version"]),
            "load average": f"{load_before} at start, {load_average()} at end",
            "lifeos-backup": git_revision(REPO, ["lifeos_backup"]),
        }
    )
    print()
    print(facts_block(facts))
    print()
    passed = True
    if {"ours", "tar-gz"} <= keys:
        table, verdicts, notes = report(found, files, nbytes)
        print(
            f"{files:,} files, {nbytes / 1e6:.1f} MB input; medians of {args.repeat} runs "
            "(min s: best run); MB = 10^6 bytes"
        )
        print()
        print(table)
        print()
        print("\n".join(notes))
        print()
        print("\n".join(verdicts))
        passed = all(v.startswith("PASS") for v in verdicts)
    row = scale_row(found, files) if {"ours", "tar-zstd"} <= keys else None
    return row, passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--files",
        default="50000",
        help="number of JSON files; several sizes comma-separated, e.g. 50k,200k,1m",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per contender (median)")
    parser.add_argument("--seed", type=int, default=20_240_601, help="tree generator seed")
    parser.add_argument("--keep", type=Path, help="generate the tree here and reuse it next time")
    parser.add_argument(
        "--ours-levels",
        default="",
        help="extra lifeos runs at these zstd levels, comma-separated (e.g. 3,5)",
    )
    parser.add_argument(
        "--only",
        default="",
        help="run only these contenders, comma-separated keys (e.g. ours,tar-zstd)",
    )
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.ours_levels.split(",") if x.strip()]
    sizes = [_count(x) for x in args.files.split(",") if x.strip()]

    scratch = Path(tempfile.mkdtemp(prefix="lifeos-bench-"))
    rows: list[list[str]] = []
    passed = True
    try:
        for files in sizes:
            if args.keep:
                tree = args.keep.resolve() / str(files) if len(sizes) > 1 else args.keep.resolve()
            else:
                tree = scratch / f"tree-{files}"
            row, ok = run_size(files, tree, scratch, args, levels)
            passed = passed and ok
            if row is not None:
                rows.append(row)
                print()
                print(markdown_table(SCALE_HEADERS, rows))  # grows with each size
                print(flush=True)
            if not args.keep:
                shutil.rmtree(tree, ignore_errors=True)
        return 0 if passed else 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
