"""A preference run beside the runs it descends from: base → SFT → preference run, scored by 05 on the same
test rows (task metrics, perplexity, the forgetting probe, runaway answers); and the check that decides whether to
keep it, made on the validation split (no test number is used to choose a run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nbkit.core.files import read_json, write_json
from nbkit.core.metrics import score, task_metric
from nbkit.core.rows import is_replay, prompt_messages, reference_answer
from nbkit.core.runs import lineage, load_run
from nbkit.core.workspace import Workspace
from nbkit.model.generation import answer_budget, generate
from nbkit.model.loader import load_chat_model, pick_device
from nbkit.model.memory import release_memory

LINEAGE_ROWS = ("loss", "perplexity", "probe_kept", "runaway")


def lineage_table(workspace: str | Path, run_id: str):
    """Base → SFT → preference run on the held-out test split, one column each (pandas DataFrame): every task
    metric 05 wrote, perplexity, the share of the base model's right probe answers each model kept, and runaway
    answers. A run not yet evaluated has an empty column (run 05 on it)."""
    import pandas as pd

    ws = Workspace(workspace)
    columns: dict[str, dict[str, Any]] = {}
    for i, rid in enumerate(lineage(workspace, run_id)):
        path = ws.run_dir(rid) / "eval" / "summary.json"
        summary = read_json(path) if path.exists() else {}
        if i == 0:
            columns["base"] = _lineage_column(summary, "base")
        run = read_json(ws.run_dir(rid) / "run.json") if (ws.run_dir(rid) / "run.json").exists() else {}
        columns[f"{run.get('objective', 'sft')} {rid}"] = _lineage_column(summary, "tuned")
    table = pd.DataFrame(columns)
    order = [r for r in table.index if r not in LINEAGE_ROWS] + [r for r in LINEAGE_ROWS if r in table.index]
    return table.loc[order]


def _lineage_column(summary: dict[str, Any], side: str) -> dict[str, Any]:
    if not summary:
        return {}
    column = dict(summary.get(side, {}))
    forgetting = summary.get("forgetting") or {}
    if forgetting:
        right = forgetting.get("base_right") or 0
        column["probe_kept"] = 1.0 if side == "base" else (forgetting["kept"] / right if right else None)
    column["runaway"] = (summary.get("runaway") or {}).get(side)
    return column


def evaluate_lineage(workspace: str, run_id: str, max_examples: int = 0):
    """05's evaluation of a preference run, and of each run it descends from that 05 has not scored on the same
    test rows, then base → SFT → preference run side by side (`lineage_table`)."""
    from nbkit.evaluate.evaluator import EvalConfig, evaluate

    ws = Workspace(workspace)
    n_test = len(ws.read_split("test"))
    wanted = min(max_examples, n_test) if max_examples else n_test
    for rid in lineage(workspace, run_id):
        path = ws.run_dir(rid) / "eval" / "summary.json"
        if rid == run_id or not path.exists() or read_json(path).get("n_test") != wanted:
            evaluate(EvalConfig(workspace=workspace, run_id=rid, max_examples=max_examples))
    return lineage_table(workspace, run_id)


def validation_check(workspace: str | Path, run_id: str) -> dict[str, Any]:
    """The run and its parent on the validation split: greedy answers scored with the task's metric. A
    preference run that scores below its parent there is worse at the task (the verdict says so, and says to keep
    the parent); the record is written to runs/<run_id>/eval/validation.json."""
    ws = Workspace(workspace)
    parent = load_run(ws.root, run_id).get("parent_run")
    if not parent:
        raise ValueError(f"run {run_id} has no parent run to compare with (it is not a preference run).")
    rows = [r for r in ws.read_split("validation") if not is_replay(r)]
    prompts = [prompt_messages(r["messages"]) for r in rows]
    references = [reference_answer(r["messages"]) for r in rows]
    metric = task_metric(references)
    scores: dict[str, float] = {}
    for rid in (parent, run_id):
        model, tokenizer = load_chat_model(ws.root, rid)
        answers = generate(
            model, tokenizer, prompts, answer_budget(tokenizer, references), pick_device().eval_batch_size
        )
        scores[rid] = score(answers, references).get(metric, 0.0)
        del model
        release_memory()
    worse = scores[run_id] < scores[parent]
    record = {
        "run_id": run_id,
        "parent_run": parent,
        "metric": metric,
        "rows": len(rows),
        "scores": scores,
        "verdict": "worse than its parent" if worse else "at least as good as its parent",
        "keep": parent if worse else run_id,
    }
    write_json(ws.run_dir(run_id) / "eval" / "validation.json", record)
    return record


def describe_validation(record: dict[str, Any]) -> str:
    run, parent, metric = record["run_id"], record["parent_run"], record["metric"]
    line = (
        f"Validation split ({record['rows']} rows, {metric}): {run} {record['scores'][run]:.3f}, its parent "
        f"{parent} {record['scores'][parent]:.3f} — {record['verdict']}."
    )
    if record["keep"] == parent:
        line += (
            f" Keep using {parent}: this preference run made the task worse. 05 and the export take the latest "
            f"run by default, so pass run_id={parent!r} there; try fewer steps, a lower learning_rate or a "
            "higher beta, or more (and more varied) pairs."
        )
    return line
