"""The model families users fine-tune, each as a tiny random-weight model with its REAL tokenizer and chat template
(tests/families.py): the loss mask trains each answer and the family's own end of turn, generation stops there,
base checkpoints get a template, the replay guard notices a model that does not answer, and one short QLoRA run
per family trains."""

from __future__ import annotations

import copy

import pytest
from families import FAMILIES

from nbkit.model.chat_templates import CHATML, PLAIN, end_of_turn, final_answer, template_for
from nbkit.model.generation import end_of_turn_ids
from nbkit.model.loader import load_tokenizer
from nbkit.model.loss_mask import answers_without_end_of_turn, encode_chat, mask_problems, mask_segments

NAMES = list(FAMILIES)
CONVERSATIONS = [
    [
        {"role": "system", "content": "You triage tickets."},
        {"role": "user", "content": "Login fails 🚀"},
        {"role": "assistant", "content": '{"team": "auth"}'},
    ],
    [
        {"role": "user", "content": "Grüße! 日本語 привет"},
        {"role": "assistant", "content": "Hallo, wie geht's?"},
        {"role": "user", "content": "And once more?"},
        {"role": "assistant", "content": "Hallo noch einmal."},
    ],
]


@pytest.fixture(scope="module", params=NAMES)
def family(request, family_model):
    folder = family_model(request.param)
    return FAMILIES[request.param], folder, load_tokenizer(str(folder))


def test_end_of_turn_is_read_off_the_template_not_assumed_to_be_eos(family):
    spec, folder, tokenizer = family
    assert end_of_turn(tokenizer) == spec.end_of_turn
    if spec.name in ("gemma3", "phi3.5"):  # the families whose end of turn is not their EOS
        assert tokenizer.eos_token != spec.end_of_turn


@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["system", "two-turns"])
def test_the_mask_trains_each_answer_and_its_end_of_turn_and_nothing_else(family, messages):
    spec, _, tokenizer = family
    encoded = encode_chat(tokenizer, messages)
    assert mask_problems(tokenizer, messages, encoded=encoded) == []
    assert answers_without_end_of_turn(tokenizer, encoded) == 0
    trained = [text for text, on in mask_segments(tokenizer, messages, encoded=encoded) if on]
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    assert len(trained) == len(answers)  # one trained run per answer, nothing between them
    for text, answer in zip(trained, answers):
        assert answer in text and spec.end_of_turn in text
        before, after = text.split(answer, 1)
        # Before the answer: at most the piece of a token that straddles its start (SentencePiece merges "]{"
        # after Mistral's "[/INST]"). After it: the end of turn, whitespace, Phi's trailing <|endoftext|>.
        assert before.strip() in ("", "]"), before
        assert after.replace(spec.end_of_turn, "").replace("<|endoftext|>", "").strip() == "", after
    for message in messages:
        if message["role"] != "assistant":
            assert not any(message["content"] in text for text in trained)


def test_generation_stops_at_the_template_end_of_turn(family):
    """A model pushed to write the end of turn first stops after one token, with only the tokenizer's EOS left in
    its generation config: the template's end of turn is a stop of its own."""
    import torch
    from transformers import AutoModelForCausalLM

    from nbkit.model.generation import generate_with_stops

    spec, folder, tokenizer = family
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    eot = tokenizer.convert_tokens_to_ids(spec.end_of_turn)
    assert eot in end_of_turn_ids(model.generation_config, tokenizer)

    def push(_module, _inputs, logits):
        logits[..., eot] += 1e4
        return logits

    prompt = [CONVERSATIONS[0][:2]]
    runaway, stopped_runaway = generate_with_stops(model, tokenizer, prompt, 6)
    handle = model.get_output_embeddings().register_forward_hook(push)
    try:
        answers, stopped = generate_with_stops(model, tokenizer, prompt, 6)
    finally:
        handle.remove()
    assert (answers, stopped) == ([""], [True])
    assert stopped_runaway == [False] or runaway[0] == ""  # random weights ramble unless they hit a stop


def test_qwen3_thinking_off_puts_the_empty_think_block_in_the_prompt_and_on_trains_it(family_model):
    folder = family_model("qwen3")
    messages = CONVERSATIONS[0]
    off, on = load_tokenizer(str(folder)), load_tokenizer(str(folder), thinking=True)
    prompt_off = off.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    prompt_on = on.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt_off.endswith("<think>\n\n</think>\n\n") and not prompt_on.endswith("</think>\n\n")
    trained_off = "".join(t for t, on_ in mask_segments(off, messages) if on_)
    trained_on = "".join(t for t, on_ in mask_segments(on, messages) if on_)
    assert "<think>" not in trained_off and "<think>\n\n</think>" in trained_on
    assert final_answer("<think>\n\n</think>\n\nHello") == "Hello"
    assert (
        off.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True, enable_thinking=True)
        == prompt_on
    )  # an explicit argument still wins


def test_a_base_checkpoint_gets_its_familys_template_or_a_plain_one(family_model, tokenizer):
    gemma = load_tokenizer(str(family_model("gemma3")))  # the real Gemma 3 270M files carry no template
    assert gemma.nbkit_template == "gemma3" and end_of_turn(gemma) == "<end_of_turn>"
    text = gemma.apply_chat_template(CONVERSATIONS[0], tokenize=False)
    assert text.startswith("<bos><start_of_turn>user\nYou triage tickets.\n\nLogin fails")
    assert "<start_of_turn>model\n" in text

    qwen_base = copy.deepcopy(load_tokenizer(str(family_model("qwen2.5"))))
    qwen_base.chat_template = None
    assert template_for(qwen_base) == ("chatml", CHATML)

    no_turn_tokens = copy.deepcopy(tokenizer)
    no_turn_tokens.chat_template = None
    vocab = no_turn_tokens.get_vocab()
    if "<|im_start|>" in vocab:  # SmolLM2's vocabulary has ChatML's tokens; Mistral's SentencePiece one has none
        no_turn_tokens = copy.deepcopy(load_tokenizer(str(family_model("mistral"))))
        no_turn_tokens.chat_template = None
    name, template = template_for(no_turn_tokens)
    assert (name, template) == ("plain", PLAIN)
    no_turn_tokens.chat_template = template
    messages = CONVERSATIONS[1]
    assert end_of_turn(no_turn_tokens) == no_turn_tokens.eos_token
    assert mask_problems(no_turn_tokens, messages) == []


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    """The bundled sample data collected once; each family formats, splits and trains on a copy."""
    from nbkit.data.collect import CollectConfig, collect

    ws = tmp_path_factory.mktemp("collected")
    collect(CollectConfig(workspace=str(ws)))
    return ws


@pytest.mark.model
@pytest.mark.parametrize("name", NAMES)
def test_each_family_formats_and_trains_with_qlora(name, family_model, collected, tmp_path):
    """02 masks every bundled row right with the family's end of turn; a short QLoRA run lowers the loss and trains
    the LoRA weights. Gemma (a base checkpoint, and random weights that answer no general prompt) also shows the
    replay guard turning itself off with the reason; the others format without it, to keep the test short."""
    import shutil

    import torch
    from safetensors.torch import load_file

    from nbkit.core.files import read_json
    from nbkit.core.train_config import TrainConfig
    from nbkit.core.workspace import Workspace
    from nbkit.data.formatting import FormatConfig, format_rows
    from nbkit.data.split import SplitConfig, split_dataset
    from nbkit.train.sft import train

    folder = family_model(name)
    ws = tmp_path / "ws"
    shutil.copytree(collected, ws)
    guard = name == "gemma3"
    if guard:
        from nbkit.data.quality import QualityConfig, quality_report

        before = quality_report(QualityConfig(workspace=str(ws), base_model=str(folder)))
        assert before["replay"]["enabled"] and before["replay"]["base_model_without_template"]
        assert any("ships no chat template (a base model)" in item["message"] for item in before["verdict"])
    report = format_rows(FormatConfig(workspace=str(ws), base_model=str(folder), max_seq_len=256, replay_guard=guard))
    assert report["mask_problems"] == {} and report["answers_without_end_of_turn"] == 0
    assert report["chat_template"]["end_of_turn"] == FAMILIES[name].end_of_turn
    if guard:
        assert report["replay"]["enabled"] is False and "nothing worth replaying" in report["replay"]["off_reason"]
        quality = read_json(Workspace(ws).quality_report)
        assert not quality["replay"]["enabled"]
        assert not any(item["message"].startswith("Replay guard on") for item in quality["verdict"])
        assert any(item["message"].startswith("Replay guard off: ") for item in quality["verdict"])
    split_dataset(SplitConfig(workspace=str(ws)))
    run = train(
        TrainConfig(
            workspace=str(ws),
            run_id="tiny",
            method="qlora",
            max_steps=6,
            batch_size=4,
            learning_rate=5e-3,
            eval_steps=0,
            logging_steps=1,
        )
    )
    losses = [
        row["loss"]
        for row in Workspace(ws).run_dir("tiny").joinpath("metrics.jsonl").read_text().splitlines()
        for row in [__import__("json").loads(row)]
        if "loss" in row
    ]
    assert run["thinking"] is False and losses and losses[-1] < losses[0]
    adapter = load_file(Workspace(ws).run_dir("tiny") / "adapter" / "adapter_model.safetensors")
    assert any(k.endswith("lora_B.weight") and torch.count_nonzero(v) for k, v in adapter.items())


@pytest.mark.model
def test_the_real_gemma_3_270m_loads_in_4bit_continues_text_and_learns_its_turn_format(tmp_path):
    """The second embedded model, real weights (dequantized from the packaged Q4_K_M): 4-bit QLoRA load, a low loss
    on plain English, and a few steps on one chat row in Gemma's own template lower that row's loss."""
    import importlib.util

    import torch
    from peft import LoraConfig, get_peft_model

    from nbkit.model.loader import EMBEDDED_GEMMA, EMBEDDED_MODELS, load_model
    from nbkit.model.loss_mask import tokenize_chat

    if importlib.util.find_spec(EMBEDDED_MODELS[EMBEDDED_GEMMA][0]) is None:
        pytest.skip(f"{EMBEDDED_GEMMA} is not installed: {EMBEDDED_MODELS[EMBEDDED_GEMMA][2]}")
    tokenizer = load_tokenizer(EMBEDDED_GEMMA)
    assert tokenizer.nbkit_template == "gemma3" and end_of_turn(tokenizer) == "<end_of_turn>"
    model, method = load_model(EMBEDDED_GEMMA, "qlora")
    assert method == "qlora" and type(model).__name__ == "Gemma3ForCausalLM"
    # Real weights read plain English easily (loss 2.35 here); random ones sit near ln(262144) = 12.5.
    inputs = tokenizer("The capital of France is Paris. It is the largest city in the country.", return_tensors="pt")
    with torch.no_grad():
        assert model(**inputs, labels=inputs["input_ids"]).loss.item() < 4.0

    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    row = tokenize_chat(tokenizer, CONVERSATIONS[0])
    batch = {"input_ids": torch.tensor([row["input_ids"]]), "labels": torch.tensor([row["labels"]])}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    losses = []
    for _ in range(4):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
