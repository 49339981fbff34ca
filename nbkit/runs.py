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
    """Run ids with a saved adapter, oldest first."""
    runs = Workspace(workspace).runs
    if not runs.exists():
        return []
    return sorted(p.name for p in runs.iterdir() if (p / "adapter" / "adapter_config.json").exists())


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
