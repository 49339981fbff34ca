"""Binder: a fresh virtual environment built from exactly binder/requirements.txt and binder/postBuild
(what repo2docker runs) executes notebook 01. The same environment then swaps the editable install for a
built wheel and runs notebook 01 from the repository root, where the checkout's nbkit/ shadows the wheel's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.notebooks]


def run(command, **kwargs):
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, command))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_binder_files_build_an_environment_that_runs_notebook_01_editable_and_from_a_wheel(tmp_path):
    venv = tmp_path / "binder-env"
    run([sys.executable, "-m", "venv", str(venv)])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    # postBuild calls plain `pip`, as on Binder: this environment's must come first. PIP_RETRIES=0: an
    # index that cannot be reached from here (the CPU torch index) costs one try, not five.
    env.update(PATH=f"{venv / 'bin'}:{env['PATH']}", VIRTUAL_ENV=str(venv), PIP_RETRIES="0", HF_HUB_OFFLINE="1")
    run(["pip", "install", "-q", "-r", "binder/requirements.txt"], cwd=REPO, env=env)
    run(["bash", "binder/postBuild"], cwd=REPO, env=env)
    python = venv / "bin" / "python"
    torch_version = run([str(python), "-c", "import torch; print(torch.__version__)"], env=env).stdout.strip()
    assert torch_version.startswith("2.13.0") and "cu" not in torch_version, torch_version
    # Binder serves the environment's own kernel; register it the same way here.
    run([str(python), "-m", "ipykernel", "install", "--sys-prefix", "--name", "python3"], env=env)

    workspace = tmp_path / "workspace"
    run(
        [str(venv / "bin" / "nbkit"), "run", "--workspace", str(workspace), "--only", "01", "--quiet"],
        cwd=tmp_path,
        env=env,
    )
    report = json.loads((workspace / "data" / "collect_report.json").read_text())
    assert report["kept"] == 400 and report["read"] == report["kept"] + report["rejected"]
    assert (workspace / "executed" / "01_collect.ipynb").exists()

    # A wheel (not -e), run from the repository root: the kernel starts there, so `import nbkit` finds the
    # checkout's nbkit/, which has no widgets/ inside; nbkit.widgets must still import.
    wheels = tmp_path / "wheels"
    run([str(python), "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), "."], cwd=REPO, env=env)
    run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", *map(str, wheels.glob("*.whl"))],
        env=env,
    )
    where = run(
        [str(python), "-c", "import nbkit.pipeline as p; print(p.__file__); print(p.notebooks_dir())"],
        cwd=tmp_path,
        env=env,
    ).stdout.split()
    assert "site-packages" in where[0] and where[1].endswith("nbkit/notebooks"), where  # the wheel's, notebooks too
    wheel_workspace = tmp_path / "wheel-workspace"
    run(
        [str(venv / "bin" / "nbkit"), "run", "--workspace", str(wheel_workspace), "--only", "01", "--quiet"],
        cwd=REPO,
        env=env,
    )
    assert json.loads((wheel_workspace / "data" / "collect_report.json").read_text())["kept"] == 400
