"""GGUF export through llama.cpp's converter for each family users fine-tune, read back from the file alone.

Each family is a tiny random-weight model with the family's real tokenizer and chat template (tests/families.py).
Its folder is prepared the way export_run prepares a merged model: saved with the tokenizer nbkit renders with
(export.save_tokenizer; Gemma 3's folder has no template, nbkit supplies one) and, for the SentencePiece vocabularies
(Phi-3.5, Gemma 3), a tokenizer.model rebuilt from the GGUF vocabulary the family was built from (Gemma 3's is the
embedded model's: add_sentencepiece_file does it as for a run on that base). nbkit.export.gguf.write_gguf then
writes f16 and Q8_0.

All six families read back through transformers' GGUF loader (5.25), tokenizer and model. Qwen3 only through
read_back's retry: transformers reads no `attention.key_length` for qwen3 and takes its default head size (128),
which this tiny model (8) does not have. The Q8_0 files are checked with gguf-py's GGUFReader (architecture, file and
tensor types, tensor count, vocabulary size, the end-of-turn token) rather than loaded a second time, to keep this
fast (gguf-py parses a 150k-token vocabulary in ~10 s here).
"""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest

from nbkit.model.chat_templates import end_of_turn, end_of_turn_token_id

pytestmark = pytest.mark.model

# family -> the architecture llama.cpp's converter writes (Mistral 7B is a Llama to llama.cpp)
ARCHITECTURES = {
    "qwen2.5": "qwen2",
    "qwen3": "qwen3",
    "llama3.2": "llama",
    "phi3.5": "phi3",
    "mistral": "llama",
    "gemma3": "gemma3",
}
CONVERSATION = [
    {"role": "system", "content": "Antworte kurz. 答えは短く。"},
    {"role": "user", "content": "Grüße 🚀 日本語 привет — ¿qué tal? 👩‍💻 naïve café\ttab  two spaces"},
    {"role": "assistant", "content": "Привет! 🚀 Alles gut — 日本語も大丈夫です。 ✅"},
    {"role": "user", "content": "Und jetzt? 🤔"},
]


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def exported(request, family_model, tmp_path_factory):
    """One family converted to f16 and Q8_0, from a folder prepared as a merged model is."""
    import families

    from nbkit.export.gguf import (
        GGUF_TYPES,
        add_sentencepiece_file,
        sentencepiece_from_gguf,
        sentencepiece_tokenizer,
        write_gguf,
    )
    from nbkit.export.merge import save_tokenizer
    from nbkit.model.loader import EMBEDDED_GEMMA, load_tokenizer

    name = request.param
    source = family_model(name)
    folder = tmp_path_factory.mktemp(f"gguf-{name}")
    model_dir = folder / "merged"
    shutil.copytree(source, model_dir, ignore=shutil.ignore_patterns("tokenizer*", "chat_template*"))
    tokenizer = load_tokenizer(str(source))
    save_tokenizer(tokenizer, model_dir)
    vocabulary = families.FAMILIES[name].vocab
    if vocabulary == "gemma3":  # the embedded Gemma 3's tokenizer, as a run on that base model has it
        assert add_sentencepiece_file(model_dir, EMBEDDED_GEMMA).startswith("rebuilt from gemma-3-270m")
    elif sentencepiece_tokenizer(model_dir):
        assert sentencepiece_from_gguf(families.ASSETS / f"ggml-vocab-{vocabulary}.gguf", model_dir) is not None
    files = {kind: write_gguf(model_dir, folder / f"{name}-{kind}.gguf", kind) for kind in GGUF_TYPES}
    return SimpleNamespace(name=name, model_dir=model_dir, tokenizer=tokenizer, files=files)


@pytest.fixture(scope="module")
def read(exported):
    """The f16 file's tokenizer and model, through transformers' GGUF loader (nbkit.export.gguf.read_back)."""
    from nbkit.export.gguf import read_back

    tokenizer, model = read_back(exported.files["f16"]["path"])
    return SimpleNamespace(tokenizer=tokenizer, model=model)


def test_the_file_tokenizes_a_conversation_like_the_source(exported, read):
    text = exported.tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    for sample in (text, CONVERSATION[1]["content"]):
        expected = exported.tokenizer.encode(sample, add_special_tokens=False)
        assert read.tokenizer.encode(sample, add_special_tokens=False) == expected, (
            exported.tokenizer.convert_ids_to_tokens(expected),
            read.tokenizer.tokenize(sample),
        )
    plain = CONVERSATION[1]["content"]
    assert read.tokenizer.encode(plain) == exported.tokenizer.encode(plain), "BOS handling differs"


def test_the_file_carries_the_chat_template_and_the_end_of_turn_token(exported, read):
    import families

    assert read.tokenizer.chat_template == exported.tokenizer.chat_template  # nbkit's, for Gemma 3
    turn_end = families.FAMILIES[exported.name].end_of_turn
    assert end_of_turn(read.tokenizer) == end_of_turn(exported.tokenizer) == turn_end
    assert end_of_turn_token_id(read.tokenizer) == exported.tokenizer.convert_tokens_to_ids(turn_end)
    assert read.tokenizer.apply_chat_template(
        CONVERSATION, tokenize=False, add_generation_prompt=True
    ) == exported.tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)


def test_the_f16_file_computes_what_the_source_model_does(exported, read):
    """Random weights: logits equal within f16 rounding, and the same greedy continuation."""
    import torch
    from transformers import AutoModelForCausalLM

    source = AutoModelForCausalLM.from_pretrained(exported.model_dir, dtype=torch.float32).eval()
    ids = torch.tensor(
        [
            exported.tokenizer.apply_chat_template(
                CONVERSATION[:2], add_generation_prompt=True, tokenize=True, return_dict=True
            )["input_ids"]
        ]
    )
    with torch.no_grad():
        expected, got = source(ids).logits, read.model(ids).logits
        assert torch.allclose(got, expected, atol=5e-3, rtol=0), (got - expected).abs().max()
        settings = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": exported.tokenizer.pad_token_id}
        assert read.model.generate(ids, **settings).tolist() == source.generate(ids, **settings).tolist()


def test_the_q8_0_file_holds_the_same_model_in_8_bit_blocks(exported):
    """Checked with gguf-py's reader (the vocabulary is written as for f16, whatever the tensor type)."""
    import json

    import families
    import gguf

    q8, f16 = exported.files["q8_0"], exported.files["f16"]
    assert q8["tensors"] == f16["tensors"] and q8["bytes"] < f16["bytes"]
    reader = gguf.GGUFReader(q8["path"])
    assert reader.fields["general.architecture"].contents() == ARCHITECTURES[exported.name]
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q8_0
    assert gguf.GGMLQuantizationType.Q8_0 in {t.tensor_type for t in reader.tensors}
    assert len(reader.tensors) == q8["tensors"]
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    assert len(tokens) == json.loads((exported.model_dir / "config.json").read_text())["vocab_size"]
    turn_end = families.FAMILIES[exported.name].end_of_turn
    assert tokens[exported.tokenizer.convert_tokens_to_ids(turn_end)] == turn_end
