"""Merging the adapter into the base model, the parity check, and a Hub push that fails fast offline."""

from __future__ import annotations

import gc
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from nbkit.errors import ExportError, NbkitError
from nbkit.export import describe_export, export_if_requested, normalized_formats, push_to_hub
from nbkit.train import TrainConfig, train
from nbkit.workspace import Workspace


def test_report_and_export_import_without_notebook_machinery():
    code = ("import sys\nfor name in ('ipywidgets', 'IPython', 'IPython.display', 'plotly'): sys.modules[name] = None\n"
            "import nbkit.report, nbkit.export\nprint('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_export_is_skipped_unless_requested_and_formats_bring_what_they_need():
    assert export_if_requested(SimpleNamespace(export_formats=[], workspace="nowhere"), {"run_id": "x"}) is None
    assert normalized_formats(["ollama"]) == ["merged", "gguf", "ollama"]
    assert normalized_formats(["gguf"]) == ["merged", "gguf"]
    assert normalized_formats(["merged"]) == ["merged"]
    with pytest.raises(NbkitError, match="export_formats.*'onnx'"):
        normalized_formats(["onnx"])
    from nbkit.errors import ConfigError
    from nbkit.evaluate import EvalConfig

    with pytest.raises(ConfigError, match="export_formats"):
        EvalConfig(export_formats=["gguf", "safetensors"])
    assert describe_export(None).startswith("Nothing exported")


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
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):  # behind a proxy the probe is skipped
        monkeypatch.delenv(var, raising=False)
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
def test_merged_gguf_and_ollama_exports_answer_like_the_evaluated_model(prepared_workspace, tmp_path):
    """A QLoRA adapter is merged into its dequantized 4-bit base: in float32 the merged model must give every
    greedy answer the evaluated 4-bit base + adapter gave (the original weights gave 1 of 8). The GGUF files,
    read back from disk alone, carry the chat template and end-of-turn token and answer like the merged model;
    the Modelfile sits next to the Q8_0 file."""
    ws = Workspace(tmp_path / "workspace")
    shutil.copytree(prepared_workspace, ws.root, ignore=shutil.ignore_patterns("runs"))
    train(TrainConfig(workspace=str(ws.root), run_id="export-run", max_steps=2, batch_size=4, max_seq_len=160,
                      eval_steps=0, lora_r=8, lora_alpha=16, logging_steps=1), on_log=None)
    gc.collect()
    models_before = live_models()
    gc.disable()  # the three models the merge loads must be freed by the merge itself
    try:
        record = export_if_requested(SimpleNamespace(export_formats=["ollama"], workspace=str(ws.root)),
                                     {"run_id": "export-run"})
        assert live_models() == models_before, "a model outlived the exports"
    finally:
        gc.enable()
    export = ws.run_dir("export-run") / "export"
    merged = export / "merged"
    result = record["merged"]
    assert result["path"] == str(merged) and record["formats"] == ["merged", "gguf", "ollama"]
    assert json.loads((export / "parity.json").read_text()) == json.loads(json.dumps(record))
    for name in ("config.json", "model.safetensors", "tokenizer_config.json", "parity.json"):
        assert (merged / name).exists(), name
    config = json.loads((merged / "config.json").read_text())
    assert "quantization_config" not in config, "the merged model must be a plain full-precision checkpoint"
    parity = json.loads((merged / "parity.json").read_text())
    assert parity["prompts"] == 8 and parity["identical"] == 8 and parity["mismatches"] == [], parity
    assert parity["compared_with"] == "4-bit base + adapter" and parity["tolerance"] == 1.0
    assert parity["within_tolerance"] and parity["merged_on"] == "cpu" and parity["saved_dtype"] == "float32"
    assert {k: result[k] for k in parity} == parity
    assert parity["runaway"]["merged"] == parity["runaway"]["evaluated"]

    import gguf

    for kind, tolerance in (("f16", 0.75), ("q8_0", 0.5)):
        entry = record["gguf"][kind]
        assert entry["path"] == str(export / f"export-run-{kind}.gguf")
        assert entry["tolerance"] == tolerance and entry["within_tolerance"], entry
        assert entry["chat_template_in_file"] and entry["eos_token"] == "<|im_end|>"
        fields = gguf.GGUFReader(entry["path"]).fields
        assert fields["general.architecture"].contents() == "llama"
        assert fields["tokenizer.ggml.pre"].contents() == "smollm"
        assert fields["tokenizer.ggml.eos_token_id"].contents() == 2  # <|im_end|>
        assert "<|im_start|>" in fields["tokenizer.chat_template"].contents()
    assert record["gguf"]["f16"]["identical"] == 8, "16-bit weights of a float32 model must answer alike"
    assert record["gguf"]["q8_0"]["bytes"] < 0.6 * record["gguf"]["f16"]["bytes"]
    modelfile = (export / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./export-run-q8_0.gguf\nTEMPLATE") and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert 'SYSTEM """Triage the support ticket.' in modelfile  # the sample data's system prompt
    assert record["ollama"]["commands"][1:] == ["ollama create nbkit-export-run -f Modelfile",
                                                "ollama run nbkit-export-run"]
    text = describe_export(record)
    assert "export-run-q8_0.gguf" in text and "ollama run nbkit-export-run" in text


def test_gguf_export_refuses_what_it_has_not_been_checked_on(tmp_path):
    from nbkit.gguf_export import gguf_problem, write_gguf
    from nbkit.models import EMBEDDED_MODEL, resolve_model

    source = Path(resolve_model(EMBEDDED_MODEL))
    assert gguf_problem(source) is None

    def variant(name: str, **config_changes) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        for file in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(source / file, folder / file)
        config = {**json.loads((source / "config.json").read_text()), **config_changes}
        (folder / "config.json").write_text(json.dumps(config))
        return folder

    qwen = variant("qwen", architectures=["Qwen2ForCausalLM"], model_type="qwen2")
    assert "supports LlamaForCausalLM" in gguf_problem(qwen) and "Qwen2ForCausalLM" in gguf_problem(qwen)
    scaled = variant("llama31", rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    assert "RoPE scaling 'llama3'" in gguf_problem(scaled)
    tokenizer = json.loads((source / "tokenizer.json").read_text())
    tokenizer["pre_tokenizer"] = {"type": "Whitespace"}  # splits text unlike any pre-tokenizer llama.cpp knows
    other = variant("other-pre")
    (other / "tokenizer.json").write_text(json.dumps(tokenizer))
    assert "pre-tokenizer is not one llama.cpp" in gguf_problem(other)
    with pytest.raises(ExportError, match="cannot be exported to GGUF: the GGUF export supports"):
        write_gguf(qwen, tmp_path / "x.gguf")
