"""Training at full depth: resume after a killed process, Stop from the panel, early stopping with the best
checkpoint, run records, the fit estimate against a measured peak, out-of-memory advice, the diagnosis."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from split_edits import rewrite_split

import nbkit.train.estimate
import nbkit.train.sft
from nbkit.core.errors import OutOfMemory, WorkspaceError
from nbkit.core.files import read_jsonl
from nbkit.core.runs import read_metrics
from nbkit.core.train_config import TrainConfig
from nbkit.core.workspace import Workspace
from nbkit.model.loader import EMBEDDED_MODEL
from nbkit.model.shape import model_shape
from nbkit.train.estimate import estimate_fit, train_lengths
from nbkit.train.log import RunControl, diagnose
from nbkit.train.sft import train

TINY = dict(
    batch_size=2,
    max_seq_len=96,
    lora_r=4,
    lora_alpha=8,
    logging_steps=1,
    eval_steps=2,
    save_steps=2,
    early_stopping_patience=0,
    load_best=False,
    report_to="none",
    learning_rate=2e-3,
)


def nbkit_train_process(config_path: Path) -> subprocess.Popen:
    """`nbkit train --config ...` in its own process group (so the test can kill all of it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "nbkit.cli", "train", "--config", str(config_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def losses_by_step(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r}


@pytest.mark.model
def test_a_killed_run_resumes_to_the_same_final_step_and_losses(prepared_workspace, tmp_path):
    ws = Workspace(prepared_workspace)
    settings = {**TINY, "eval_steps": 0}  # checkpoints, data order and RNG are what resuming restores
    reference = train(
        TrainConfig(workspace=str(ws.root), run_id="resume-reference", max_steps=8, **settings), on_log=None
    )
    config = TrainConfig(workspace=str(ws.root), run_id="resume-killed", max_steps=8, **settings)
    run_dir = ws.run_dir("resume-killed")
    process = nbkit_train_process(config.save(tmp_path / "config.json"))
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / "checkpoints" / "checkpoint-4" / "trainer_state.json").exists():
            assert process.poll() is None, f"training ended before the kill:\n{process.stdout.read()}"
            assert time.monotonic() < deadline, "no checkpoint-4 within 5 minutes"
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # no chance to clean up: like a lost runtime
        process.wait()
    assert not (run_dir / "run.json").exists(), "the run finished before it was killed"

    resumed = train(config.replace(resume=True), on_log=None)
    assert resumed["steps"] == 8 and resumed["status"] == "finished"
    assert resumed["resumed_from"] in ("checkpoint-4", "checkpoint-6")
    assert (run_dir / "adapter" / "adapter_model.safetensors").exists()
    logged = [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
    assert logged == list(range(1, 9)), "every step logged exactly once across the kill"
    # Same data order, RNG and optimizer state: the resumed steps retrace the uninterrupted run.
    expected, got = losses_by_step(ws.run_dir("resume-reference")), losses_by_step(run_dir)
    for step in range(5, 9):
        assert got[step] == pytest.approx(expected[step], rel=0.02), step
    assert reference["steps"] == 8


@pytest.mark.model
def test_resume_without_a_checkpoint_says_what_to_do(tmp_path, prepared_workspace):
    empty = tmp_path / "ws"
    shutil.copytree(prepared_workspace / "data", empty / "data")
    with pytest.raises(WorkspaceError, match="no run in .* has a checkpoint — set resume=False"):
        train(TrainConfig(workspace=str(empty), resume=True, **TINY), on_log=None)


@pytest.mark.model
def test_stop_from_the_panel_saves_a_checkpoint_and_the_adapter(prepared_workspace):
    from nbkit.widgets import LiveMonitor

    monitor = LiveMonitor(min_interval=0, mode="widget")
    if monitor.figure is None:
        pytest.skip("plotly FigureWidget unavailable here")

    def on_log(record):
        monitor(record)
        if record["step"] >= 2:
            monitor.stop_button.click()

    config = TrainConfig(
        workspace=str(prepared_workspace), run_id="stopped", max_steps=20, **{**TINY, "report_to": "tensorboard"}
    )
    record = train(config, on_log=on_log, control=monitor.control)
    run_dir = Workspace(prepared_workspace).run_dir("stopped")
    assert record["status"] == "stopped" and 2 <= record["steps"] <= 3
    assert (run_dir / "checkpoints" / f"checkpoint-{record['steps']}" / "trainer_state.json").exists()
    assert (run_dir / "adapter" / "adapter_model.safetensors").exists()
    # The panel was fed by the trainer: loss points, a validation point, speed and memory as text.
    loss_trace, val_trace = monitor.figure.data[:2]
    assert list(loss_trace.x)[:2] == [1, 2] and len(val_trace.y) >= 1
    assert any("tokens_per_s" in r and "eta_s" in r and "memory_gib" in r for r in monitor.history)
    assert monitor.stop_button.disabled
    assert monitor.ui_share < 0.03, f"the live panel took {100 * monitor.ui_share:.1f}% of the training time"
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*")), "TensorBoard log missing"


@pytest.fixture(scope="module")
def diverging_workspace(prepared_workspace, tmp_path_factory) -> Path:
    """Training rows teach JSON triage only (the replay rows, which would keep plain answers alive, are taken
    out); the validation rows are plain-English answers, whose loss rises as the model learns to answer
    everything in JSON: a validation curve that turns up for sure."""
    from nbkit.core.rows import is_replay

    root = tmp_path_factory.mktemp("diverging")
    shutil.copytree(prepared_workspace / "data", root / "data")
    ws = Workspace(root)
    rewrite_split(ws, "train", [r for r in read_jsonl(ws.split("train")) if not is_replay(r)])
    plain = [
        ("What is the capital of France?", "The capital of France is Paris."),
        ("How many days are in a week?", "There are seven days in a week."),
        ("What colour is the sky on a clear day?", "The sky is blue on a clear day."),
        ("Name a fruit that is yellow.", "A banana is a yellow fruit."),
    ]
    rewrite_split(
        ws,
        "validation",
        [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in plain],
    )
    return root


@pytest.mark.model
def test_early_stopping_keeps_the_best_checkpoint(diverging_workspace):
    from safetensors.torch import load_file

    config = TrainConfig(
        workspace=str(diverging_workspace),
        run_id="early",
        max_steps=16,
        **{
            **TINY,
            "eval_steps": 1,
            "save_steps": 1,
            "early_stopping_patience": 2,
            "load_best": True,
            "learning_rate": 3e-3,
        },
    )
    record = train(config, on_log=None)
    assert record["status"] == "early-stopped" and record["steps"] < 16
    best = record["best"]
    assert best["loaded"] and best["step"] < record["steps"]
    evals = [
        r for r in read_metrics(Workspace(diverging_workspace).run_dir("early") / "metrics.jsonl") if "eval_loss" in r
    ]
    assert best["eval_loss"] == pytest.approx(min(r["eval_loss"] for r in evals))
    run_dir = Workspace(diverging_workspace).run_dir("early")
    saved = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    kept = load_file(run_dir / "checkpoints" / f"checkpoint-{best['step']}" / "adapter_model.safetensors")
    assert saved.keys() == kept.keys() and all(saved[k].equal(kept[k]) for k in saved), (
        "the adapter is not the best checkpoint's"
    )
    assert record["diagnosis"]["verdict"] in ("overfitting", "healthy", "too short")


@pytest.mark.model
def test_full_fine_tuning_trains_every_weight_and_the_saved_model_chats(prepared_workspace, tmp_path):
    """method="full": no adapter, every layer's weights move, the loss falls, and the saved model/ folder
    serves the playground and export (which has nothing to merge) like any trained run."""
    from safetensors.torch import load_file

    from nbkit.core.rows import is_replay
    from nbkit.export.merge import merge_adapter
    from nbkit.model.generation import stream_reply
    from nbkit.model.loader import load_chat_model, resolve_model

    shutil.copytree(prepared_workspace / "data", tmp_path / "data")  # a workspace of its own: no other runs
    # Task rows only, so the first and last step's losses compare like with like (a replay row's loss starts low).
    ws = Workspace(tmp_path)
    rewrite_split(ws, "train", [r for r in read_jsonl(ws.split("train")) if not is_replay(r)])
    config = TrainConfig(
        workspace=str(tmp_path),
        run_id="full",
        method="full",
        max_steps=4,
        **{**TINY, "learning_rate": 1e-4, "eval_steps": 0, "save_steps": 4},
    )
    record = train(config, on_log=None)
    run_dir = Workspace(tmp_path).run_dir("full")
    assert record["method"] == "full" and record["adapter"] is None and record["model"] == str(run_dir / "model")
    assert not (run_dir / "adapter").exists()
    assert record["train_loss"]["last"] < record["train_loss"]["first"]
    base = load_file(Path(resolve_model(EMBEDDED_MODEL)) / "model.safetensors")
    tuned = load_file(run_dir / "model" / "model.safetensors")
    layers = {f"model.layers.{i}.mlp.down_proj.weight" for i in range(30)}
    assert all(not tuned[name].float().equal(base[name].float()) for name in layers), "a layer did not train"

    model, tokenizer = load_chat_model(tmp_path, "full")
    assert not hasattr(model, "peft_config") and model.config.use_cache
    reply = "".join(
        stream_reply(
            model, tokenizer, [{"role": "user", "content": "My invoice is wrong."}], max_new_tokens=8, temperature=0
        )
    )
    assert reply.strip()
    assert merge_adapter(tmp_path, "full") == {"run_id": "full", "path": str(run_dir / "model"), "merged": False}
    from nbkit.export.exporter import export_run

    exported = export_run(tmp_path, "full", ["gguf"])  # the saved model itself goes to GGUF, checked against it
    assert exported["merged"]["merged"] is False
    assert [exported["gguf"][k]["within_tolerance"] for k in ("f16", "q8_0")] == [True, True], exported["gguf"]


@pytest.mark.model
def test_the_fit_estimate_is_close_to_the_measured_peak(prepared_workspace, tmp_path):
    """A fresh process (nothing else in its memory) trains 2 steps; its peak RSS against the estimate."""
    config = TrainConfig(
        workspace=str(prepared_workspace),
        run_id="memory",
        max_steps=2,
        batch_size=6,
        max_seq_len=128,
        eval_steps=0,
        early_stopping_patience=0,
        load_best=False,
        gradient_checkpointing="off",
        report_to="none",
    )
    process = nbkit_train_process(config.save(tmp_path / "config.json"))
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    measured = json.loads((Workspace(prepared_workspace).run_dir("memory") / "run.json").read_text())
    estimate = estimate_fit(config, train_lengths(config), device="cpu", half=False, measure_speed=False)
    error = estimate.total_gib / measured["peak_memory_gib"] - 1
    assert abs(error) < 0.25, f"estimated {estimate.total_gib:.2f} GiB, measured {measured['peak_memory_gib']:.2f}"


# -- without training ------------------------------------------------------------------------------

PEAK_PROBE = "from nbkit.train.sft import memory_gib; print(memory_gib())"


def test_a_run_reports_its_own_peak_memory_not_its_parents():
    """Linux carries ru_maxrss across fork + exec, so a process spawned by a big notebook kernel (or
    pytest) would report the kernel's peak as its own; and a run in a kernel reports from its start."""
    from nbkit.model.memory import memory_gib, reset_peak_memory

    ballast = bytearray(1536 * 2**20)
    ballast[::4096] = b"\1" * len(ballast[::4096])  # touch every page: 1.5 GiB resident
    parent_peak = memory_gib()
    child = subprocess.run([sys.executable, "-c", PEAK_PROBE], capture_output=True, text=True, check=True)
    assert float(child.stdout) < parent_peak - 1.2, (child.stdout, parent_peak)
    del ballast
    reset_peak_memory()
    assert memory_gib() < parent_peak - 1.2


@pytest.fixture(scope="module")
def shape():
    return model_shape(EMBEDDED_MODEL, lora_r=16)


def test_model_shape_counts_the_real_parameters(shape):
    assert shape.total == 134_515_008 and shape.layers == 30 and shape.vocab == 49152
    # LoRA r=16 on the 7 projections of 30 layers: 16 x (in + out) each.
    per_layer = 16 * ((576 + 576) * 2 + (576 + 192) * 2 + (576 + 1536) * 2 + (1536 + 576))
    assert shape.lora == 30 * per_layer


def test_estimate_verdicts_and_fixes(shape):
    lengths = [80] * 100
    fits = estimate_fit(
        TrainConfig(), lengths, device="cpu", half=False, shape=shape, available_gib=64, measure_speed=False
    )
    assert fits.verdict == "fits" and not fits.advice and not fits.gradient_checkpointing
    short = estimate_fit(
        TrainConfig(batch_size=64), lengths, device="cpu", half=False, shape=shape, available_gib=6, measure_speed=False
    )
    assert short.gradient_checkpointing, "auto turns checkpointing on when memory is short"
    wont = estimate_fit(
        TrainConfig(batch_size=64, gradient_checkpointing="off"),
        lengths,
        device="cpu",
        half=False,
        shape=shape,
        available_gib=4,
        measure_speed=False,
    )
    assert wont.verdict == "will not fit"
    assert any("batch_size=" in fix and "gradient_accumulation_steps=" in fix for fix in wont.advice)
    hopeless = estimate_fit(
        TrainConfig(), lengths, device="cpu", half=False, shape=shape, available_gib=0.5, measure_speed=False
    )
    assert hopeless.verdict == "will not fit" and "smaller base model" in hopeless.advice[-1]


def test_time_estimate_scales_with_steps(shape, monkeypatch):
    # One real speed measurement for both estimates: measured twice, a busy machine makes the ratio anything.
    monkeypatch.setattr(nbkit.train.estimate, "matmul_flops", functools.lru_cache(nbkit.train.estimate.matmul_flops))
    one = estimate_fit(TrainConfig(max_steps=10), [80] * 100, device="cpu", half=False, shape=shape)
    two = estimate_fit(TrainConfig(max_steps=20), [80] * 100, device="cpu", half=False, shape=shape)
    assert one.steps == 10 and one.step_seconds > 0
    assert two.total_seconds == pytest.approx(2 * one.total_seconds, rel=0.05)
    epochs = estimate_fit(
        TrainConfig(max_steps=0, num_train_epochs=2),
        [80] * 100,
        device="cpu",
        half=False,
        shape=shape,
        measure_speed=False,
    )
    assert epochs.verdict == "fits"


class ExplodingTrainer:
    """Stands in for the SFTTrainer to raise what CUDA raises when memory runs out."""

    def __init__(self):
        import torch

        self.model = torch.nn.Linear(2, 2)
        self.args = type("Args", (), {"world_size": 1})()
        self.train_dataset = [0] * 4
        self.freed: list[bool] = []
        self.accelerator = type("Accelerator", (), {"free_memory": lambda _: self.freed.append(True)})()

    def train(self, resume_from_checkpoint=None):
        import torch

        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_out_of_memory_is_answered_with_the_settings_to_change(prepared_workspace, monkeypatch):
    exploding = ExplodingTrainer()
    monkeypatch.setattr(nbkit.train.sft, "build_trainer", lambda *a, **k: (exploding, None, "lora"))
    control = RunControl()
    finished = []
    control.on_finish = lambda: finished.append(True)
    config = TrainConfig(workspace=str(prepared_workspace), run_id="oom", method="lora", batch_size=8, max_seq_len=1024)
    with pytest.raises(OutOfMemory) as info:
        train(config, on_log=None, control=control)
    message = str(info.value)
    assert "batch_size=4 with gradient_accumulation_steps=2" in message
    assert "gradient_checkpointing='on'" in message and "max_seq_len=512" in message
    assert "method='qlora'" in message and "resume=True" in message
    assert finished == [True], "the panel is told training ended"
    assert exploding.freed == [True], "the model and optimizer are released for the smaller retry"
    assert "CUDA out of memory" in message and info.value.__cause__ is None, "the message quotes the error"


def test_runs_are_recorded_only_by_the_main_process(prepared_workspace, monkeypatch):
    monkeypatch.setattr(nbkit.train.sft, "build_trainer", lambda *a, **k: (ExplodingTrainer(), None, "lora"))
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(OutOfMemory):
        train(TrainConfig(workspace=str(prepared_workspace), run_id="rank-one"), on_log=None)
    assert not Workspace(prepared_workspace).run_dir("rank-one").exists()


# -- the diagnosis -----------------------------------------------------------------------------------


def logs(train_losses, evals=()):
    out = [{"step": i + 1, "loss": v} for i, v in enumerate(train_losses)]
    return out + [{"step": s, "eval_loss": v} for s, v in evals]


def test_diagnosis_reads_the_curves():
    assert diagnose(logs([2.0, 1.5, 1.0, 0.6], [(2, 1.4), (4, 1.0)]))["verdict"] == "healthy"
    over = diagnose(logs([2.0, 1.0, 0.5, 0.2, 0.1, 0.05], [(2, 1.2), (4, 1.0), (6, 1.4)]))
    assert over["verdict"] == "overfitting" and "step 4" in over["message"] and "load_best" in over["advice"]
    assert diagnose(logs([3.2, 3.15, 3.1, 3.12]))["verdict"] == "underfitting"
    spiky = diagnose(logs([2.0, 1.2, 0.8, 2.5, 0.9]))
    assert spiky["verdict"] == "unstable" and "learning_rate" in spiky["advice"]
    assert diagnose(logs([2.0, float("nan"), 1.0]))["verdict"] == "unstable"
    assert diagnose(logs([2.0]))["verdict"] == "too short"


# -- the environment doctor -------------------------------------------------------------------------


def test_doctor_reports_platform_device_and_versions(monkeypatch):
    from nbkit.doctor import check_environment, detect_platform, format_environment, version_problems

    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    monkeypatch.delenv("KAGGLE_URL_BASE", raising=False)
    assert detect_platform() == "local"
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    assert detect_platform() == "kaggle"
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20261101")
    assert detect_platform() == "colab"

    report = check_environment()
    assert report.accelerator.kind in ("cpu", "cuda", "mps") and report.accelerator.memory_gib > 0
    assert report.bitsandbytes is None and report.versions["trl"]
    text = format_environment(report)
    assert "Platform: colab" in text and "bitsandbytes works" in text and "transformers" in text
    problems = version_problems({**report.versions, "transformers": "4.30.0", "peft": None})
    assert any("transformers 4.30.0 is outside the tested range" in p for p in problems)
    assert any(p.startswith("peft is not installed") for p in problems)


def test_train_lengths_come_from_the_split(prepared_workspace):
    config = TrainConfig(workspace=str(prepared_workspace), max_seq_len=64)
    lengths = train_lengths(config)
    assert len(lengths) == len(read_jsonl(Workspace(prepared_workspace).split("train")))
    assert max(lengths) == 64 and min(lengths) > 10
