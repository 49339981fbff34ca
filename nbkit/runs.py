"""Run records: every training run gets runs/<run_id>/ with what produced its adapter."""

from __future__ import annotations

import datetime as dt
import platform
import secrets
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from nbkit.errors import WorkspaceError
from nbkit.workspace import Workspace, read_json

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
