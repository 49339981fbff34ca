"""Evaluation at full depth: warnings, best/worst examples, the forgetting probe and the report."""

from __future__ import annotations

import json
import shutil

import pytest

from nbkit.core.metrics import row_score
from nbkit.core.train_config import TrainConfig
from nbkit.core.workspace import Workspace
from nbkit.evaluate.evaluator import EvalConfig, best_and_worst, evaluate
from nbkit.evaluate.forgetting import FORGETTING_PROBE, forgetting_scores, probe_hit
from nbkit.evaluate.report import write_report
from nbkit.evaluate.summary import (
    describe_forgetting,
    examples_table,
    forgetting_table,
    format_summary,
    format_warnings,
    quality_warnings,
)
from nbkit.train.sft import train


def fake_summary(score=0.97, n_test=40, metric="exact_match"):
    return {
        "run_id": "r1",
        "base_model": "m",
        "method": "qlora",
        "n_test": n_test,
        "task_metric": metric,
        "base": {metric: 0.1, "perplexity": 9.0, "loss": 2.2},
        "tuned": {metric: score, "perplexity": 1.5, "loss": 0.4},
    }


LEAKY = {"leakage": {"train_validation": 2, "train_test": 3}, "leakage_found": {"train_validation": 2, "train_test": 3}}
DROPPED = {
    "leakage": {"train_validation": 0, "train_test": 0},
    "leakage_found": {"train_validation": 2, "train_test": 3},
}


def test_a_near_perfect_score_with_leaked_rows_is_flagged_with_counts_and_fix():
    (warning,) = quality_warnings(fake_summary(0.97), LEAKY)
    assert "0.97 exact_match" in warning and "3 test rows" in warning and "2 validation rows" in warning
    assert "drop_leaked" in warning and "drop_near_duplicates" in warning
    assert quality_warnings(fake_summary(0.95), LEAKY), "the threshold is inclusive"


@pytest.mark.parametrize(
    "summary, manifest",
    [
        (fake_summary(0.94), LEAKY),  # good, not suspicious
        (fake_summary(1.0), DROPPED),  # leaks were found but dropped in 03
        (fake_summary(1.0), {}),  # no manifest
        (fake_summary(1.0, metric="perplexity"), LEAKY),  # lower-is-better metric: no "too good" rule
        ({**fake_summary(), "task_metric": "rouge_l"}, LEAKY),  # headline metric missing from the scores
    ],
)
def test_no_leak_warning_without_both_a_high_score_and_remaining_leaks(summary, manifest):
    assert quality_warnings(summary, manifest) == []


def test_few_test_rows_are_called_noisy():
    warnings = quality_warnings(fake_summary(0.5, n_test=6), {})
    assert len(warnings) == 1 and "noisy" in warnings[0] and "6 test rows" in warnings[0]
    assert len(quality_warnings(fake_summary(0.99, n_test=10), LEAKY)) == 2
    assert quality_warnings(fake_summary(0.5, n_test=30), {}) == []
    assert format_warnings({"warnings": []}).startswith("No warnings")


def test_row_scores_follow_the_kind_of_answer():
    assert row_score('{"a": 1, "b": 2}', '{"b": 2, "a": 1}', "json") == 1.0
    assert row_score('{"a": 1, "b": 3}', '{"a": 1, "b": 2}', "json") == 0.5
    assert row_score("not json", '{"a": 1}', "json") == 0.0
    assert row_score("Billing.", "billing", "label") == 1.0
    assert 0.0 < row_score("the cat sat", "the cat sat on the mat", "text") < 1.0


def test_best_and_worst_are_ordered_and_disjoint():
    preds = [
        {"prompt": f"p{i}", "reference": "r", "base": "b", "tuned": "t", "base_score": 0.0, "tuned_score": s}
        for i, s in enumerate([0.5, 1.0, 0.0, 0.25, 1.0, 0.75, 0.1])
    ]
    examples = best_and_worst(preds)
    assert [e["index"] for e in examples["best"]] == [1, 4, 5]  # ties keep test order
    assert [e["index"] for e in examples["worst"]] == [2, 6, 3]
    assert set(examples["best"][0]) >= {"prompt", "reference", "base", "tuned", "tuned_score"}
    few = best_and_worst(preds[:3])
    assert len(few["best"]) == 2 and len(few["worst"]) == 1 and best_and_worst([]) == {"best": [], "worst": []}


def test_probe_matching_and_structure():
    assert probe_hit("The capital of France is Paris.", ("paris",))
    assert not probe_hit("Parisian food is great", ("paris",))  # whole words only
    assert probe_hit("2 + 2 = 4", ("4", "four"))
    assert len(FORGETTING_PROBE) >= 40
    base = ["Paris"] + ["x"] * (len(FORGETTING_PROBE) - 1)
    result = forgetting_scores(base, ["Lyon"] * len(FORGETTING_PROBE))
    assert result["base"] == pytest.approx(1 / len(FORGETTING_PROBE)) and result["tuned"] == 0.0
    assert [c["prompt"] for c in result["changed"]] == [FORGETTING_PROBE[0][0]]
    assert set(result["changed"][0]) >= {"prompt", "base", "tuned"}


def test_report_escapes_text_and_holds_every_section(tmp_path):
    summary = {
        **fake_summary(0.97, n_test=2),
        "row_score": "field_accuracy",
        "examples": {
            "best": [
                {
                    "index": 0,
                    "prompt": "<script>x</script> | pipe",
                    "reference": "r",
                    "base": "b",
                    "tuned": "t",
                    "base_score": 0.0,
                    "tuned_score": 1.0,
                }
            ],
            "worst": [],
        },
        "forgetting": forgetting_scores(["Paris"] * len(FORGETTING_PROBE), ["Paris"] * len(FORGETTING_PROBE)),
    }
    summary["warnings"] = quality_warnings(summary, LEAKY)
    path = write_report(summary, [{}, {}], tmp_path)
    markdown, page = path.read_text(), (tmp_path / "eval" / "report.html").read_text()
    assert path == tmp_path / "eval" / "report.md"
    assert "| **exact_match** | 0.1000 | 0.9700 | +0.8700 |" in markdown and "\\| pipe" in markdown
    assert "<script>x</script>" not in page and "&lt;script&gt;" in page and "<svg" in page
    for text in ("drop_leaked", "Forgetting probe", "Best and worst", "predictions.jsonl"):
        assert text in markdown and text in page
    assert "http" not in page.replace("http://www.w3.org/2000/svg", ""), "the page must not load anything"


# -- on the embedded model --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def evaluated(prepared_workspace, tmp_path_factory):
    ws = tmp_path_factory.mktemp("evaluate-more") / "workspace"
    shutil.copytree(prepared_workspace, ws, ignore=shutil.ignore_patterns("runs"))
    train(
        TrainConfig(
            workspace=str(ws),
            run_id="more-run",
            max_steps=2,
            batch_size=4,
            max_seq_len=160,
            eval_steps=0,
            lora_r=8,
            lora_alpha=16,
            logging_steps=1,
        ),
        on_log=None,
    )
    summary = evaluate(EvalConfig(workspace=str(ws), run_id="more-run", max_examples=4, batch_size=4))
    return Workspace(ws), summary


@pytest.mark.model
def test_full_summary_has_warnings_examples_and_forgetting(evaluated):
    ws, summary = evaluated
    assert any("noisy" in w for w in summary["warnings"])  # 4 rows
    examples = summary["examples"]
    assert len(examples["best"]) == 2 and len(examples["worst"]) == 2
    scores = [e["tuned_score"] for e in examples["best"] + examples["worst"][::-1]]
    assert scores == sorted(scores, reverse=True)
    forgetting = summary["forgetting"]
    assert forgetting["n"] == len(FORGETTING_PROBE) and 0 <= forgetting["tuned"] <= 1
    capital = forgetting["items"][0]
    assert capital["prompt"] == "What is the capital of France?" and "Paris" in capital["base"]
    assert capital["base_correct"] and forgetting["base"] >= 0.5
    saved = json.loads((ws.run_dir("more-run") / "eval" / "summary.json").read_text())
    assert saved == summary
    assert len(examples_table(summary)) == 4 and len(forgetting_table(summary)) == len(FORGETTING_PROBE)
    assert "forgetting probe" in format_summary(summary) and forgetting["reading"] in format_summary(summary)
    assert summary["replay"]["rows"] == 57  # the prepared workspace trains with the replay guard on
    assert "replay guard on (57 replay rows, 15% of training)" in describe_forgetting(summary)


@pytest.mark.model
def test_report_files_hold_the_metrics(evaluated):
    ws, summary = evaluated
    markdown = (ws.root / summary["report"]["markdown"]).read_text()
    page = (ws.root / summary["report"]["html"]).read_text()
    tuned = summary["tuned"]["exact_match"]
    assert f"{tuned:.4f}" in markdown and f"{tuned:.4f}" in page
    assert "perplexity" in markdown and "<svg" in page and "noisy" in page


class FixedGenerator:
    """Stands in for a model: `generate` returns fixed new tokens after the prompt (2 = end of turn, 0 = padding)."""

    def __init__(self, new_tokens, eos=2):
        import torch

        self.new_tokens = torch.tensor(new_tokens)
        self.generation_config = type("G", (), {"eos_token_id": [eos]})()
        self.device = "cpu"

    def generate(self, input_ids, **_):
        import torch

        rows = input_ids.shape[0]
        return torch.cat([input_ids, self.new_tokens[:rows]], dim=1)


def test_runaway_answers_are_counted_and_warned_about(tokenizer):
    from nbkit.evaluate.evaluator import runaway_summary
    from nbkit.evaluate.summary import quality_warnings
    from nbkit.model.generation import generate_with_stops

    prompts = [[{"role": "user", "content": f"question {i}"}] for i in range(3)]
    # row 0 ends with the end-of-turn token, row 1 runs to the limit, row 2 stops and is padded
    model = FixedGenerator([[11, 12, 2, 2], [11, 12, 13, 14], [11, 2, 2, 2]])
    answers, stopped = generate_with_stops(model, tokenizer, prompts, max_new_tokens=4)
    assert stopped == [True, False, True] and len(answers) == 3
    short = FixedGenerator([[11, 12], [11, 12], [11, 12]])  # every row ended early: the batch stopped before the limit
    assert generate_with_stops(short, tokenizer, prompts, max_new_tokens=4)[1] == [True, True, True]

    summary = runaway_summary({"base": answers, "tuned": answers}, {"base": [True] * 3, "tuned": stopped}, prompts, 4)
    assert (summary["base"], summary["tuned"]) == (0, 1)
    assert summary["examples"] == [{"prompt": "question 1", "tuned": answers[1]}]
    [warning] = quality_warnings(
        {"runaway": summary, "n_test": 40, "task_metric": "exact_match", "tuned": {"exact_match": 0.5}}, {}
    )
    assert "without its end-of-turn token on 1 of 40 test prompts, the base model on 0" in warning
    assert "answers_without_end_of_turn" in warning
    assert quality_warnings({"runaway": {**summary, "tuned": 0}, "n_test": 40}, {}) == []
