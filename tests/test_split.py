"""Stage 03 split: seeded, stratified train/validation/test with a manifest and a leakage check."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from nbkit.core.errors import DataError, WorkspaceError
from nbkit.core.files import read_json, read_jsonl, write_jsonl
from nbkit.core.workspace import SPLITS, Workspace
from nbkit.data.collect import SAMPLE_DATA
from nbkit.data.split import SplitConfig, leakage, split_dataset, split_rows


def row(question: str, answer: str = "ok", system: str | None = None, **meta) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"messages": messages, "meta": {"source": "<test>", **meta}}


def labelled_rows(per_label: int, labels=("a", "b", "c", "d")) -> list[dict]:
    return [row(f"question {label} {i}", label=label) for label in labels for i in range(per_label)]


def sample_rows() -> list[dict]:
    """The bundled 400 support tickets, shaped like data/formatted/rows.jsonl (with an extra field)."""
    rows = []
    for n, line in enumerate(SAMPLE_DATA.read_text(encoding="utf-8").splitlines(), start=1):
        record = json.loads(line)
        rows.append(
            {
                "messages": record["messages"],
                "text": "<rendered>",
                "meta": {"source": str(SAMPLE_DATA), "line": n, "label": record["label"]},
            }
        )
    return rows


def run_split(root: Path, rows: list[dict], **config) -> dict:
    """Write rows as the formatted file of a workspace at root, split it, return the manifest."""
    write_jsonl(Workspace(root).formatted, rows)
    return split_dataset(SplitConfig(workspace=str(root), **config))


def read_splits(root: Path) -> dict[str, list[dict]]:
    ws = Workspace(root)
    return {name: read_jsonl(ws.split(name)) for name in SPLITS}


def key(r: dict) -> str:
    return json.dumps(r["messages"], sort_keys=True)


# -- sizes and determinism ------------------------------------------------------------------


def test_default_sizes_are_80_10_10(tmp_path):
    manifest = run_split(tmp_path, sample_rows())
    assert manifest["sizes"] == {"train": 320, "validation": 40, "test": 40}
    splits = read_splits(tmp_path)
    assert {name: len(rows) for name, rows in splits.items()} == manifest["sizes"]


def test_sizes_without_stratification(tmp_path):
    manifest = run_split(tmp_path, [row(f"q{i}") for i in range(100)], stratify_by="")
    assert manifest["sizes"] == {"train": 80, "validation": 10, "test": 10}
    assert manifest["labels"] == {name: {} for name in SPLITS}


def test_custom_fractions(tmp_path):
    manifest = run_split(tmp_path, sample_rows(), validation_fraction=0.05, test_fraction=0.2)
    assert manifest["sizes"] == {"train": 300, "validation": 20, "test": 80}
    assert manifest["fractions"] == {"train": 0.75, "validation": 0.05, "test": 0.2}


def test_small_strata_still_give_requested_test_size():
    rows = labelled_rows(5, labels=[f"label{i}" for i in range(12)])
    splits = split_rows(rows, SplitConfig())
    assert abs(len(splits["test"]) - 6) <= 1
    assert abs(len(splits["validation"]) - 6) <= 1


def test_same_seed_gives_identical_splits(tmp_path):
    rows = sample_rows()
    first = run_split(tmp_path / "one", rows, seed=3)
    second = run_split(tmp_path / "two", rows, seed=3)
    assert first["fingerprints"] == second["fingerprints"]
    assert read_splits(tmp_path / "one") == read_splits(tmp_path / "two")


def test_split_rows_is_deterministic_for_a_seed():
    """A fresh copy of the same rows with the same seed splits identically (no hidden global state)."""
    rows = sample_rows()
    assert split_rows(rows, SplitConfig(seed=5)) == split_rows(json.loads(json.dumps(rows)), SplitConfig(seed=5))


def test_different_seed_gives_different_splits(tmp_path):
    rows = sample_rows()
    first = run_split(tmp_path / "one", rows, seed=1)
    second = run_split(tmp_path / "two", rows, seed=2)
    for name in SPLITS:
        assert first["fingerprints"][name] != second["fingerprints"][name], name
    assert first["sizes"] == second["sizes"]


def test_fingerprints_are_short_hex(tmp_path):
    manifest = run_split(tmp_path, sample_rows())
    for value in manifest["fingerprints"].values():
        assert len(value) == 16
        int(value, 16)
    assert len(set(manifest["fingerprints"].values())) == 3


# -- stratification and disjointness --------------------------------------------------------


def test_stratification_keeps_label_proportions(tmp_path):
    manifest = run_split(tmp_path, sample_rows())
    labels = ("account", "billing", "shipping", "technical")
    assert manifest["stratify_by"] == "label"
    assert manifest["labels"]["train"] == dict.fromkeys(labels, 80)
    assert manifest["labels"]["validation"] == dict.fromkeys(labels, 10)
    assert manifest["labels"]["test"] == dict.fromkeys(labels, 10)
    on_disk = Counter(r["meta"]["label"] for r in read_splits(tmp_path)["test"])
    assert on_disk == dict.fromkeys(labels, 10)


def test_stratification_with_uneven_labels():
    rows = (
        labelled_rows(60, labels=("big",))
        + labelled_rows(20, labels=("small",))
        + [row(f"extra {i}", label="big") for i in range(20)]
    )
    splits = split_rows(rows, SplitConfig())
    test_labels = Counter(r["meta"]["label"] for r in splits["test"])
    assert test_labels == {"big": 8, "small": 2}


def test_no_row_in_two_splits_and_none_lost(tmp_path):
    rows = sample_rows()
    run_split(tmp_path, rows)
    splits = read_splits(tmp_path)
    keys = {name: [key(r) for r in part] for name, part in splits.items()}
    all_keys = keys["train"] + keys["validation"] + keys["test"]
    assert len(all_keys) == len(set(all_keys)) == len(rows)
    assert set(all_keys) == {key(r) for r in rows}


def test_split_files_hold_canonical_rows(tmp_path):
    run_split(tmp_path, sample_rows())
    for name, part in read_splits(tmp_path).items():
        assert all(set(r) == {"messages", "meta"} for r in part), name
        assert all(r["meta"]["source"] == str(SAMPLE_DATA) for r in part), name


def test_splits_are_interleaved_not_grouped_by_label(tmp_path):
    run_split(tmp_path, sample_rows())
    train_labels = [r["meta"]["label"] for r in read_splits(tmp_path)["train"]]
    first_quarter = set(train_labels[:80])
    assert len(first_quarter) > 1


# -- leakage ----------------------------------------------------------------------------------


def test_leakage_counts_duplicated_prompt_across_splits():
    splits = {
        "train": [row("Where is my ORDER?", "shipping"), row("reset my password")],
        "validation": [row("how do refunds work")],
        "test": [row("where is my order", "a different answer", system="other system prompt"), row("something new")],
    }
    assert leakage(splits) == {"train_validation": 0, "train_test": 1}


def test_leakage_zero_for_distinct_prompts():
    splits = {"train": [row("a b c")], "validation": [row("a b")], "test": [row("b c")]}
    assert leakage(splits) == {"train_validation": 0, "train_test": 0}


def test_leakage_counts_every_leaked_row():
    splits = {"train": [row("same")], "validation": [row("Same!"), row("SAME")], "test": [row(" same ")]}
    assert leakage(splits) == {"train_validation": 2, "train_test": 1}


# -- manifest and errors ----------------------------------------------------------------------


def test_manifest_contract(tmp_path):
    manifest = run_split(tmp_path, sample_rows(), seed=11)
    assert {"seed", "fractions", "sizes", "fingerprints", "leakage"} <= set(manifest)
    assert manifest["seed"] == 11
    assert manifest["fractions"] == {"train": 0.8, "validation": 0.1, "test": 0.1}
    assert set(manifest["sizes"]) == set(manifest["fingerprints"]) == set(SPLITS)
    assert set(manifest["leakage"]) == {"train_validation", "train_test"}
    assert all(isinstance(v, int) and v >= 0 for v in manifest["leakage"].values())
    assert read_json(Workspace(tmp_path).manifest) == manifest


def test_manifest_leakage_matches_written_splits(tmp_path):
    rows = labelled_rows(25)
    rows += [row(r["messages"][0]["content"].upper(), "twin answer", label=r["meta"]["label"]) for r in rows[::5]]
    manifest = run_split(tmp_path, rows)
    assert manifest["leakage"] == leakage(read_splits(tmp_path))


def test_too_few_rows_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="9 usable rows"):
        run_split(tmp_path, [row(f"q{i}", label="a") for i in range(9)])


def test_ten_rows_are_enough(tmp_path):
    manifest = run_split(tmp_path, [row(f"q{i}") for i in range(10)], stratify_by="")
    assert sum(manifest["sizes"].values()) == 10


def test_missing_formatted_file_names_format_notebook(tmp_path):
    with pytest.raises(WorkspaceError) as info:
        split_dataset(SplitConfig(workspace=str(tmp_path)))
    assert "02_format" in str(info.value)
    assert "rows.jsonl" in str(info.value)


# -- grouping, clusters, near-duplicate leakage -----------------------------------------------


def test_group_by_keeps_related_rows_in_one_split(tmp_path):
    rows = [
        row(f"conversation {c} turn {t} asks about item {c * 7 + t}", label="a", conversation=c)
        for c in range(40)
        for t in range(5)
    ]
    manifest = run_split(tmp_path, rows, group_by="conversation", stratify_by="")
    where = {}
    for name, part in read_splits(tmp_path).items():
        for r in part:
            where.setdefault(r["meta"]["conversation"], set()).add(name)
    assert all(len(splits) == 1 for splits in where.values()), "a conversation straddles splits"
    assert manifest["sizes"] == {"train": 160, "validation": 20, "test": 20}  # whole groups of 5
    assert manifest["group_by"] == "conversation"


def test_stratify_by_cluster_balances_the_diversity_clusters(tmp_path):
    topics = {
        "refund": "refund invoice charge billing card payment",
        "login": "password login reset account email",
        "crash": "app crash error bug freeze update",
        "parcel": "parcel delivery tracking courier address",
    }
    rows = [row(f"{words} number {i} please {topic}", label="x") for topic, words in topics.items() for i in range(30)]
    manifest = run_split(tmp_path, rows, stratify_by="cluster")
    clusters = manifest["labels"]
    assert sum(clusters["test"].values()) == 12
    # every cluster found is represented in test in proportion (largest remainder: +-1)
    for cluster, n_train in clusters["train"].items():
        total = n_train + clusters["validation"].get(cluster, 0) + clusters["test"].get(cluster, 0)
        assert abs(clusters["test"].get(cluster, 0) - total * 0.1) <= 1


def test_near_duplicate_leak_is_found_listed_and_can_be_dropped(tmp_path):
    rows = labelled_rows(25)
    base = (
        "my parcel with order 12345 never arrived and the tracking page has not changed for a week so I "
        "called the courier twice and they told me to contact the shop about the missing delivery today"
    )
    rows += [row(base + f" {suffix}", "shipping", label="a") for suffix in ("please help", "please help!!", "help")]
    kept = run_split(tmp_path / "keep", rows, seed=3)
    found = sum(kept["leakage_found"].values())
    assert found == sum(kept["leakage"].values())
    leaked_rows = [
        r
        for part in ("validation", "test")
        for r in read_splits(tmp_path / "keep")[part]
        if "parcel" in r["messages"][0]["content"]
    ]
    trained = any("parcel" in r["messages"][0]["content"] for r in read_splits(tmp_path / "keep")["train"])
    assert found == (len(leaked_rows) if trained else 0)
    dropped = run_split(tmp_path / "drop", rows, seed=3, drop_leaked=True)
    assert dropped["leaked_dropped"] == found and sum(dropped["leakage"].values()) == 0
    splits = read_splits(tmp_path / "drop")
    assert sum(len(p) for p in splits.values()) + found == len(rows)  # nothing lost: the rest is in leaked.jsonl
    assert len(read_jsonl(Workspace(tmp_path / "drop").splits / "leaked.jsonl")) == found


def test_leak_examples_name_both_rows():
    splits = {
        "train": [row("where is my order 991 it is late", line=4)],
        "validation": [],
        "test": [row("Where is my order 991, it is late!", "other", line=9)],
    }
    from nbkit.data.split import find_leaks

    (leak,) = find_leaks(splits)["test"]
    assert leak["kind"] == "same prompt" and leak["row"]["line"] == 9 and leak["copies"]["line"] == 4
