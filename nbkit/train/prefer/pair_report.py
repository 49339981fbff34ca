"""What the pairs report says, for people: examples per source, notes on what was left out, a summary, and the
pairs as a table for 06's viewer."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from nbkit.core.files import read_jsonl
from nbkit.core.workspace import Workspace

COUNTS = ("read", "built", "kept", "ties", "not_train", "duplicates", "identical", "no_margin", "rejected")


def examples(pairs: list[dict[str, Any]], per_source: int = 2, width: int = 300) -> list[dict[str, str]]:
    """The first few kept pairs of each source, as text."""
    shown: Counter = Counter()
    out = []
    for pair in pairs:
        shown[pair["source"]] += 1
        if shown[pair["source"]] <= per_source:
            out.append({"source": pair["source"], **{k: v[:width] for k, v in text_row(pair).items()}})
    return out


def notes(report: dict[str, Any]) -> list[str]:
    """What a person should know about the counts, in plain words."""
    found = []
    rating = report["sources"].get("rating", {})
    if rating.get("not_train"):
        found.append(
            f"{rating['not_train']} rated pair(s) are not on training prompts and were left out: 05 rates "
            "the test split, and training on test prompts would leak them into training (the test score "
            "would stop meaning anything). Rate sampled answers to training prompts in 06 instead."
        )
    if report["sources"].get("correction", {}).get("not_train"):
        found.append(
            f"{report['sources']['correction']['not_train']} corrected answer(s) are not in the training "
            "split yet: run 01 to 03 again to take them in (or they landed in validation or test)."
        )
    if not report["total"]:
        found.append(
            "No pairs yet: rate sampled answers in 06, correct and promote answers in the playground, add "
            "a preference file, or use the metric source."
        )
    return found


def describe_pairs(report: dict[str, Any]) -> str:
    """The report in a few lines: pairs kept per source, what was left out and why, then the notes."""
    lines = [
        f"{report['total']} preference pairs from {report['train_prompts']} training prompts (SFT run "
        f"{report['run_id'] or 'none'}):"
    ]
    for name, c in report["sources"].items():
        left = ", ".join(f"{c[k]} {k.replace('_', ' ')}" for k in COUNTS[3:] if c[k])
        lines.append(f"  {name}: {c['kept']} kept of {c['read']} read" + (f" ({left})" if left else ""))
    return "\n".join(lines + [f"Note: {n}" for n in report["notes"]])


def load_pairs(workspace: str | Path) -> list[dict[str, Any]]:
    ws = Workspace(workspace)
    return read_jsonl(ws.require(ws.pairs, "06 (build_pairs)"))


def text_row(pair: dict[str, Any]) -> dict[str, str]:
    return {
        "prompt": pair["prompt"][-1]["content"],
        "chosen": pair["chosen"][0]["content"],
        "rejected": pair["rejected"][0]["content"],
    }


def pairs_table(pairs: list[dict[str, Any]]):
    """The pairs as a DataFrame for the notebook's viewer: source, prompt (its last user turn), chosen, rejected."""
    import pandas as pd

    return pd.DataFrame(
        [{"source": p["source"], **text_row(p)} for p in pairs], columns=["source", "prompt", "chosen", "rejected"]
    )
