"""A preference run beside the runs it descends from: base → SFT → preference run, scored by 05 on the same
test rows (task metrics, perplexity, the forgetting probe, runaway answers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nbkit.core.files import read_json
from nbkit.core.runs import lineage
from nbkit.core.workspace import Workspace

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
    test rows, then base → SFT → preference run side by side (runs.lineage_table)."""
    from nbkit.evaluate.evaluator import EvalConfig, evaluate

    ws = Workspace(workspace)
    n_test = len(ws.read_split("test"))
    wanted = min(max_examples, n_test) if max_examples else n_test
    for rid in lineage(workspace, run_id):
        path = ws.run_dir(rid) / "eval" / "summary.json"
        if rid == run_id or not path.exists() or read_json(path).get("n_test") != wanted:
            evaluate(EvalConfig(workspace=workspace, run_id=rid, max_examples=max_examples))
    return lineage_table(workspace, run_id)
