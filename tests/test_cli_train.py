"""`nbkit train`: a saved config trained outside Jupyter, alone or in each process of `accelerate launch`."""

from __future__ import annotations

import json

import pytest

import nbkit.train
from nbkit.cli import build_parser, load_train_config, main, train_command
from nbkit.errors import ConfigError
from nbkit.train import TrainConfig


def test_parser_reads_train_options():
    args = build_parser().parse_args(["train", "--config", "runs/r1/config.json", "--max-steps", "2",
                                      "--output-dir", "out"])
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
        return {"run_id": config.run_id, "steps": config.max_steps, "world_size": 1, "effective_batch_size": 8,
                "adapter": str(run_dir)}

    monkeypatch.setattr(nbkit.train, "train", recorder)
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
