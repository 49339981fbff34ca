"""Runs compared across the workspace, and word-level differences in the side-by-side view."""

from __future__ import annotations

import json

from nbkit.core.files import write_json
from nbkit.core.runs import compare_runs
from nbkit.core.workspace import Workspace
from nbkit.widgets import runs_figure
from nbkit.widgets.evaluate import comparison_html, diff_html


def fake_run(ws: Workspace, run_id: str, lr: float, tuned_em: float | None) -> None:
    run_dir = ws.run_dir(run_id)
    write_json(run_dir / "adapter" / "adapter_config.json", {"peft_type": "LORA"})
    write_json(run_dir / "config.json", {"learning_rate": lr, "lora_r": 8})
    write_json(
        run_dir / "run.json",
        {
            "base_model": "m",
            "method": "qlora",
            "steps": 10,
            "train_loss": {"last": 0.5},
            "eval_loss": 0.6,
            "dataset": {"fingerprints": {"train": "abc"}},
        },
    )
    if tuned_em is not None:
        write_json(
            run_dir / "eval" / "summary.json",
            {
                "task_metric": "exact_match",
                "base": {"exact_match": 0.0, "perplexity": 40.0, "loss": 3.7},
                "tuned": {"exact_match": tuned_em, "perplexity": 1.1, "loss": 0.1},
            },
        )


def test_compare_runs_lists_every_run_with_its_metrics(tmp_path):
    ws = Workspace(tmp_path)
    fake_run(ws, "20260101-a", 1e-3, 0.75)
    fake_run(ws, "20260102-b", 5e-4, 0.5)
    fake_run(ws, "20260103-c", 2e-4, None)  # trained, not evaluated yet: still listed
    table = compare_runs(tmp_path)
    assert list(table.index) == ["20260101-a", "20260102-b", "20260103-c"]
    assert table.loc["20260101-a", "tuned_exact_match"] == 0.75 and table.loc["20260102-b", "learning_rate"] == 5e-4
    assert "tuned_loss" not in table.columns and table.loc["20260101-a", "train_data"] == "abc"
    assert table["tuned_exact_match"].isna().tolist() == [False, False, True]
    fig = runs_figure(table)
    bars = {trace.name: list(trace.y) for trace in fig.data if trace.type == "bar"}
    assert bars["exact_match"][:2] == [0.75, 0.5]


def test_compare_runs_on_an_empty_workspace(tmp_path):
    assert compare_runs(tmp_path).empty


def test_diff_marks_only_the_words_that_differ():
    html = diff_html('{"team": "billing", "priority": "high"}', '{"team": "billing", "priority": "low"}')
    assert html.count('<mark class="nbkit-diff">') == 1 and "high" in html.split("<mark")[1]
    assert "<mark" not in diff_html("same words", "same words")
    row = {
        "prompt": "p",
        "reference": "a b c",
        "base": "x y z",
        "tuned": "a b c",
        "base_exact_match": 0.0,
        "tuned_exact_match": 1.0,
    }
    page = comparison_html(row)
    assert page.split("nbkit-answer-tuned")[1].count("<mark") == 0
    assert page.split("nbkit-answer-base")[1].split("nbkit-answer-tuned")[0].count("<mark") == 1


def test_lineage_puts_base_sft_and_preference_run_side_by_side(tmp_path):
    from nbkit.core.runs import is_preference_run, lineage
    from nbkit.evaluate.lineage import lineage_table

    ws = Workspace(tmp_path)
    fake_run(ws, "20260101-sft", 1e-3, 0.70)
    fake_run(ws, "20260102-dpo", 5e-5, 0.75)
    record = {
        **json.loads((ws.run_dir("20260102-dpo") / "run.json").read_text()),
        "parent_run": "20260101-sft",
        "objective": "dpo",
    }
    write_json(ws.run_dir("20260102-dpo") / "run.json", record)
    for run_id, kept, runaway in (("20260101-sft", 8, 1), ("20260102-dpo", 6, 3)):
        path = ws.run_dir(run_id) / "eval" / "summary.json"
        summary = json.loads(path.read_text())
        write_json(
            path, {**summary, "forgetting": {"base_right": 10, "kept": kept}, "runaway": {"base": 5, "tuned": runaway}}
        )
    assert lineage(tmp_path, "20260102-dpo") == ["20260101-sft", "20260102-dpo"]
    assert is_preference_run(tmp_path, "20260102-dpo") and not is_preference_run(tmp_path, "20260101-sft")
    table = lineage_table(tmp_path, "20260102-dpo")
    assert list(table.columns) == ["base", "sft 20260101-sft", "dpo 20260102-dpo"]
    assert table.loc["exact_match"].tolist() == [0.0, 0.70, 0.75]
    assert table.loc["probe_kept"].tolist() == [1.0, 0.8, 0.6] and table.loc["runaway"].tolist() == [5, 1, 3]
    assert list(table.index)[-4:] == ["loss", "perplexity", "probe_kept", "runaway"]
    compared = compare_runs(tmp_path)
    assert compared.loc["20260102-dpo", "parent_run"] == "20260101-sft"
    assert compared.loc["20260102-dpo", "objective"] == "dpo" and compared.loc["20260101-sft", "objective"] == "sft"
