"""`nbkit train`: a saved config trained outside Jupyter, alone or in each process of `accelerate launch`."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

import nbkit.train.sft
from nbkit.cli import build_parser, load_train_config, main, train_command
from nbkit.core.errors import ConfigError
from nbkit.core.train_config import TrainConfig


def test_parser_reads_train_options():
    args = build_parser().parse_args(
        ["train", "--config", "runs/r1/config.json", "--max-steps", "2", "--output-dir", "out"]
    )
    assert (args.command, args.config, args.max_steps, args.output_dir) == ("train", "runs/r1/config.json", 2, "out")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train"])  # --config is required


def test_overrides_are_validated_like_the_notebook(tmp_path):
    path = TrainConfig(workspace="ws", run_id="r1", max_steps=60).save(tmp_path / "config.json")
    assert load_train_config(path).max_steps == 60
    assert load_train_config(path, max_steps=2) == TrainConfig(workspace="ws", run_id="r1", max_steps=2)
    with pytest.raises(ConfigError, match="`max_steps` must be >= 0, got -1"):
        load_train_config(path, max_steps=-1)


def test_bad_config_files_are_named_with_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"`--config` .*missing.json does not exist — pass the config.json"):
        load_train_config(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        load_train_config(tmp_path / "broken.json")
    (tmp_path / "typo.json").write_text(json.dumps({"max_stepz": 3}))
    with pytest.raises(ConfigError, match="unknown parameter `max_stepz`"):
        load_train_config(tmp_path / "typo.json")


def test_main_reports_a_missing_config_in_one_line(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "nope.json")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("nbkit: error: `--config`") and err.count("\n") == 1


@pytest.fixture
def fake_train(monkeypatch):
    """Replace the real training with a recorder: what would `train()` have been called with?"""
    calls = []

    def recorder(config, on_log=None, run_dir=None):
        calls.append({"config": config, "on_log": on_log, "run_dir": run_dir})
        on_log({"step": 1, "max_steps": config.max_steps, "elapsed_s": 0.5, "loss": 2.0})
        return {
            "run_id": config.run_id,
            "steps": config.max_steps,
            "world_size": 1,
            "effective_batch_size": 8,
            "adapter": str(run_dir),
        }

    monkeypatch.setattr(nbkit.train.sft, "train", recorder)
    return calls


def test_train_command_passes_config_overrides_and_output_dir(tmp_path, fake_train, monkeypatch, capsys):
    monkeypatch.delenv("RANK", raising=False)
    path = TrainConfig(workspace=str(tmp_path), run_id="r1").save(tmp_path / "config.json")
    record = train_command(path, max_steps=3, output_dir=str(tmp_path / "out"))
    (call,) = fake_train
    assert call["config"] == TrainConfig(workspace=str(tmp_path), run_id="r1", max_steps=3)
    assert call["run_dir"] == tmp_path / "out" and record["steps"] == 3
    out = capsys.readouterr().out
    assert "step 1/3 | loss 2" in out and "Run r1: 3 steps on 1 process(es), effective batch 8" in out


def test_only_process_zero_prints(tmp_path, fake_train, monkeypatch, capsys):
    """Under `accelerate launch` every process runs `nbkit train`; the others train silently."""
    path = TrainConfig(workspace=str(tmp_path), run_id="r1", max_steps=2).save(tmp_path / "config.json")
    monkeypatch.setenv("RANK", "1")
    train_command(path)
    assert capsys.readouterr().out == ""
    assert fake_train[0]["run_dir"] is None, "without --output-dir the run goes to runs/<run_id>/"


# -- the real thing: two CPU processes through `accelerate launch` ------------------------------------------
# One flow, shared by the tests below to keep the suite short: a 2-process run is killed (every process,
# SIGKILL, like a lost runtime) after its first checkpoint, then resumed with the same command plus --resume.
TINY = dict(
    max_steps=3,
    save_steps=1,
    batch_size=2,
    gradient_accumulation_steps=2,
    max_seq_len=128,
    logging_steps=1,
    eval_steps=0,
    lora_r=8,
    lora_alpha=16,
    run_id="ddp2",
)


def accelerate_argv(command: str) -> list[str]:
    """launch_command's line, run with this interpreter's accelerate."""
    argv = shlex.split(command)
    return [str(Path(sys.executable).with_name("accelerate")), *argv[1:]]


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and every process it started (torchrun puts each worker in its own session)."""
    import psutil

    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    for p in [psutil.Process(proc.pid), *family] if proc.poll() is None else family:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=30)
    psutil.wait_procs(family, timeout=30)


def wait_for(folder: Path, pattern: str, proc: subprocess.Popen, timeout: float) -> list[Path]:
    """Paths matching `pattern` under `folder` as soon as one exists, while `proc` runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        found = sorted(folder.glob(pattern))
        if found:
            return found
        time.sleep(0.5)
    return []


@pytest.fixture(scope="module")
def two_process_run(prepared_workspace, tmp_path_factory):
    from nbkit.train.launch import launch_command

    out = tmp_path_factory.mktemp("ddp") / "run"
    config = TrainConfig(workspace=str(prepared_workspace), **TINY)
    command = launch_command(config, 2, strategy="ddp-cpu", output_dir=out)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    log = out.parent / "first_run.log"
    with open(log, "w") as sink:
        first = subprocess.Popen(
            accelerate_argv(command), env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            saved = wait_for(out, "checkpoints/checkpoint-*/trainer_state.json", first, timeout=240)
        finally:
            kill_tree(first)
    assert saved, f"the first run saved no checkpoint before it was killed:\n{log.read_text()[-3000:]}"
    before_kill = metrics(out)
    killed_at = max(int(p.parent.name.split("-")[1]) for p in saved)
    second = subprocess.run(
        accelerate_argv(command) + ["--resume"], env=env, capture_output=True, text=True, timeout=300
    )
    assert second.returncode == 0, second.stderr[-3000:]
    return {
        "out": out,
        "config": config,
        "killed_at": killed_at,
        "stdout": second.stdout,
        "before_kill": before_kill,
        "record": json.loads((out / "run.json").read_text()),
    }


@pytest.mark.model
def test_killed_two_process_run_resumes_to_the_same_final_step(two_process_run):
    record = two_process_run["record"]
    assert two_process_run["killed_at"] < TINY["max_steps"], "killed too late to test resuming"
    assert record["steps"] == TINY["max_steps"] and record["status"] == "finished"
    assert record["resumed_from"] == f"checkpoint-{two_process_run['killed_at']}"
    steps = [r["step"] for r in metrics(two_process_run["out"]) if "loss" in r and "train_loss" not in r]
    assert steps[-1] == TINY["max_steps"]
    assert (two_process_run["out"] / "checkpoints" / f"checkpoint-{TINY['max_steps']}").is_dir()


@pytest.mark.model
def test_two_processes_make_one_adapter_and_one_record(two_process_run, prepared_workspace):
    out, record = two_process_run["out"], two_process_run["record"]
    assert record["world_size"] == 2
    assert record["effective_batch_size"] == TINY["batch_size"] * TINY["gradient_accumulation_steps"] * 2 == 8
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == TINY["lora_r"]
    assert not (prepared_workspace / "runs" / TINY["run_id"]).exists(), "--output-dir received the whole run"


@pytest.mark.model
def test_only_the_main_process_writes_and_prints(two_process_run):
    """Two writers would log every step twice (measured before train() wrote on the main process only)."""

    def train_steps(records):
        return [r["step"] for r in records if "loss" in r and "train_loss" not in r]

    first = train_steps(two_process_run["before_kill"])
    assert first and len(first) == len(set(first)), f"a step was logged twice in the first run: {first}"
    resumed = [s for s in train_steps(metrics(two_process_run["out"])) if s > max(first)]
    assert resumed and len(resumed) == len(set(resumed)), f"a step was logged twice after resuming: {resumed}"
    assert two_process_run["stdout"].count("Run ddp2:") == 1
    assert "on 2 process(es), effective batch 8" in two_process_run["stdout"]


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
