"""Blind A/B ratings: a person judges base vs. tuned answers without knowing which is which.

Metrics such as exact match miss what a reader notices (tone, helpfulness, a right answer in
other words). Here each test prompt's two answers are shown as "A" and "B"; which side is the
tuned model is drawn with a seeded RNG and kept in the pair, never shown. Each verdict is
appended to runs/<run_id>/eval/ratings.jsonl together with the winner it implies, so the
ratings survive restarts and a re-opened panel continues where the last one stopped.

The summary is a win rate with ties counted as half a win, and its 95% Wilson score
interval: with few ratings the interval is wide, and that width is the honest answer.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nbkit.core.errors import ConfigError
from nbkit.core.files import append_jsonl, read_appended, read_jsonl
from nbkit.core.runs import resolve_run
from nbkit.core.workspace import Workspace

CHOICES = ("A", "B", "tie")
Z_95 = 1.959963984540054  # two-sided 95% normal quantile


def predictions_path(workspace: str | Path, run_id: str) -> Path:
    return Workspace(workspace).run_dir(run_id) / "eval" / "predictions.jsonl"


def ratings_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "eval" / "ratings.jsonl"


def load_predictions(workspace: str | Path, run_id: str = "") -> tuple[str, list[dict[str, Any]]]:
    """(run id, rows of predictions.jsonl) for the given run, or the latest one when empty."""
    ws = Workspace(workspace)
    run_id = resolve_run(ws.root, run_id)
    path = ws.require(predictions_path(ws.root, run_id), "05_evaluate (the evaluate cell)")
    return run_id, read_jsonl(path)


def pairs_from_predictions(predictions: Iterable[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """One blind pair per prediction row: {"prompt", "reference", "A", "B", "sides"}.

    `sides` maps "A"/"B" to "base"/"tuned" and must stay hidden from the rater. The tuned
    answer is on side A for exactly half of the pairs (the extra one of an odd count goes
    either way), in an order drawn from `seed`: a position bias of the rater then cancels
    out instead of favouring one model.
    """
    rows = list(predictions)
    tuned_first = [i < len(rows) // 2 for i in range(len(rows))]
    rng = random.Random(seed)
    if len(rows) % 2:
        tuned_first[-1] = rng.random() < 0.5
    rng.shuffle(tuned_first)
    pairs = []
    for row, first in zip(rows, tuned_first):
        sides = {"A": "tuned", "B": "base"} if first else {"A": "base", "B": "tuned"}
        pairs.append(
            {
                "prompt": row["prompt"],
                "reference": row.get("reference", ""),
                "A": row[sides["A"]],
                "B": row[sides["B"]],
                "sides": sides,
            }
        )
    return pairs


def winner_of(pair: dict[str, Any], choice: str) -> str:
    """ "base", "tuned" or "tie" for a choice of "A", "B" or "tie"."""
    if choice not in CHOICES:
        raise ConfigError(f"`choice` must be one of {CHOICES}, got {choice!r}.")
    return "tie" if choice == "tie" else pair["sides"][choice]


def save_rating(run_dir: str | Path, pair: dict[str, Any], choice: str) -> dict[str, Any]:
    """Append one verdict to RUN_DIR/eval/ratings.jsonl and return the record written."""
    record = {
        "prompt": pair["prompt"],
        "choice": choice,
        "winner": winner_of(pair, choice),
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    append_jsonl(ratings_path(run_dir), record)
    return record


def load_ratings(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every complete rating; a line cut off by a kill mid-write is set aside with a warning (read_appended)."""
    return read_appended(ratings_path(run_dir))


def unrated(pairs: list[dict[str, Any]], ratings: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pairs whose prompt has no rating yet, in their order."""
    done = {r["prompt"] for r in ratings}
    return [p for p in pairs if p["prompt"] not in done]


def wilson_interval(successes: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a proportion; stays inside [0, 1] and is sane for small n."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize(ratings: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """{"n", "tuned_wins", "base_wins", "ties", "win_rate", "ci_low", "ci_high"}; ties count half.

    With no ratings the win rate is None and the interval is [0, 1] (nothing is known).
    """
    winners = [r["winner"] for r in ratings]
    n = len(winners)
    tuned, base, ties = winners.count("tuned"), winners.count("base"), winners.count("tie")
    score = tuned + 0.5 * ties
    low, high = wilson_interval(score, n)
    return {
        "n": n,
        "tuned_wins": tuned,
        "base_wins": base,
        "ties": ties,
        "win_rate": score / n if n else None,
        "ci_low": low,
        "ci_high": high,
    }


def summary_line(summary: dict[str, Any]) -> str:
    """ "tuned wins 62% (95% CI 41–79%) over 13 ratings" — ties count as half a win."""
    n = summary["n"]
    if not n:
        return "no ratings yet"
    return (
        f"tuned wins {summary['win_rate']:.0%} (95% CI {summary['ci_low'] * 100:.0f}–"
        f"{summary['ci_high'] * 100:.0f}%) over {n} rating{'s' if n != 1 else ''}"
    )
