"""The embedded model: converted once, loads in 4-bit on CPU, answers, and its chat template masks right."""

from __future__ import annotations

import pytest

from nbkit.core.errors import ConfigError
from nbkit.model.loader import EMBEDDED_MODEL, load_model, resolve_model
from nbkit.model.loss_mask import IGNORE_INDEX, mask_problems, tokenize_chat

pytestmark = pytest.mark.model


def test_embedded_model_is_converted_to_a_cached_safetensors_checkpoint():
    path = resolve_model(EMBEDDED_MODEL)
    assert path.endswith("SmolLM2-135M-Instruct")
    from pathlib import Path

    assert (Path(path) / "model.safetensors").stat().st_size > 100_000_000
    assert resolve_model("some-org/some-model") == "some-org/some-model"


@pytest.fixture(scope="module")
def qlora():
    return load_model(EMBEDDED_MODEL, "qlora")


def test_qlora_loads_4bit_nf4_and_answers(tokenizer, qlora):
    import torch

    model, method = qlora
    assert method == "qlora"
    quant = model.config.quantization_config
    assert quant.load_in_4bit and quant.bnb_4bit_quant_type == "nf4" and quant.bnb_4bit_use_double_quant
    assert model.get_memory_footprint() < 250 * 2**20  # 4-bit: well under the 540 MB of float32 weights
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert "Paris" in tokenizer.decode(out[0, ids["input_ids"].shape[1] :])


def test_unknown_method_is_refused():
    with pytest.raises(ConfigError, match="`method`"):
        load_model(EMBEDDED_MODEL, "adapter")


def test_loss_mask_trains_only_assistant_turns_and_their_end_token(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Goodbye!"},
    ]
    encoded = tokenize_chat(tokenizer, messages)
    trained = tokenizer.decode(
        [t for t, label in zip(encoded["input_ids"], encoded["labels"]) if label != IGNORE_INDEX]
    )
    assert trained == "Hello!<|im_end|>Goodbye!<|im_end|>"
    assert mask_problems(tokenizer, messages) == []
    assert len(tokenize_chat(tokenizer, messages, max_seq_len=10)["input_ids"]) == 10


def test_batched_generation_gives_the_same_greedy_answers_as_one_by_one(tokenizer, qlora):
    import json

    from nbkit.core.rows import prompt_messages
    from nbkit.data.collect import SAMPLE_DATA
    from nbkit.model.generation import generate

    model, _ = qlora
    model.eval()
    rows = [json.loads(line) for line in SAMPLE_DATA.read_text(encoding="utf-8").splitlines()[:6]]
    prompts = [prompt_messages(r["messages"]) for r in rows]  # different lengths: real left padding
    serial = generate(model, tokenizer, prompts, max_new_tokens=10, batch_size=1)
    batched = generate(model, tokenizer, prompts, max_new_tokens=10, batch_size=6)
    assert batched == serial
    assert len(set(serial)) > 1


def full_logits_loss(model, tokenizer, rows, max_seq_len=160) -> float:
    """The plain way: right padding, logits for every position, one cross-entropy."""
    import torch

    encoded = [tokenize_chat(tokenizer, r["messages"], max_seq_len) for r in rows]
    width = max(len(e["input_ids"]) for e in encoded)
    ids = torch.tensor([e["input_ids"] + [tokenizer.pad_token_id] * (width - len(e["input_ids"])) for e in encoded])
    labels = torch.tensor([e["labels"] + [IGNORE_INDEX] * (width - len(e["labels"])) for e in encoded])
    mask = torch.tensor([[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in encoded])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX
    ).item()


def test_the_loss_pass_scores_answer_positions_only_and_agrees_with_full_logits(tokenizer, qlora):
    """Evaluation's loss keeps logits for the answer span only, in memory-bounded chunks: the same number as
    full logits, whether the rows go together or one by one (a budget smaller than one row)."""
    import json

    from nbkit.data.collect import SAMPLE_DATA
    from nbkit.evaluate.evaluator import loss_batches, mean_loss

    model, _ = qlora
    model.eval()
    rows = [json.loads(line) for line in SAMPLE_DATA.read_text(encoding="utf-8").splitlines()[:6]]
    reference = full_logits_loss(model, tokenizer, rows)
    together = mean_loss(model, tokenizer, rows, 160, batch_size=6)
    one_by_one = mean_loss(model, tokenizer, rows, 160, batch_size=6, max_entries=1)
    assert together == pytest.approx(reference, rel=2e-3) and one_by_one == pytest.approx(reference, rel=2e-3)
    encoded = [tokenize_chat(tokenizer, r["messages"], 160) for r in rows]
    vocab = model.get_output_embeddings().weight.shape[0]
    assert [len(b) for b in loss_batches(encoded, vocab, 4, 2**26)] == [4, 2]
    assert [len(b) for b in loss_batches(encoded, vocab, 6, 1)] == [1] * 6
