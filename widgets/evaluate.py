"""Panels for notebook 05: pick the run, then compare base and tuned answers side by side."""

from __future__ import annotations

import difflib
import html
from typing import Any

from nbkit.core.metrics import TASK_METRIC_CHOICES
from nbkit.core.runs import list_runs
from nbkit.evaluate.evaluator import EvalConfig
from nbkit.widgets.pager import Pager
from nbkit.widgets.panel import ConfigForm, css


def eval_panel(config: EvalConfig) -> ConfigForm:
    runs = list_runs(config.workspace)
    choices = {"task_metric": TASK_METRIC_CHOICES}
    if runs:
        choices["run_id"] = tuple([""] + runs[::-1])
    fields = ["run_id", "max_examples", "max_new_tokens", "batch_size", "task_metric", "export_formats"]
    form = ConfigForm(config, fields, choices=choices, title="Which run to evaluate (empty = latest)")
    css(form.box, "nbkit-eval-panel")
    return form


def diff_html(answer: str, reference: str) -> str:
    """The answer with the words that differ from the reference highlighted (difflib, word level)."""
    words, ref = answer.split(" "), reference.split(" ")
    out = []
    for op, a0, a1, _b0, _b1 in difflib.SequenceMatcher(a=words, b=ref, autojunk=False).get_opcodes():
        text = html.escape(" ".join(words[a0:a1]))
        if text:
            out.append(text if op == "equal" else f'<mark class="nbkit-diff">{text}</mark>')
    return " ".join(out)


def _answer(label: str, text: str, reference: str, correct: float) -> str:
    colour = "#e8f5e9" if correct else "#ffebee"
    mark = "✓" if correct else "✗"
    return (
        f'<div class="nbkit-answer-{label}" style="background:{colour};padding:4px 8px;margin:2px 0;'
        f'white-space:pre-wrap"><b>{label} {mark}</b> {diff_html(text, reference)}</div>'
    )


def comparison_html(row: dict[str, Any]) -> str:
    return (
        f'<div style="white-space:pre-wrap;background:#e3f2fd;padding:4px 8px"><b>prompt</b> '
        f"{html.escape(row['prompt'])}</div>"
        f'<div style="padding:4px 8px"><b>reference</b> {html.escape(row["reference"])}</div>'
        + _answer("base", row["base"], row["reference"], row["base_exact_match"])
        + _answer("tuned", row["tuned"], row["reference"], row["tuned_exact_match"])
    )


def comparison_viewer(predictions: list[dict[str, Any]]) -> Pager:
    """Page through test rows: prompt, reference, base answer, tuned answer (green = exact match)."""
    return Pager(predictions, comparison_html, "Base vs tuned on the test split", name="compare")


def runs_figure(table):
    """Every evaluated run's tuned metrics (0-1 scale) side by side, with the base model for reference."""
    import plotly.graph_objects as go

    fig = go.Figure()
    columns = [c for c in table.columns if c.startswith("tuned_") and c != "tuned_perplexity"]
    for column in columns:
        fig.add_bar(name=column.removeprefix("tuned_"), x=list(table.index), y=list(table[column]))
    if "base_exact_match" in table:
        fig.add_scatter(
            name="base exact_match",
            x=list(table.index),
            y=list(table["base_exact_match"]),
            mode="markers",
            marker={"symbol": "x", "size": 12},
        )
    fig.update_layout(barmode="group", title="Runs compared (tuned model)", yaxis_title="score", height=360)
    return fig
