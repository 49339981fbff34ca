"""The run folder: every training run gets runs/<run_id>/, and this module owns what is in it.

runs/<run_id>/
  config.json    the TrainConfig it ran with (`run_config` reads it back, typed)
  env.json       library versions and device (`environment`)
  metrics.jsonl  one JSON line per log (`read_metrics`, `metric_series`)
  checkpoints/   checkpoint-<step>/ folders (`last_checkpoint`, `checkpoint_step`)
  adapter/ or model/, run.json (the run record, `load_run`), eval/, export/
"""

from __future__ import annotations

import datetime as dt
import secrets
from pathlib import Path
from typing import Any

from nbkit.core.errors import WorkspaceError
from nbkit.core.files import read_appended, read_json, write_jsonl
from nbkit.core.train_config import TrainConfig
from nbkit.core.workspace import Workspace


def new_run_id() -> str:
    """Sortable and unique: 20261121-101500-a3f9."""
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def list_runs(workspace: str | Path) -> list[str]:
    """Run ids with a saved adapter (or fully fine-tuned model), oldest first."""
    runs = Workspace(workspace).runs
    if not runs.exists():
        return []
    return sorted(
        p.name
        for p in runs.iterdir()
        if (p / "adapter" / "adapter_config.json").exists() or (p / "model" / "config.json").exists()
    )


def resolve_run(workspace: str | Path, run_id: str = "") -> str:
    """The given run id, checked; or the latest finished run when empty."""
    runs = list_runs(workspace)
    if run_id:
        if run_id not in runs:
            known = ", ".join(runs[-5:]) or "none yet"
            raise WorkspaceError(
                f"`run_id` {run_id!r} has no saved adapter in {Workspace(workspace).runs} "
                f"(recent runs: {known}) — run 04_train first or fix the id."
            )
        return run_id
    if not runs:
        raise WorkspaceError(f"no trained run in {Workspace(workspace).runs} — run 04_train first.")
    return runs[-1]


def load_run(workspace: str | Path, run_id: str) -> dict[str, Any]:
    return read_json(Workspace(workspace).run_dir(run_id) / "run.json")


def is_preference_run(workspace: str | Path, run_id: str) -> bool:
    """Whether a run is a 06 preference run: its run.json (or, before it finishes, config.json) names a parent."""
    folder = Workspace(workspace).run_dir(run_id)
    return any(
        "parent_run" in read_json(folder / name) for name in ("run.json", "config.json") if (folder / name).is_file()
    )


def resolve_parent(ws: Workspace, parent_run: str = "") -> tuple[str, dict[str, Any]]:
    """The SFT run a preference run starts from, and its record: the named finished run, or the latest finished
    run that is not a preference run."""
    finished = [r for r in list_runs(ws.root) if (ws.run_dir(r) / "run.json").is_file()]
    if parent_run and parent_run not in finished:
        raise WorkspaceError(
            f"`parent_run` {parent_run!r} is not a finished run in {ws.runs} (finished: "
            f"{', '.join(finished[-5:]) or 'none yet'}) — fix the id, or leave it empty."
        )
    sft = [parent_run] if parent_run else [r for r in finished if not is_preference_run(ws.root, r)]
    if not sft:
        raise WorkspaceError(
            f"no finished 04_train run in {ws.runs} to start from — run 04_train first "
            "(preference tuning refines an SFT model), or set `parent_run`."
        )
    return sft[-1], read_json(ws.run_dir(sft[-1]) / "run.json")


def run_config(workspace: str | Path, run_id: str) -> TrainConfig:
    """The TrainConfig a run was trained with (runs/<run_id>/config.json), typed and validated; for a preference
    run, its SFT ancestor's (its own config.json is a PreferConfig; max_seq_len and the model are the parent's)."""
    while is_preference_run(workspace, run_id):
        run_id = read_json(Workspace(workspace).run_dir(run_id) / "config.json")["parent_run"]
    path = Workspace(workspace).run_dir(run_id) / "config.json"
    if not path.exists():
        raise WorkspaceError(
            f"run {run_id!r} has no {path.name} in {path.parent} — it was not written by "
            "04_train; train the run again or pick another run_id."
        )
    return TrainConfig.load(path)


def compare_runs(workspace: str | Path):
    """Every run of the workspace in one table: settings, losses and evaluated metrics (pandas DataFrame).

    Runs without an evaluation still appear, with empty metric cells, so nothing trained is hidden.
    """
    import pandas as pd

    ws = Workspace(workspace)
    records = []
    for run_id in list_runs(workspace):
        run_dir = ws.run_dir(run_id)
        run = read_json(run_dir / "run.json") if (run_dir / "run.json").exists() else {}
        config = read_json(run_dir / "config.json") if (run_dir / "config.json").exists() else {}
        record = {
            "run_id": run_id,
            "base_model": run.get("base_model"),
            "method": run.get("method"),
            "objective": run.get("objective", "sft"),
            "parent_run": run.get("parent_run"),
            "steps": run.get("steps"),
            "learning_rate": config.get("learning_rate"),
            "lora_r": config.get("lora_r"),
            "train_loss": (run.get("train_loss") or {}).get("last"),
            "eval_loss": run.get("eval_loss"),
            "train_data": (run.get("dataset") or {}).get("fingerprints", {}).get("train"),
        }
        summary_path = run_dir / "eval" / "summary.json"
        if summary_path.exists():
            summary = read_json(summary_path)
            record["task_metric"] = summary.get("task_metric")
            for side in ("base", "tuned"):
                for name, value in summary.get(side, {}).items():
                    if name != "loss":
                        record[f"{side}_{name}"] = value
        records.append(record)
    return pd.DataFrame.from_records(records).set_index("run_id") if records else pd.DataFrame()


def lineage(workspace: str | Path, run_id: str) -> list[str]:
    """The runs a run descends from, oldest first, ending with itself: [sft_run, preference_run]."""
    ws, chain = Workspace(workspace), [run_id]
    while len(chain) < 16:
        path = ws.run_dir(chain[0]) / "run.json"
        parent = read_json(path).get("parent_run") if path.exists() else None
        if not parent or parent in chain:
            break
        chain.insert(0, parent)
    return chain


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The logs of a run (append-only: a line cut off when the runtime died is set aside, read_appended)."""
    return read_appended(path)


def write_metrics(path: Path, records: list[dict[str, Any]]) -> None:
    write_jsonl(path, records)


def metric_series(logs: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """Steps and values of one logged metric ("loss", "eval_loss", ...), in log order."""
    points = [(r["step"], r[key]) for r in logs if key in r]
    return [step for step, _ in points], [value for _, value in points]


def checkpoint_step(path: str | Path) -> int:
    """The step of a trainer checkpoint folder: checkpoints/checkpoint-40 -> 40."""
    return int(Path(path).name.rsplit("-", 1)[1])


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run (trainer_state.json is written last)."""
    folder = run_dir / "checkpoints"
    done = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").exists()] if folder.exists() else []
    return max(done, key=checkpoint_step, default=None)


def latest_checkpointed_run(ws: Workspace) -> str | None:
    """The latest run (run ids sort by start time) that has a complete checkpoint, or None."""
    runs = sorted(p.name for p in ws.runs.glob("*") if last_checkpoint(p)) if ws.runs.exists() else []
    return runs[-1] if runs else None


def run_to_resume(ws: Workspace, config: TrainConfig) -> str:
    """With resume=True: the named run, or the latest run that has a checkpoint."""
    if config.run_id:
        return config.run_id
    run_id = latest_checkpointed_run(ws)
    if run_id is None:
        raise WorkspaceError(
            f"`resume` is True but no run in {ws.runs} has a checkpoint — set resume=False to start a new run."
        )
    return run_id
