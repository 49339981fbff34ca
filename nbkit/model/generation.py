"""Generating answers: greedy and batched with every end-of-turn id as a stop, sampled several per prompt,
streamed token by token; the answer budget and the runaway count.

One home for what the replay guard (02), evaluation (05), export parity, the playground and preference sampling
(06) all do: render a conversation with the chat template, generate with left padding, stop at the end of the
turn, and tell a finished answer from one that ran to max_new_tokens (a "runaway": the symptom of a lost
end-of-turn token or a template mismatch).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from nbkit.core.config import Config, field
from nbkit.model.chat_templates import end_of_turn_token_id, final_answer
from nbkit.model.loader import pick_device, quiet_library_notices


def end_of_turn_ids(generation_config, tokenizer) -> list[int]:
    """Tokens an answer ends at: the chat template's end of turn, the tokenizer's EOS, then the generation
    config's EOS ids (one or several)."""
    configured = getattr(generation_config, "eos_token_id", None)
    configured = configured if isinstance(configured, (list, tuple)) else [configured]
    ids = [end_of_turn_token_id(tokenizer), tokenizer.eos_token_id, *configured]
    return list(dict.fromkeys(i for i in ids if i is not None))


def answer_budget(tokenizer, references: list[str], default: int = 16) -> int:
    """How many new tokens an answer may take: 1.25 x the longest reference + 8 (room to differ, not to ramble)."""
    longest = max((len(tokenizer(r)["input_ids"]) for r in references), default=default)
    return int(1.25 * longest) + 8


def generate(
    model, tokenizer, conversations: list[list[dict[str, str]]], max_new_tokens: int, batch_size: int = 32
) -> list[str]:
    """Greedy answers for each conversation prompt, batched with left padding."""
    return generate_with_stops(model, tokenizer, conversations, max_new_tokens, batch_size)[0]


def generate_with_stops(
    model, tokenizer, conversations: list[list[dict[str, str]]], max_new_tokens: int, batch_size: int = 32
) -> tuple[list[str], list[bool]]:
    """Greedy answers (a leading think block left out), and for each whether it ended with an end-of-turn token
    (the chat template's, or one the generation config stops at; False: it ran to max_new_tokens, a "runaway").
    Prompts are padded on the left, as generation needs; the tokenizer's own padding side is restored afterwards."""
    import torch

    stops = set(end_of_turn_ids(getattr(model, "generation_config", None), tokenizer))
    answers: list[str] = []
    stopped: list[bool] = []
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        for start in range(0, len(conversations), batch_size):
            batch = conversations[start : start + batch_size]
            texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in batch]
            inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            with torch.no_grad():
                # Every end-of-turn id stops it, not only the generation config's (Gemma's says <eos>, its
                # template closes turns with <end_of_turn>).
                out = model.generate(
                    **inputs,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    eos_token_id=sorted(stops),
                    pad_token_id=tokenizer.pad_token_id,
                    use_cache=True,
                )
            new_tokens = out[:, inputs["input_ids"].shape[1] :]
            answers += [final_answer(t) for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
            # A finished row is padded to the batch's length, with the pad token (often the EOS itself).
            stopped += [any(int(t) in stops for t in row) or len(row) < max_new_tokens for row in new_tokens]
    finally:
        tokenizer.padding_side = side
    return answers, stopped


def runaway_count(stopped: list[bool]) -> int:
    return sum(not s for s in stopped)


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


def conversation(messages: list[dict[str, str]], system: str = "") -> list[dict[str, str]]:
    """The messages with the system prompt in front (replacing one already there)."""
    rest = [m for m in messages if m["role"] != "system"]
    return ([{"role": "system", "content": system}] if system.strip() else []) + rest


def generation_kwargs(
    tokenizer, max_new_tokens: int, temperature: float, top_p: float, generation_config=None
) -> dict[str, Any]:
    """generate()'s settings: the sampling asked for, and every end-of-turn id as a stop (end_of_turn_ids)."""
    kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "pad_token_id": tokenizer.pad_token_id,
        "use_cache": True,
        "eos_token_id": end_of_turn_ids(generation_config, tokenizer),
    }
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
    else:  # greedy; clear sampling defaults a model's generation_config may carry
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return kwargs


def stream_reply(
    model,
    tokenizer,
    messages: list[dict[str, str]],
    *,
    system: str = "",
    max_new_tokens: int = 128,
    temperature: float = 0.7,
    top_p: float = 0.9,
) -> Iterator[str]:
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
                model.generate(
                    **inputs,
                    streamer=streamer,
                    **generation_kwargs(
                        tokenizer, max_new_tokens, temperature, top_p, getattr(model, "generation_config", None)
                    ),
                )
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


def sample_answers(
    model,
    tokenizer,
    prompts: list[list[dict[str, str]]],
    n: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int = 0,
    progress: bool = False,
) -> list[list[str]]:
    """n sampled answers per prompt (`num_return_sequences`), batched with left padding and every end-of-turn id
    as a stop, like `generate_with_stops`; seeded, and with a progress bar when `progress` (tqdm's text
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
                batch = prompts[start : start + per_batch]
                texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in batch]
                inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
                with torch.no_grad(), quiet_library_notices():
                    out = model.generate(**inputs, num_return_sequences=n, **kwargs)
                texts = tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
                answers += [[final_answer(t) for t in texts[i : i + n]] for i in range(0, len(texts), n)]
                bar.update(len(batch))
    finally:
        tokenizer.padding_side = side
    return answers
