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
import platform
import secrets
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from nbkit.errors import WorkspaceError
from nbkit.train_config import TrainConfig
from nbkit.workspace import Workspace, read_appended, read_json, write_jsonl

TRACKED_PACKAGES = ("torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "accelerate",
                    "nbkit-finetune")


def new_run_id() -> str:
    """Sortable and unique: 20261121-101500-a3f9."""
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def environment() -> dict[str, Any]:
    import torch

    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    env = {"python": sys.version.split()[0], "platform": platform.platform(), "packages": versions,
           "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def list_runs(workspace: str | Path) -> list[str]:
    """Run ids with a saved adapter (or fully fine-tuned model), oldest first."""
    runs = Workspace(workspace).runs
    if not runs.exists():
        return []
    return sorted(p.name for p in runs.iterdir()
                  if (p / "adapter" / "adapter_config.json").exists() or (p / "model" / "config.json").exists())


def resolve_run(workspace: str | Path, run_id: str = "") -> str:
    """The given run id, checked; or the latest finished run when empty."""
    runs = list_runs(workspace)
    if run_id:
        if run_id not in runs:
            known = ", ".join(runs[-5:]) or "none yet"
            raise WorkspaceError(f"`run_id` {run_id!r} has no saved adapter in {Workspace(workspace).runs} "
                                 f"(recent runs: {known}) — run 04_train first or fix the id.")
        return run_id
    if not runs:
        raise WorkspaceError(f"no trained run in {Workspace(workspace).runs} — run 04_train first.")
    return runs[-1]


def load_run(workspace: str | Path, run_id: str) -> dict[str, Any]:
    return read_json(Workspace(workspace).run_dir(run_id) / "run.json")


def run_config(workspace: str | Path, run_id: str) -> TrainConfig:
    """The TrainConfig a run was trained with (runs/<run_id>/config.json), typed and validated."""
    path = Workspace(workspace).run_dir(run_id) / "config.json"
    if not path.exists():
        raise WorkspaceError(f"run {run_id!r} has no {path.name} in {path.parent} — it was not written by "
                             "04_train; train the run again or pick another run_id.")
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
        record = {"run_id": run_id, "base_model": run.get("base_model"), "method": run.get("method"),
                  "steps": run.get("steps"), "learning_rate": config.get("learning_rate"),
                  "lora_r": config.get("lora_r"), "train_loss": (run.get("train_loss") or {}).get("last"),
                  "eval_loss": run.get("eval_loss"),
                  "train_data": (run.get("dataset") or {}).get("fingerprints", {}).get("train")}
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
        raise WorkspaceError(f"`resume` is True but no run in {ws.runs} has a checkpoint — set resume=False "
                             "to start a new run.")
    return run_id
