"""Stage 03: train / validation / test splits, seeded, stratified, checked for leakage.

The test split is the model's exam: it must never be trained on, and no near-copy of a
test row may sit in train, or the scores measure memory instead of skill.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from nbkit.config import Config, field
from nbkit.errors import DataError
from nbkit.workspace import SPLITS, Workspace, read_jsonl, write_json, write_jsonl


@dataclass
class SplitConfig(Config):
    """How to divide the formatted rows into train, validation and test."""

    workspace: str = field("workspace", "Folder that holds every stage's output.")
    validation_fraction: float = field(0.1, "Share of rows held out to watch training (early stopping, overfitting).")
    test_fraction: float = field(0.1, "Share of rows held out for the final base-vs-tuned comparison.")
    seed: int = field(42, "Random seed: the same seed and data give the same splits.")
    stratify_by: str = field("label", "meta field to keep balanced across splits ('' for none).")

    def validate(self) -> None:
        for name in ("validation_fraction", "test_fraction"):
            value = getattr(self, name)
            self.require(0 <= value < 1, name, f"must be in [0, 1), got {value}")
        self.require(self.test_fraction > 0, "test_fraction", "must be > 0: without a test split there is no "
                     "honest comparison with the base model")
        total = self.validation_fraction + self.test_fraction
        self.require(total < 0.9, "validation_fraction", f"+ test_fraction = {total:.2f} leaves too little to train on",
                     "keep the two below 0.9 together (0.1 + 0.1 is a good default)")


def split_rows(rows: list[dict[str, Any]], config: SplitConfig) -> dict[str, list[dict[str, Any]]]:
    """Seeded split; every stratum is divided in the same proportions.

    Sizes are fixed for the whole data first, then shared out over the strata by largest
    remainder, so many small strata still give the requested test and validation sizes.
    """
    strata: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        strata[row["meta"].get(config.stratify_by) if config.stratify_by else None].append(row)
    keys = sorted(strata, key=str)
    rng = random.Random(config.seed)
    for key in keys:
        rng.shuffle(strata[key])
    sizes = {key: len(strata[key]) for key in keys}
    n_test = _allocate(sizes, round(len(rows) * config.test_fraction))
    rest = {key: sizes[key] - n_test[key] for key in keys}
    n_val = _allocate(rest, round(len(rows) * config.validation_fraction))
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in SPLITS}
    for key in keys:
        group, t, v = strata[key], n_test[key], n_val[key]
        out["test"] += group[:t]
        out["validation"] += group[t:t + v]
        out["train"] += group[t + v:]
    for name in SPLITS:  # interleave strata again so batches are mixed
        rng.shuffle(out[name])
    return out


def _allocate(sizes: dict[Any, int], total: int) -> dict[Any, int]:
    """Share `total` over groups in proportion to their sizes (largest remainder, never above a group's size)."""
    whole = sum(sizes.values())
    if whole == 0:
        return {key: 0 for key in sizes}
    exact = {key: total * n / whole for key, n in sizes.items()}
    counts = {key: int(value) for key, value in exact.items()}
    by_remainder = sorted(sizes, key=lambda k: exact[k] - counts[k], reverse=True)
    for key in by_remainder[: total - sum(counts.values())]:
        counts[key] += 1
    return {key: min(count, sizes[key]) for key, count in counts.items()}


def prompt_key(row: dict[str, Any]) -> str:
    """Normalized non-assistant text: two rows with the same key ask the same thing."""
    text = " ".join(m["content"] for m in row["messages"] if m["role"] == "user")
    return re.sub(r"\W+", " ", text.lower()).strip()


def leakage(splits: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
    """Count evaluation rows whose prompt also appears in train (exact after normalization)."""
    train_keys = {prompt_key(r) for r in splits["train"]}
    return {f"train_{name}": sum(prompt_key(r) in train_keys for r in splits[name]) for name in ("validation", "test")}


def fingerprint(rows: list[dict[str, Any]]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps({"messages": row["messages"]}, sort_keys=True, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def split_dataset(config: SplitConfig) -> dict[str, Any]:
    """Read data/formatted/rows.jsonl, write the three splits and manifest.json; return the manifest."""
    ws = Workspace(config.workspace)
    rows = read_jsonl(ws.require(ws.formatted, "02_format"))
    if len(rows) < 10:
        raise DataError(f"only {len(rows)} usable rows in {ws.formatted}: too few to hold data out — collect more "
                        "examples (a few hundred is a good start).")
    canonical = [{"messages": r["messages"], "meta": r["meta"]} for r in rows]
    splits = split_rows(canonical, config)
    for name, part in splits.items():
        write_jsonl(ws.split(name), part)
    manifest = {
        "seed": config.seed,
        "fractions": {"train": round(1 - config.validation_fraction - config.test_fraction, 6),
                      "validation": config.validation_fraction, "test": config.test_fraction},
        "stratify_by": config.stratify_by,
        "sizes": {name: len(part) for name, part in splits.items()},
        "fingerprints": {name: fingerprint(part) for name, part in splits.items()},
        "leakage": leakage(splits),
        "labels": {name: _label_counts(part, config.stratify_by) for name, part in splits.items()},
    }
    write_json(ws.manifest, manifest)
    return manifest


def _label_counts(rows: list[dict[str, Any]], key: str) -> dict[str, int]:
    if not key:
        return {}
    counts: dict[str, int] = defaultdict(int)
    for row in rows:
        counts[str(row["meta"].get(key))] += 1
    return dict(sorted(counts.items()))
