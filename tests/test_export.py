"""Merging the adapter into the base model, the parity check, and a Hub push that fails fast offline."""

from __future__ import annotations

import gc
import json
import shutil
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from nbkit.errors import NbkitError
from nbkit.export import merge_if_requested, push_to_hub
from nbkit.train import TrainConfig, train
from nbkit.workspace import Workspace


def test_report_and_export_import_without_notebook_machinery():
    code = ("import sys\nfor name in ('ipywidgets', 'IPython', 'IPython.display', 'plotly'): sys.modules[name] = None\n"
            "import nbkit.report, nbkit.export\nprint('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_merge_is_skipped_unless_requested():
    assert merge_if_requested(SimpleNamespace(merge=False, workspace="nowhere"), {"run_id": "x"}) is None


@pytest.fixture
def model_folder(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    return tmp_path


def test_push_fails_fast_when_offline(model_folder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(NbkitError, match="HF_HUB_OFFLINE"):
        push_to_hub(model_folder, "someone/my-model")


def test_push_fails_fast_when_the_hub_is_unreachable(model_folder, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: refused at once
    started = time.monotonic()
    with pytest.raises(NbkitError, match="unreachable"):
        push_to_hub(model_folder, "someone/my-model")
    assert time.monotonic() - started < 10


def test_push_checks_its_inputs(tmp_path, model_folder):
    with pytest.raises(NbkitError, match="holds no model"):
        push_to_hub(tmp_path / "empty", "someone/my-model")
    with pytest.raises(NbkitError, match="repo_id"):
        push_to_hub(model_folder, "no-owner")


def live_models() -> int:
    from transformers import PreTrainedModel

    return sum(isinstance(o, PreTrainedModel) for o in gc.get_objects())


@pytest.mark.model
def test_merged_model_answers_exactly_like_the_evaluated_model(prepared_workspace, tmp_path):
    """A QLoRA adapter is merged into its dequantized 4-bit base: in float32 the merged model must give every
    greedy answer the evaluated 4-bit base + adapter gave (the original weights gave 1 of 8)."""
    ws = Workspace(tmp_path / "workspace")
    shutil.copytree(prepared_workspace, ws.root, ignore=shutil.ignore_patterns("runs"))
    train(TrainConfig(workspace=str(ws.root), run_id="export-run", max_steps=2, batch_size=4, max_seq_len=160,
                      eval_steps=0, lora_r=8, lora_alpha=16, logging_steps=1), on_log=None)
    gc.collect()
    models_before = live_models()
    gc.disable()  # the three models the merge loads must be freed by the merge itself
    try:
        result = merge_if_requested(SimpleNamespace(merge=True, workspace=str(ws.root)), {"run_id": "export-run"})
        assert live_models() == models_before, "a model outlived the merge"
    finally:
        gc.enable()
    merged = ws.run_dir("export-run") / "merged"
    assert result["path"] == str(merged)
    for name in ("config.json", "model.safetensors", "tokenizer_config.json", "parity.json"):
        assert (merged / name).exists(), name
    config = json.loads((merged / "config.json").read_text())
    assert "quantization_config" not in config, "the merged model must be a plain full-precision checkpoint"
    parity = json.loads((merged / "parity.json").read_text())
    assert parity["prompts"] == 8 and parity["identical"] == 8 and parity["mismatches"] == [], parity
    assert parity["compared_with"] == "4-bit base + adapter" and parity["tolerance"] == 1.0
    assert parity["within_tolerance"] and parity["merged_on"] == "cpu" and parity["saved_dtype"] == "float32"
    assert {k: result[k] for k in parity} == parity
