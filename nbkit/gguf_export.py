"""GGUF files of a merged model, for llama.cpp, Ollama and LM Studio, written with gguf-py (llama.cpp's library).

What a runtime needs is written the way llama.cpp's own converter (convert_hf_to_gguf.py) writes it for
Llama-architecture models: the hyper-parameters, the tokenizer (tokens, token types, merges, the
pre-tokenizer name, BOS/EOS/padding ids), the model's chat template, and the tensors under llama.cpp's names,
with the query and key projections permuted into llama.cpp's rotary layout. Norms stay float32; the
matrices are float16 ("f16") or 8-bit blocks ("q8_0", ~half the size, nearly lossless).

Only what has been checked is written; anything else is refused with the reason (`gguf_problem`):
architectures in SUPPORTED_ARCHITECTURES, BPE tokenizers whose pre-tokenizer is recognised (KNOWN_PRE_TOKENIZERS,
identified as llama.cpp identifies them: a hash of the tokens of a fixed text), RoPE without scaling or with
linear scaling.
"""

from __future__ import annotations

import json
from hashlib import sha256
from pathlib import Path
from typing import Any

from nbkit.errors import ConfigError, ExportError

SUPPORTED_ARCHITECTURES = {"LlamaForCausalLM": "llama"}  # HF class -> GGUF architecture (SmolLM, Llama 2/3)
GGUF_TYPES = ("f16", "q8_0")
# llama.cpp's pre-tokenizer check text (convert_hf_to_gguf.py, get_vocab_base_pre): the sha256 of the token ids
# of this text tells which pre-tokenizer (how text is split before BPE) a tokenizer uses.
CHECK_TEXT = '\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български \'\'\'\'\'\'```````""""......!!!!!!?????? I\'ve been \'told he\'s there, \'RE you sure? \'M not sure I\'ll make it, \'D you like some tea? We\'Ve a\'lL'
KNOWN_PRE_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM, SmolLM2
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3, 3.1, 3.2
}
ROPE_TYPES = (None, "default", "linear")


def gguf_problem(model_dir: str | Path) -> str | None:
    """None when `model_dir` (a merged checkpoint) can be written as GGUF here, else the reason it cannot."""
    from transformers import AutoConfig, AutoTokenizer

    model_dir = Path(model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    architecture = (config.architectures or ["?"])[0]
    if architecture not in SUPPORTED_ARCHITECTURES:
        return (f"the GGUF export supports {', '.join(SUPPORTED_ARCHITECTURES)} (SmolLM, Llama 2/3 and their "
                f"fine-tunes); {architecture} is not checked here — convert the merged folder with llama.cpp's "
                "convert_hf_to_gguf.py instead")
    rope = _rope_type(config)
    if rope not in ROPE_TYPES:
        return f"RoPE scaling {rope!r} is not written by this exporter (only none or linear); use llama.cpp's converter"
    if not (model_dir / "tokenizer.json").is_file():
        return "no tokenizer.json: only BPE tokenizers saved by the tokenizers library are exported"
    if json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))["model"]["type"] != "BPE":
        return "the tokenizer is not BPE: only BPE tokenizers (SmolLM, Llama 3) are exported"
    if pre_tokenizer(AutoTokenizer.from_pretrained(model_dir)) is None:
        return ("the tokenizer's pre-tokenizer is not one llama.cpp is known to split the same way "
                f"({', '.join(KNOWN_PRE_TOKENIZERS.values())}); use llama.cpp's converter")
    return None


def pre_tokenizer(tokenizer) -> str | None:
    """llama.cpp's name for how this tokenizer splits text before BPE, or None when it is not a known one."""
    digest = sha256(str(tokenizer.encode(CHECK_TEXT)).encode()).hexdigest()
    return KNOWN_PRE_TOKENIZERS.get(digest)


def _rope_type(config) -> str | None:
    rope = getattr(config, "rope_scaling", None) or getattr(config, "rope_parameters", None) or {}
    return rope.get("rope_type", rope.get("type")) if isinstance(rope, dict) else None


def write_gguf(model_dir: str | Path, out_path: str | Path, gguf_type: str = "f16") -> dict[str, Any]:
    """Write the merged checkpoint in `model_dir` as one GGUF file; returns {"path", "type", "bytes", "tensors"}."""
    import gguf
    from transformers import AutoConfig, AutoTokenizer

    if gguf_type not in GGUF_TYPES:
        raise ConfigError(f"`gguf_type` must be one of {', '.join(GGUF_TYPES)}, got {gguf_type!r} — pick one of those.")
    model_dir, out_path = Path(model_dir), Path(out_path)
    problem = gguf_problem(model_dir)
    if problem:
        raise ExportError(f"{model_dir} cannot be exported to GGUF: {problem} — export 'merged' only, or convert "
                          "the merged folder with llama.cpp's convert_hf_to_gguf.py.")
    config = AutoConfig.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    arch = SUPPORTED_ARCHITECTURES[config.architectures[0]]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(out_path, arch)
    writer.add_name(out_path.stem)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if gguf_type == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _hyper_parameters(writer, config)
    _vocabulary(writer, tokenizer, model_dir, config.vocab_size)
    count = _tensors(writer, model_dir, config, gguf_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"path": str(out_path), "type": gguf_type, "bytes": out_path.stat().st_size, "tensors": count}


def _hyper_parameters(writer, config) -> None:
    import gguf

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    rope = getattr(config, "rope_parameters", None) or {}
    theta = rope.get("rope_theta") if isinstance(rope, dict) else None
    writer.add_rope_freq_base(float(theta or getattr(config, "rope_theta", 10000.0)))
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(config.vocab_size)
    scaling = getattr(config, "rope_scaling", None) or (rope if isinstance(rope, dict) else {})
    if _rope_type(config) == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(scaling["factor"])


def _vocabulary(writer, tokenizer, model_dir: Path, vocab_size: int) -> None:
    """Tokens and their types as llama.cpp's converter lists them (get_vocab_base), then merges, special
    token ids, add-BOS/EOS flags and the chat template from the tokenizer files (gguf-py's SpecialVocab)."""
    import gguf

    reverse = {i: token for token, i in tokenizer.get_vocab().items()}
    added = tokenizer.get_added_vocab()
    decoder = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        token = reverse.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif token in added:
            if not decoder[i].normalized:
                token = tokenizer.decode(tokenizer.encode(token, add_special_tokens=False))
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if decoder[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer(tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=vocab_size)
    # What the tokenizer really does with BOS (tokenizer_config.json may not say): llama.cpp must do the same.
    special.add_special_token["bos"] = bool(tokenizer.bos_token_id is not None and tokenizer("a")["input_ids"][:1]
                                            == [tokenizer.bos_token_id])
    special.add_to_gguf(writer, quiet=True)
    if special.chat_template is None and tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def _tensors(writer, model_dir: Path, config, gguf_type: str) -> int:
    import gguf
    import torch
    from safetensors.torch import load_file

    arch = SUPPORTED_ARCHITECTURES[config.architectures[0]]
    names = gguf.get_tensor_name_map(next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch),
                                     config.num_hidden_layers)
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        state.update(load_file(shard))
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # llama.cpp reads the embedding matrix as the output head
    for name, tensor in state.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue
        data = tensor.float()
        if name.endswith("q_proj.weight"):
            data = _permute(data, heads, heads)
        elif name.endswith("k_proj.weight"):
            data = _permute(data, heads, kv_heads)
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ValueError(f"{model_dir}: no GGUF name for tensor {name!r}")
        array = data.numpy()
        if array.ndim == 1:
            writer.add_tensor(gguf_name, array.astype("float32"))
        elif gguf_type == "q8_0" and array.shape[-1] % 32 == 0:
            qtype = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(gguf_name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(gguf_name, array.astype("float16"))
    return len(state)


def _permute(weights, n_head: int, n_head_kv: int):
    """Hugging Face's rotary layout (halves) -> llama.cpp's (interleaved pairs), as llama.cpp's converter does."""
    if n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))
