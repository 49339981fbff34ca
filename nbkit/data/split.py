"""Stage 03: train / validation / test splits, seeded, stratified, checked for leakage.

The test split is the model's exam: it must never be trained on, and no near-copy of a
test row may sit in train, or the scores measure memory instead of skill.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from nbkit.core.config import Config, field
from nbkit.core.errors import DataError
from nbkit.core.files import file_records, read_json, read_jsonl, write_json, write_jsonl
from nbkit.core.rows import is_replay
from nbkit.core.workspace import SPLITS, Workspace, provenance
from nbkit.data.diversity import diversity_map
from nbkit.data.near_duplicates import cross_near_duplicates, row_text, validate_threshold
from nbkit.data.replay import replay_needed


@dataclass
class SplitConfig(Config):
    """How to divide the formatted rows into train, validation and test."""

    workspace: str = field("workspace", "Folder that holds every stage's output.")
    validation_fraction: float = field(0.1, "Share of rows held out to watch training (early stopping, overfitting).")
    test_fraction: float = field(0.1, "Share of rows held out for the final base-vs-tuned comparison.")
    seed: int = field(42, "Random seed: the same seed and data give the same splits.")
    stratify_by: str = field(
        "label", "meta field to keep balanced across splits, 'cluster' for the diversity-map clusters, '' for none."
    )
    group_by: str = field("", "meta field whose rows stay together (e.g. 'source' or a conversation id); '' = none.")
    near_duplicate_threshold: float = field(
        0.8, "Similarity (0-1) above which a validation/test row counts as a near-copy of a training row."
    )
    drop_leaked: bool = field(
        False,
        "Remove validation/test rows that (nearly) copy a training row; they are kept in data/splits/leaked.jsonl.",
    )

    def validate(self) -> None:
        for name in ("validation_fraction", "test_fraction"):
            value = getattr(self, name)
            self.require(0 <= value < 1, name, f"must be in [0, 1), got {value}")
        self.require(
            self.test_fraction > 0,
            "test_fraction",
            "must be > 0: without a test split there is no honest comparison with the base model",
        )
        total = self.validation_fraction + self.test_fraction
        validate_threshold(self, "near_duplicate_threshold")
        self.require(
            total < 0.9,
            "validation_fraction",
            f"+ test_fraction = {total:.2f} leaves too little to train on",
            "keep the two below 0.9 together (0.1 + 0.1 is a good default)",
        )


def split_rows(
    rows: list[dict[str, Any]], config: SplitConfig, strata_keys: list[Any] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Seeded split; every stratum is divided in the same proportions, groups are never divided.

    Sizes are fixed for the whole data first, then shared out over the strata by largest
    remainder, so many small strata still give the requested test and validation sizes.
    `strata_keys` (one per row) overrides `config.stratify_by`.
    """
    units = _units(rows, config.group_by)
    keys = (
        strata_keys
        if strata_keys is not None
        else [row["meta"].get(config.stratify_by) if config.stratify_by else None for row in rows]
    )
    strata: dict[Any, list[list[int]]] = defaultdict(list)
    for unit in units:  # a group goes to the stratum most of its rows belong to
        strata[Counter(keys[i] for i in unit).most_common(1)[0][0]].append(unit)
    order = sorted(strata, key=str)
    rng = random.Random(config.seed)
    for key in order:
        rng.shuffle(strata[key])
    sizes = {key: sum(map(len, strata[key])) for key in order}
    n_test = _allocate(sizes, round(len(rows) * config.test_fraction))
    rest = {key: sizes[key] - n_test[key] for key in order}
    n_val = _allocate(rest, round(len(rows) * config.validation_fraction))
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in SPLITS}
    for key in order:
        counts = {"test": 0, "validation": 0}
        for unit in strata[key]:
            if counts["test"] < n_test[key]:
                name = "test"
            elif counts["validation"] < n_val[key]:
                name = "validation"
            else:
                name = "train"
            counts[name] = counts.get(name, 0) + len(unit)
            out[name] += [rows[i] for i in unit]
    for name in SPLITS:  # interleave strata again so batches are mixed
        rng.shuffle(out[name])
    return out


def _units(rows: list[dict[str, Any]], group_by: str) -> list[list[int]]:
    """Row indices that must stay in one split: one unit per group value, single rows otherwise."""
    if not group_by:
        return [[i] for i in range(len(rows))]
    groups: dict[Any, list[int]] = {}
    units: list[list[int]] = []
    for i, row in enumerate(rows):
        value = row["meta"].get(group_by)
        if value is None:
            units.append([i])
        elif value in groups:
            groups[value].append(i)
        else:
            groups[value] = [i]
            units.append(groups[value])
    return units


def _allocate(sizes: dict[Any, int], total: int) -> dict[Any, int]:
    """Share `total` over groups in proportion to their sizes (largest remainder, never above a group's size)."""
    whole = sum(sizes.values())
    if whole == 0:
        return dict.fromkeys(sizes, 0)
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


def find_leaks(splits: dict[str, list[dict[str, Any]]], threshold: float = 0.8) -> dict[str, list[dict[str, Any]]]:
    """Validation/test rows that copy a training row: the same prompt (after normalization) or a
    near-duplicate of the whole example (MinHash similarity >= threshold). Each with the row it copies."""
    train = splits["train"]
    train_prompts = {prompt_key(r): j for j, r in reversed(list(enumerate(train)))}
    evaluation = [(name, i, row) for name in ("validation", "test") for i, row in enumerate(splits[name])]
    found: dict[tuple[str, int], tuple[int, str]] = {}
    for name, i, row in evaluation:
        if prompt_key(row) in train_prompts:
            found[name, i] = (train_prompts[prompt_key(row)], "same prompt")
    # One index over train serves both evaluation splits.
    pairs = cross_near_duplicates([row_text(r) for _, _, r in evaluation], [row_text(r) for r in train], threshold)
    for k, j in pairs:
        name, i, _ = evaluation[k]
        found.setdefault((name, i), (j, "near duplicate"))
    leaks: dict[str, list[dict[str, Any]]] = {"validation": [], "test": []}
    for (name, i), (j, kind) in sorted(found.items()):
        leaks[name].append(
            {
                "index": i,
                "kind": kind,
                "row": provenance(splits[name][i]["meta"]),
                "copies": provenance(train[j]["meta"]),
            }
        )
    return leaks


def leakage(splits: dict[str, list[dict[str, Any]]], threshold: float = 0.8) -> dict[str, int]:
    """How many validation and test rows copy a training row (see find_leaks)."""
    return leak_counts(find_leaks(splits, threshold))


def leak_counts(leaks: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
    """find_leaks' result as counts: {"train_validation": n, "train_test": n}."""
    return {f"train_{name}": len(found) for name, found in leaks.items()}


def fingerprint(rows: list[dict[str, Any]]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps({"messages": row["messages"]}, sort_keys=True, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def split_dataset(config: SplitConfig) -> dict[str, Any]:
    """Read data/formatted/rows.jsonl, write the three splits and manifest.json; return the manifest."""
    ws = Workspace(config.workspace)
    ws.checked(ws.format_report, "02_format", required=False)
    rows = read_jsonl(ws.require(ws.formatted, "02_format"))
    if len(rows) < 10:
        raise DataError(
            f"only {len(rows)} usable rows in {ws.formatted}: too few to hold data out — collect more "
            "examples (a few hundred is a good start)."
        )
    canonical = [{"messages": r["messages"], "meta": r["meta"]} for r in rows]
    strata = None
    if config.stratify_by == "cluster" and not any("cluster" in r["meta"] for r in canonical):
        strata = diversity_map([row_text(r) for r in canonical], seed=config.seed)["cluster"]
        for row, cluster in zip(canonical, strata):
            row["meta"]["cluster"] = cluster
    splits = split_rows(canonical, config, strata)

    leaks = find_leaks(splits, config.near_duplicate_threshold)
    found = leak_counts(leaks)
    dropped = []
    if config.drop_leaked:
        for name, items in leaks.items():
            drop = {item["index"] for item in items}
            dropped += [{**splits[name][item["index"]], "leak": {**item, "split": name}} for item in items]
            splits[name] = [row for i, row in enumerate(splits[name]) if i not in drop]
    write_jsonl(ws.leaked, dropped)
    replay = mix_in_replay(ws, splits, config.seed)
    for name, part in splits.items():
        write_jsonl(ws.split(name), part)
    manifest = {
        "seed": config.seed,
        "fractions": {
            "train": round(1 - config.validation_fraction - config.test_fraction, 6),
            "validation": config.validation_fraction,
            "test": config.test_fraction,
        },
        "stratify_by": config.stratify_by,
        "group_by": config.group_by,
        "sizes": {name: len(part) for name, part in splits.items()},
        "fingerprints": {name: fingerprint(part) for name, part in splits.items()},
        # What is left in the evaluation splits; `leakage_found` is before any drop.
        "leakage": found if not config.drop_leaked else dict.fromkeys(found, 0),
        "leakage_found": found,
        "leaked_dropped": len(dropped),
        "leak_examples": [{**item, "split": name} for name, items in leaks.items() for item in items][:20],
        "near_duplicate_threshold": config.near_duplicate_threshold,
        "labels": {
            name: _label_counts([r for r in part if not is_replay(r)], config.stratify_by)
            for name, part in splits.items()
        },
        "replay": replay,
        "files": file_records(*(ws.split(name) for name in SPLITS), ws.leaked),  # 04 and 05 check them
    }
    write_json(ws.manifest, manifest)
    return manifest


def mix_in_replay(ws: Workspace, splits: dict[str, list[dict[str, Any]]], seed: int) -> dict[str, Any]:
    """Add the replay guard's rows (02's data/formatted/replay.jsonl) to train, and to train only: they are the
    base model's answers to general prompts, so scoring them would measure nothing about the task."""
    settings = read_json(ws.format_report).get("replay", {}) if ws.format_report.exists() else {}
    pool = read_jsonl(ws.replay) if settings.get("enabled") and ws.replay.exists() else []
    if not pool:
        return {
            "enabled": bool(settings.get("enabled")),
            "rows": 0,
            "share": 0.0,
            **({"off_reason": settings["off_reason"]} if settings.get("off_reason") else {}),
        }
    n_task = len(splits["train"])
    wanted = replay_needed(n_task, settings["share"])
    chosen = [{"messages": r["messages"], "meta": r["meta"]} for r in pool[:wanted]]
    train = splits["train"] + chosen
    random.Random(seed).shuffle(train)  # replay rows spread over the whole run, not bunched at its end
    splits["train"] = train
    return {
        "enabled": True,
        "rows": len(chosen),
        "wanted": wanted,
        "task_rows": n_task,
        "share": round(len(chosen) / len(train), 4),
        "model": settings.get("model", ""),
        "short_by": wanted - len(chosen),
    }


def _label_counts(rows: list[dict[str, Any]], key: str) -> dict[str, int]:
    if not key:
        return {}
    counts: dict[str, int] = defaultdict(int)
    for row in rows:
        counts[str(row["meta"].get(key))] += 1
    return dict(sorted(counts.items()))
