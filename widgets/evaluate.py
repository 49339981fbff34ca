"""Panels for notebook 05: pick the run, then compare base and tuned answers side by side."""

from __future__ import annotations

import html
from typing import Any

from nbkit.evaluate import EvalConfig
from nbkit.runs import list_runs
from nbkit.widgets.pager import Pager
from nbkit.widgets.panel import ConfigForm


def eval_panel(config: EvalConfig) -> ConfigForm:
    runs = list_runs(config.workspace)
    choices = {"task_metric": ("", "exact_match", "macro_f1", "accuracy", "rouge_l", "bleu", "field_accuracy")}
    if runs:
        choices["run_id"] = tuple([""] + runs[::-1])
    return ConfigForm(config, ["run_id", "max_examples", "max_new_tokens", "batch_size", "task_metric"],
                      choices=choices, title="Which run to evaluate (empty = latest)")


def _answer(label: str, text: str, correct: float) -> str:
    colour = "#e8f5e9" if correct else "#ffebee"
    mark = "✓" if correct else "✗"
    return (f'<div class="nbkit-answer-{label}" style="background:{colour};padding:4px 8px;margin:2px 0;'
            f'white-space:pre-wrap"><b>{label} {mark}</b> {html.escape(text)}</div>')


def comparison_html(row: dict[str, Any]) -> str:
    return (f'<div style="white-space:pre-wrap;background:#e3f2fd;padding:4px 8px"><b>prompt</b> '
            f'{html.escape(row["prompt"])}</div>'
            f'<div style="padding:4px 8px"><b>reference</b> {html.escape(row["reference"])}</div>'
            + _answer("base", row["base"], row["base_exact_match"])
            + _answer("tuned", row["tuned"], row["tuned_exact_match"]))


def comparison_viewer(predictions: list[dict[str, Any]]) -> Pager:
    """Page through test rows: prompt, reference, base answer, tuned answer (green = exact match)."""
    return Pager(predictions, comparison_html, "Base vs tuned on the test split", name="compare")
