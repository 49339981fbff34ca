"""Blind A/B ratings: seeded and balanced sides, nothing visible gives the models away, verdicts persist,
and the win rate's Wilson interval matches hand-computed values."""

from __future__ import annotations

import json
import math
import re

import pytest

import nbkit.widgets as nw
from nbkit.core.errors import ConfigError
from nbkit.evaluate import ratings


def predictions(n: int) -> list[dict]:
    # Answers carry no model name, so any "base"/"tuned" in the panel would be a label leak.
    return [
        {
            "prompt": f"question {i}",
            "reference": f"ref {i}",
            "base": f"plain answer {i}",
            "tuned": f"better answer {i}",
            "base_exact_match": 0.0,
            "tuned_exact_match": 1.0,
        }
        for i in range(n)
    ]


@pytest.fixture
def workspace(tmp_path):
    run = tmp_path / "runs" / "r1"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    (run / "eval").mkdir()
    (run / "eval" / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in predictions(6)))
    return tmp_path


def test_pairs_are_seeded_balanced_and_keep_the_answers():
    rows = predictions(20)
    first = ratings.pairs_from_predictions(rows, seed=1)
    assert first == ratings.pairs_from_predictions(rows, seed=1)
    assert [p["sides"] for p in first] != [p["sides"] for p in ratings.pairs_from_predictions(rows, seed=2)]
    assert sum(p["sides"]["A"] == "tuned" for p in first) == 10  # exactly balanced
    for pair, row in zip(first, rows):
        assert pair["prompt"] == row["prompt"] and pair["reference"] == row["reference"]
        assert {pair["sides"]["A"], pair["sides"]["B"]} == {"base", "tuned"}
        assert pair["A"] == row[pair["sides"]["A"]] and pair["B"] == row[pair["sides"]["B"]]
    odd = ratings.pairs_from_predictions(predictions(7), seed=3)
    assert sum(p["sides"]["A"] == "tuned" for p in odd) in (3, 4)


def test_wilson_interval_matches_hand_computation():
    # 5 of 10: centre 0.5, half-width 1.96/(1+1.96²/10) * sqrt(0.025 + 1.96²/400) = 0.2634
    low, high = ratings.wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    # 0 of 10: [0, z²/(n+z²)] = [0, 3.8415/13.8415]
    low, high = ratings.wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(3.8415 / 13.8415, abs=1e-4)
    z = ratings.Z_95  # 8 of 13, written out
    p, n = 8 / 13, 13
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert ratings.wilson_interval(8, 13) == pytest.approx((centre - half, centre + half))
    assert ratings.wilson_interval(8, 13) == pytest.approx((0.3552, 0.8229), abs=1e-4)


def test_summary_counts_ties_as_half_a_win():
    rows = [{"winner": w} for w in ["tuned"] * 4 + ["base"] * 2 + ["tie"] * 4]
    summary = ratings.summarize(rows)
    assert summary["n"] == 10 and (summary["tuned_wins"], summary["base_wins"], summary["ties"]) == (4, 2, 4)
    assert summary["win_rate"] == pytest.approx(0.6)  # (4 + 4/2) / 10
    assert (summary["ci_low"], summary["ci_high"]) == pytest.approx(ratings.wilson_interval(6, 10))
    assert ratings.summary_line(summary) == "tuned wins 60% (95% CI 31–83%) over 10 ratings"
    empty = ratings.summarize([])
    assert empty["n"] == 0 and empty["win_rate"] is None and ratings.summary_line(empty) == "no ratings yet"


def test_save_rating_records_the_winner_behind_the_letter(tmp_path):
    pair = {"prompt": "p", "A": "x", "B": "y", "sides": {"A": "tuned", "B": "base"}}
    assert ratings.save_rating(tmp_path, pair, "A")["winner"] == "tuned"
    assert ratings.save_rating(tmp_path, pair, "B")["winner"] == "base"
    assert ratings.save_rating(tmp_path, pair, "tie")["winner"] == "tie"
    saved = ratings.load_ratings(tmp_path)
    assert [r["choice"] for r in saved] == ["A", "B", "tie"]
    assert set(saved[0]) == {"prompt", "choice", "winner", "time"}
    with pytest.raises(ConfigError, match="`choice`"):
        ratings.save_rating(tmp_path, pair, "C")


def visible_text(panel: nw.RatingPanel) -> str:
    """What the rater can read: pair view, progress, button labels (tags and class names stripped)."""
    shown = [panel.view.value, panel.progress.value] + [b.description for b in panel.buttons.values()]
    return re.sub(r"<[^>]+>", " ", " ".join(shown))


def test_panel_is_blind_and_buttons_write_the_right_winner(workspace):
    panel = nw.RatingPanel(str(workspace), "r1", seed=0)
    assert "nbkit-rating-a" in panel.buttons["A"]._dom_classes and "nbkit-rating" in panel.box._dom_classes
    assert "application/vnd.jupyter.widget-view+json" in panel._repr_mimebundle_()
    expected = []
    for button in ("A", "tie", "B"):
        pair = panel.current
        text = visible_text(panel)
        assert "question" in text and not re.search(r"base|tuned", text, re.IGNORECASE)
        assert "base" not in panel.view.value and "tuned" not in panel.view.value  # not even in markup
        expected.append(("tie" if button == "tie" else pair["sides"][button], pair["prompt"]))
        panel.buttons[button].click()
    saved = ratings.load_ratings(workspace / "runs" / "r1")
    assert [(r["winner"], r["prompt"]) for r in saved] == expected
    assert panel.progress.value == "rated 3 of 6"
    assert panel.summary.value.count("over 3 ratings") == 1 and panel.status.value == ""


def test_reopening_skips_rated_prompts_and_finishes(workspace):
    first = nw.RatingPanel(str(workspace), "r1")
    rated = []
    for _ in range(2):
        rated.append(first.current["prompt"])
        first.buttons["B"].click()
    again = nw.RatingPanel(str(workspace))  # empty run_id = the latest run
    assert again.progress.value == "rated 2 of 6"
    seen = []
    while again.current is not None:
        seen.append(again.current["prompt"])
        again.buttons["tie"].click()
    assert not set(seen) & set(rated) and len(seen) == 4
    assert "All 6 prompts are rated" in again.view.value
    assert all(b.disabled for b in again.buttons.values())
    assert "over 6 ratings" in again.summary.value
    with pytest.raises(Exception, match="already rated"):
        again.rate("A")


def test_callback_errors_are_shown_in_the_panel(workspace, monkeypatch):
    panel = nw.RatingPanel(str(workspace), "r1")

    def broken(*_args):
        raise OSError("disk full")

    monkeypatch.setattr(ratings, "save_rating", broken)
    panel.buttons["A"].click()
    assert "disk full" in panel.status.value and panel.progress.value == "rated 0 of 6"


def test_hidden_summary_until_done(workspace):
    panel = nw.RatingPanel(str(workspace), "r1", live_summary=False)
    panel.buttons["A"].click()
    assert "tuned" not in panel.summary.value and "%" not in panel.summary.value


def test_missing_predictions_say_which_step_to_run(tmp_path):
    (tmp_path / "runs" / "r1" / "adapter").mkdir(parents=True)
    (tmp_path / "runs" / "r1" / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(Exception, match="05_evaluate"):
        nw.RatingPanel(str(tmp_path), "r1")
