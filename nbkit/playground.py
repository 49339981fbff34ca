"""Chat with a tuned run, token by token, and keep good (or corrected) exchanges as training data.

Test-set numbers say how the model does on prompts you already had; talking to it shows how it
does on the ones you did not think of. When an answer is wrong, fix it and promote the
exchange: it goes to the collect stage's data/manual.jsonl through the same validation as a
hand-written example (duplicates refused), and the next 01 → 04 pass trains on it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from nbkit.chat_templates import final_answer
from nbkit.collect import add_manual_example, manual_path
from nbkit.config import Config, field
from nbkit.models import end_of_turn_ids, load_trained_model, pick_device, quiet_library_notices, run_tokenizer
from nbkit.runs import load_run, resolve_run
from nbkit.workspace import Workspace


@dataclass
class SamplingSettings(Config):
    """How replies are generated (temperature 0 = greedy, the same answer every time)."""

    max_new_tokens: int = field(128, "Longest reply in tokens.")
    temperature: float = field(0.7, "Randomness of sampling; 0 = greedy (always the most likely token).")
    top_p: float = field(0.9, "Sample only from the smallest set of tokens whose probability adds up to this.")

    def validate(self) -> None:
        self.require(self.max_new_tokens > 0, "max_new_tokens", f"must be > 0, got {self.max_new_tokens}")
        self.require(self.temperature >= 0, "temperature", f"must be >= 0, got {self.temperature}")
        self.require(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")


def load_chat_model(workspace: str | Path, run_id: str = ""):
    """(model, tokenizer): the run's trained model in eval mode — the base (4-bit for QLoRA runs) with its
    LoRA adapter, or a fully fine-tuned run's own weights."""
    ws = Workspace(workspace)
    run_id = resolve_run(ws.root, run_id)
    run = load_run(ws.root, run_id)
    tokenizer = run_tokenizer(run)
    with quiet_library_notices():
        model = load_trained_model(run, ws.run_dir(run_id), pick_device())
    return model, tokenizer


def conversation(messages: list[dict[str, str]], system: str = "") -> list[dict[str, str]]:
    """The messages with the system prompt in front (replacing one already there)."""
    rest = [m for m in messages if m["role"] != "system"]
    return ([{"role": "system", "content": system}] if system.strip() else []) + rest


def generation_kwargs(tokenizer, max_new_tokens: int, temperature: float, top_p: float,
                      generation_config=None) -> dict[str, Any]:
    """generate()'s settings: the sampling asked for, and every end-of-turn id as a stop (end_of_turn_ids)."""
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": tokenizer.pad_token_id,
                              "use_cache": True, "eos_token_id": end_of_turn_ids(generation_config, tokenizer)}
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
    else:  # greedy; clear sampling defaults a model's generation_config may carry
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return kwargs


def stream_reply(model, tokenizer, messages: list[dict[str, str]], *, system: str = "", max_new_tokens: int = 128,
                 temperature: float = 0.7, top_p: float = 0.9) -> Iterator[str]:
    """Yield the assistant's reply in pieces as it is generated (greedy when temperature == 0).

    `generate` runs in a thread and feeds a TextIteratorStreamer; an error in that thread is
    raised here instead of leaving the caller waiting forever.
    """
    from transformers import TextIteratorStreamer

    SamplingSettings(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)  # validates
    text = tokenizer.apply_chat_template(conversation(messages, system), tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model.device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            with quiet_library_notices():
                model.generate(**inputs, streamer=streamer,
                               **generation_kwargs(tokenizer, max_new_tokens, temperature, top_p,
                                                   getattr(model, "generation_config", None)))
        except BaseException as err:  # noqa: BLE001 — handed to the caller below
            failure.append(err)
            streamer.end()  # unblock the iterator

    thread = threading.Thread(target=run, name="nbkit-stream-reply", daemon=True)
    thread.start()
    try:
        for piece in streamer:
            if piece:
                yield piece
    finally:
        thread.join()
    if failure:
        raise failure[0]


def sample_answers(model, tokenizer, prompts: list[list[dict[str, str]]], n: int, max_new_tokens: int,
                   temperature: float, top_p: float, seed: int = 0, progress: bool = False) -> list[list[str]]:
    """n sampled answers per prompt (`num_return_sequences`), batched with left padding and every end-of-turn id
    as a stop, like `evaluate.generate_with_stops`; seeded, and with a progress bar when `progress` (tqdm's text
    bar: it updates in place in JupyterLab and Colab, and stays plain text in papermill's executed notebooks, where
    a widget bar would be left unrendered)."""
    import torch
    from tqdm import tqdm

    kwargs = generation_kwargs(tokenizer, max_new_tokens, temperature, top_p, getattr(model, "generation_config", None))
    per_batch = max(1, pick_device().eval_batch_size // n)  # as many sequences at once as 05 generates
    answers: list[list[str]] = []
    torch.manual_seed(seed)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        with tqdm(total=len(prompts), unit="prompt", desc="sampling", disable=not progress) as bar:
            for start in range(0, len(prompts), per_batch):
                batch = prompts[start:start + per_batch]
                texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in batch]
                inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
                with torch.no_grad(), quiet_library_notices():
                    out = model.generate(**inputs, num_return_sequences=n, **kwargs)
                texts = tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
                answers += [[final_answer(t) for t in texts[i:i + n]] for i in range(0, len(texts), n)]
                bar.update(len(batch))
    finally:
        tokenizer.padding_side = side
    return answers


def promote(workspace: str | Path, messages: list[dict[str, str]], run_id: str,
            model_answer: str = "") -> tuple[Path, int]:
    """Append the exchange to data/manual.jsonl, marked {"promoted_from": run_id}; return (path, line).

    `model_answer`: the model's own last answer. When the user corrected it (it differs from the promoted last
    answer beyond whitespace), it is kept as {"model_answer": ...}: stage 06 turns the correction into a
    preference pair (the correction chosen, the model's answer rejected).

    Validated exactly as collect validates a record (RecordError, nothing written, when it
    would be rejected — including a conversation already in manual.jsonl or clean.jsonl).
    The next collect run keeps it with meta["promoted_from"] (and meta["model_answer"]).
    """
    record = {"messages": [{"role": m["role"], "content": m["content"]} for m in messages], "promoted_from": run_id}
    if model_answer.strip() and " ".join(model_answer.split()) != " ".join(messages[-1]["content"].split()):
        record["model_answer"] = model_answer
    line = add_manual_example(workspace, record)
    return manual_path(workspace), line
